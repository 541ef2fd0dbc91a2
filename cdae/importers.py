"""Imported (not generated) labelled images: ``data.source`` morphomnist and folder.

- **morphomnist**: already-generated Morpho-MNIST files in the DeepSCM layout, in ``data.idx_dir``:
  ``{prefix}-images-idx3-ubyte(.gz)``, ``{prefix}-labels-idx1-ubyte(.gz)`` and
  ``{prefix}-morpho.csv`` (columns index, thickness, intensity: the values the DeepSCM SCM
  sampled) for ``prefix`` in (``data.train_prefix``, ``data.test_prefix``). Labels: thickness
  and intensity from the CSV (row ``index`` labels image ``index``), digit from the labels file.
  A split whose files are all absent is skipped; with one split only, its images are split at
  random by ``data.test_fraction``.
- **folder**: PNG/JPEG images in ``data.image_dir`` (all one size and mode: L gives C=1, RGB
  gives C=3) and a CSV (``data.labels_csv``): the first column the image's file name relative to
  the folder, then one column per graph variable (named as in the graph), and optionally a
  ``split`` column (train/test; else a random split by ``data.test_fraction``). An empty cell is
  a missing label (NaN). Categorical labels are integers 0..classes-1.

Neither stores the exogenous noise or the base digit that made an image, so imported datasets
hold no ground truth for counterfactuals. Every malformed input raises
:class:`~cdae.errors.DataError` (or :class:`~cdae.errors.ConfigError` for a params problem) with
one line naming the file and the problem.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cdae import mnist
from cdae.config import DataParams, DataSource, SCMKind
from cdae.errors import ConfigError, DataError
from cdae.graph import CausalGraph, Variable
from cdae.progress import Progress, log

__all__ = [
    "IMAGE_SUFFIXES",
    "IMPORTED_SCM",
    "ImportedData",
    "LabelsTable",
    "import_data",
    "load_folder",
    "load_morphomnist",
    "read_labels_csv",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
"""File name endings (case-insensitive) of the images a ``folder`` source reads."""

SPLIT_COLUMN = "split"
"""Optional column of a folder source's CSV: ``train`` or ``test`` per image."""

#: The SCM whose sampled labels an imported source holds (its equations give label-level
#: counterfactuals and its measurements score images), or None when no SCM is known.
IMPORTED_SCM: dict[DataSource, SCMKind | None] = {
    DataSource.MORPHOMNIST: SCMKind.MORPHO_THICKNESS_INTENSITY,
    DataSource.FOLDER: None,
}

_MODE_CHANNELS = {"L": 1, "RGB": 3}  # pillow mode -> channels C


@dataclass
class ImportedData:
    """Imported examples before subsampling.

    images uint8 (N, C, H, W); labels float64 (N, K) in raw units, NaN = missing, columns in
    the order of ``names``; split uint8 (N,) 0 train / 1 test; source_index int64 (N,) the
    example's row in the files it came from (its split's IDX file, or the CSV's data row).
    """

    images: np.ndarray
    labels: np.ndarray
    names: tuple[str, ...]
    split: np.ndarray
    source_index: np.ndarray


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def random_split(n: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """uint8 (n,): round(fraction * n) random rows 1 (test), the others 0 (train)."""
    split = np.zeros(n, np.uint8)
    split[rng.permutation(n)[: int(round(fraction * n))]] = 1
    return split


# --------------------------------------------------------------------------------------------
# Morpho-MNIST (DeepSCM layout)
# --------------------------------------------------------------------------------------------


def _first_file(folder: Path, name: str) -> Path | None:
    for suffix in (".gz", ""):
        p = folder / f"{name}{suffix}"
        if p.is_file():
            return p
    return None


def _morpho_split_files(folder: Path, prefix: str) -> tuple[Path, Path, Path] | None:
    """``(images, labels, csv)`` of one split; None when none of them exists; DataError naming
    the missing file when only some do."""
    images = _first_file(folder, f"{prefix}-images-idx3-ubyte")
    labels = _first_file(folder, f"{prefix}-labels-idx1-ubyte")
    table = folder / f"{prefix}-morpho.csv"
    found = (images, labels, table if table.is_file() else None)
    if all(f is None for f in found):
        return None
    names = (f"{prefix}-images-idx3-ubyte(.gz)", f"{prefix}-labels-idx1-ubyte(.gz)",
             f"{prefix}-morpho.csv")
    for f, name in zip(found, names):
        if f is None:
            raise DataError(f"{folder}: the {prefix} split is incomplete: no {name}",
                            hint="add the file or remove the split's other files")
    return images, labels, table  # type: ignore[return-value]


def _morpho_split(files: tuple[Path, Path, Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images uint8 (N, 1, H, W), labels float64 (N, 3) (thickness, intensity, digit), rows
    int64 (N,) of one split, with the CSV's rows matched to the images by ``index``."""
    images_path, labels_path, csv_path = files
    images, digits = mnist.load_idx_pair(images_path, labels_path)
    table = mnist.load_morpho_csv(csv_path)
    n = images.shape[0]
    index = table["index"]
    if index.size != n:
        raise DataError(f"{csv_path}: {index.size} rows but {images_path} holds {n} images",
                        hint="pair the CSV with its own images file")
    if index.size and index.max() >= n:
        raise DataError(f"{csv_path}: index {int(index.max())} is out of range for the {n} "
                        f"images of {images_path}", hint="pair the CSV with its own images file")
    values, counts = np.unique(index, return_counts=True)
    if (counts > 1).any():
        raise DataError(f"{csv_path}: index {int(values[counts > 1][0])} appears more than once",
                        hint="each image needs exactly one row")
    for name in ("thickness", "intensity"):
        if not np.isfinite(table[name]).all():
            raise DataError(f"{csv_path}: column {name} holds non-finite values",
                            hint="fix or regenerate the file")
    order = np.argsort(index)  # CSV row that labels image k
    labels = np.stack([table["thickness"][order], table["intensity"][order],
                       digits.astype(np.float64)], axis=1)
    return images[:, None], labels, np.arange(n, dtype=np.int64)


def require_dir(value: str, key: str, source: str, what: str) -> Path:
    """The folder a ``data.*`` setting names: ConfigError when the setting is empty, DataError
    naming the path when it is not a directory."""
    if not value:
        raise ConfigError(f"data.{key}: empty, but data.source is {source}",
                          hint=f"set it to the folder of {what}")
    folder = Path(value)
    if not folder.is_dir():
        raise DataError(f"{folder}: data.{key} does not exist", hint=f"fix data.{key}")
    return folder


def split_of_present(codes: list[int], counts: list[int], dp: DataParams, folder: Path,
                     rng: np.random.Generator) -> np.ndarray:
    """uint8 (sum(counts),): the split of rows read split by split, ``counts[j]`` rows of split
    ``codes[j]`` (0 train, 1 test, the order of ``data.train_prefix``, ``data.test_prefix``).
    With one split alone its rows are split at random by ``data.test_fraction`` (a log line
    says so)."""
    if len(codes) != 1:
        return np.repeat(np.array(codes, np.uint8), counts)
    prefixes = (dp.train_prefix, dp.test_prefix)
    log.info("prepare-data: no %s split in %s: splitting the %d %s images at random by "
             "data.test_fraction %.3g (data.seed %d)", prefixes[1 - codes[0]], folder,
             counts[0], prefixes[codes[0]], dp.test_fraction, dp.seed)
    return random_split(counts[0], dp.test_fraction, rng)


def load_morphomnist(dp: DataParams, rng: np.random.Generator) -> ImportedData:
    """Morpho-MNIST files (DeepSCM layout) in ``data.idx_dir``; labels thickness, intensity,
    digit. Both splits when both are there; one split alone is split by ``data.test_fraction``
    (a log line says so)."""
    folder = require_dir(dp.idx_dir, "idx_dir", "morphomnist", "the Morpho-MNIST files")
    prefixes = (dp.train_prefix, dp.test_prefix)
    found = {code: _morpho_split_files(folder, prefix) for code, prefix in enumerate(prefixes)}
    present = {code: files for code, files in found.items() if files is not None}
    if not present:
        raise DataError(f"{folder}: no Morpho-MNIST files ({' or '.join(prefixes)}"
                        "-images-idx3-ubyte(.gz) with -labels-idx1-ubyte(.gz) and -morpho.csv)",
                        hint="set data.idx_dir to the folder of the Morpho-MNIST files")
    parts = [_morpho_split(files) for files in present.values()]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    rows = np.concatenate([p[2] for p in parts])
    split = split_of_present(list(present), [p[0].shape[0] for p in parts], dp, folder, rng)
    return ImportedData(images=images, labels=labels, names=("thickness", "intensity", "digit"),
                        split=split, source_index=rows)


# --------------------------------------------------------------------------------------------
# A folder of images + a labels CSV
# --------------------------------------------------------------------------------------------


@dataclass
class LabelsTable:
    """A folder source's labels CSV: ``files`` (N,) names relative to the image folder,
    ``lines`` (N,) their line numbers in the CSV, ``labels`` float64 (N, K) in the graph's
    variable order (NaN = empty cell), ``split`` uint8 (N,) or None without a split column."""

    path: Path
    files: list[str]
    lines: list[int]
    labels: np.ndarray
    split: np.ndarray | None


def _parse_label(cell: str, var: Variable, where: str) -> float:
    """One CSV cell as a label in raw units; "" is NaN (missing)."""
    text = cell.strip()
    if not text:
        return math.nan
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{where}: column {var.name}: {text!r} is not a number",
                        hint="write a number, or leave the cell empty for a missing label") \
            from None
    if not math.isfinite(value):
        raise DataError(f"{where}: column {var.name}: {text!r} is not a finite number",
                        hint="write a number, or leave the cell empty for a missing label")
    if var.is_categorical and (value != round(value) or not 0 <= value < var.classes):
        raise DataError(f"{where}: column {var.name}: {text!r} is not one of its classes "
                        f"0..{var.classes - 1}", hint="fix the label or graph.variables")
    return value


def read_labels_csv(path: Path, graph: CausalGraph) -> LabelsTable:
    """Parse and check a folder source's labels CSV (UTF-8, a header row; see module doc).
    Columns that are neither the file name, a graph variable nor ``split`` are ignored."""
    if not path.is_file():
        raise DataError(f"{path}: labels CSV not found",
                        hint="set data.labels_csv (default <data.image_dir>/labels.csv)")
    files: list[str] = []
    lines: list[int] = []
    rows: list[list[float]] = []
    splits: list[int] = []
    first_line: dict[str, int] = {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = [h.strip() for h in next(reader, [])]
            if not header:
                raise DataError(f"{path}: empty file, expected a header: file name, then "
                                f"{', '.join(graph.names)}", hint="add the header row")
            columns = header[1:]
            missing = [n for n in graph.names if n not in columns]
            if missing:
                raise DataError(f"{path}: missing column(s) {', '.join(missing)} for the graph "
                                f"variables (found: {', '.join(columns) or 'none'})",
                                hint="add one column per graph variable; leave cells empty "
                                     "for missing labels")
            dup = next((c for c in columns if columns.count(c) > 1), None)
            if dup is not None:
                raise DataError(f"{path}: column {dup} appears twice", hint="rename one of them")
            where_var = [1 + columns.index(n) for n in graph.names]
            split_col = 1 + columns.index(SPLIT_COLUMN) if SPLIT_COLUMN in columns else None
            ignored = [c for c in columns if c not in graph.names and c != SPLIT_COLUMN]
            if ignored:
                log.info("prepare-data: %s: ignoring column(s) %s (not graph variables)", path,
                         ", ".join(ignored))
            for row in reader:
                line = reader.line_num
                if not row or all(not cell.strip() for cell in row):
                    continue
                where = f"{path}: line {line}"
                if len(row) != len(header):
                    raise DataError(f"{where}: {len(row)} cells, the header has {len(header)}",
                                    hint="one cell per column (empty for a missing label)")
                name = row[0].strip()
                if not name:
                    raise DataError(f"{where}: the file name cell is empty",
                                    hint="name the image file in the first column")
                if name in first_line:
                    raise DataError(f"{where}: {name} is listed twice (first on line "
                                    f"{first_line[name]})", hint="one row per image")
                first_line[name] = line
                rows.append([_parse_label(row[k], var, where)
                             for k, var in zip(where_var, graph.variables)])
                if split_col is not None:
                    cell = row[split_col].strip().lower()
                    if cell not in ("train", "test"):
                        raise DataError(f"{where}: column split: {row[split_col]!r} is neither "
                                        "train nor test", hint="write train or test")
                    splits.append(0 if cell == "train" else 1)
                files.append(name)
                lines.append(line)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read the labels CSV ({_one_line(exc)})",
                        hint="save it as UTF-8 CSV") from exc
    if not files:
        raise DataError(f"{path}: no data rows", hint="add one row per image")
    labels = np.asarray(rows, np.float64).reshape(len(files), len(graph.names))
    return LabelsTable(path=path, files=files, lines=lines, labels=labels,
                       split=np.asarray(splits, np.uint8) if split_col is not None else None)


def _load_images(folder: Path, table: LabelsTable) -> np.ndarray:
    """The table's images as uint8 (N, C, H, W); DataError for a missing or unreadable file,
    an unsupported mode, or sizes or modes that differ (naming two files)."""
    from PIL import Image

    out: np.ndarray | None = None
    first: tuple[Path, str, tuple[int, int]] | None = None  # (file, mode, (width, height))
    with Progress(len(table.files), "prepare-data: reading images", unit="img") as bar:
        for k, (name, line) in enumerate(zip(table.files, table.lines)):
            path = folder / name
            if not path.is_file():
                raise DataError(f"{table.path}: line {line}: no image {path}",
                                hint="fix the file name or add the image")
            try:
                with Image.open(path) as im:
                    mode, size = im.mode, im.size
                    if first is None:
                        if mode not in _MODE_CHANNELS:
                            raise DataError(f"{path}: image mode {mode} is not supported",
                                            hint="save the images as 8-bit grayscale (L) or RGB")
                        first = (path, mode, size)
                        out = np.empty((len(table.files), _MODE_CHANNELS[mode], size[1],
                                        size[0]), np.uint8)
                    elif mode != first[1]:
                        raise DataError(f"{table.path}: images differ in mode: {first[0]} is "
                                        f"{first[1]}, {path} is {mode}",
                                        hint="convert them all to L (grayscale) or all to RGB")
                    elif size != first[2]:
                        raise DataError(f"{table.path}: images differ in size: {first[0]} is "
                                        f"{first[2][0]}x{first[2][1]}, {path} is "
                                        f"{size[0]}x{size[1]}", hint="resize them all to one size")
                    pixels = np.asarray(im, dtype=np.uint8)
            except (OSError, ValueError, Image.DecompressionBombError) as exc:
                raise DataError(f"{path}: cannot read the image ({_one_line(exc)})",
                                hint="check the file is a valid PNG or JPEG") from exc
            assert out is not None  # set with the first image
            out[k] = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
            bar.advance(1)
    assert out is not None  # the table has at least one row
    return out


def load_folder(dp: DataParams, graph: CausalGraph, rng: np.random.Generator) -> ImportedData:
    """Images of ``data.image_dir`` labelled by ``data.labels_csv`` for the graph's variables;
    the CSV's ``split`` column, else a random split by ``data.test_fraction``. Every image file
    of the folder (``IMAGE_SUFFIXES``, not recursive) must have a row."""
    folder = require_dir(dp.image_dir, "image_dir", "folder", "your images")
    csv_path = Path(dp.labels_csv) if dp.labels_csv else folder / "labels.csv"
    table = read_labels_csv(csv_path, graph)
    listed = {(folder / name).resolve() for name in table.files}
    unlisted = sorted(p.name for p in folder.iterdir()
                      if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                      and p.resolve() not in listed)
    if unlisted:
        raise DataError(f"{csv_path}: {len(table.files)} rows, but {folder} holds "
                        f"{len(unlisted)} more image(s) without one (first: {unlisted[0]})",
                        hint="add a row per image, or move the others out")
    images = _load_images(folder, table)
    split = table.split
    if split is None:
        split = random_split(images.shape[0], dp.test_fraction, rng)
    return ImportedData(images=images, labels=table.labels, names=graph.names, split=split,
                        source_index=np.arange(images.shape[0], dtype=np.int64))


def import_data(dp: DataParams, graph: CausalGraph, rng: np.random.Generator) -> ImportedData:
    """The imported examples of ``data.source`` (one of :data:`IMPORTED_SCM`'s keys)."""
    if dp.source is DataSource.MORPHOMNIST:
        return load_morphomnist(dp, rng)
    if dp.source is DataSource.FOLDER:
        return load_folder(dp, graph, rng)
    raise ConfigError(f"data.source: {dp.source.value} is not an imported source",
                      hint=f"use one of {', '.join(s.value for s in IMPORTED_SCM)}")
