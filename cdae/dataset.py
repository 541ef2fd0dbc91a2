"""The prepared dataset file (HDF5), schema version 1.

Layout::

    /images       uint8   (N, C, H, W)   chunked (256 images), gzip
    /labels       float32 (N, K)         raw units, NaN = missing; K = graph variables in order
    /label_mask   uint8   (N, K)         1 where the label is used for training (fixed mask,
                                         data.labeled_fraction), 0 otherwise
    /split        uint8   (N,)           0 = train, 1 = test
    /noise        float64 (N, M)         exogenous noise of the generating SCM (generated data)
    /base_index   int64   (N,)           row of /base_images the example was made from
    /base_images  uint8   (B, C, H, W)   base digits (generated data whose SCM draws on base
                                         images; absent, with /base_index, for an SCM that
                                         makes its own scenes, e.g. pendulum)
    /source_index int64   (N,)           imported data only: the example's row in the files it
                                         came from (its split's IDX file, or the labels CSV's
                                         data row, 0-based)
    attrs: schema_version, graph (JSON), label_mean, label_std (K, train split, continuous only;
           0/1 for categorical), noise_names (JSON), scm ("" = no SCM known, e.g. a folder of
           your own images), source, cdae_version,
           data_params (JSON of the validated ``data`` params that made it; "" if unknown),
           has_ground_truth (bool: the true SCM's noise and base images or scenes are stored,
           so true counterfactuals can be recomputed; False for imported data. Files without
           the attribute: True where /noise is present)

Imported data (``data.source`` morphomnist or folder) holds no /noise, /base_index or
/base_images: the exogenous noise and the base digits that made those images are unknown.

Readers validate shapes, dtypes and ranges before use and raise DataError naming the file.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Iterator

import numpy as np

from cdae.atomic import atomic_path
from cdae.errors import DataError
from cdae.graph import CausalGraph

SCHEMA_VERSION = 1


class Split(IntEnum):
    TRAIN = 0
    TEST = 1

    @classmethod
    def parse(cls, name: str) -> "Split":
        try:
            return cls[name.upper()]
        except KeyError:
            raise DataError(f"unknown split '{name}'", hint="use train or test") from None


@dataclass
class Dataset:
    """A prepared dataset (see module docstring for the meaning of each array): in memory from
    :func:`read_dataset`; from :func:`open_dataset` ``images`` and ``base_images`` are
    :class:`RowReader` views that read rows from the open file."""

    images: np.ndarray
    labels: np.ndarray
    label_mask: np.ndarray
    split: np.ndarray
    graph: CausalGraph
    label_mean: np.ndarray
    label_std: np.ndarray
    noise: np.ndarray | None = None
    noise_names: tuple[str, ...] = ()
    base_index: np.ndarray | None = None
    base_images: np.ndarray | None = None
    scm: str = ""
    source: str = ""
    data_params: str = ""  # JSON of the `data` params that made the file ("" = unknown)
    has_ground_truth: bool = False  # the true SCM's noise (and base images or scenes) stored
    source_index: np.ndarray | None = None  # (N,) row in the imported files

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def base_rows(self, rows: np.ndarray) -> np.ndarray | None:
        """The base images (digits) the given rows were rendered from, (len(rows), 1, H, W)
        uint8; None for a dataset that stores none (scenes, imported images)."""
        if self.base_images is None or self.base_index is None:
            return None
        return self.base_images[self.base_index[rows]]

    def indices(self, split: Split | str) -> np.ndarray:
        s = Split.parse(split) if isinstance(split, str) else split
        return np.flatnonzero(self.split == int(s))


def normalisation_stats(labels: np.ndarray, split: np.ndarray,
                        graph: CausalGraph) -> tuple[np.ndarray, np.ndarray]:
    """Mean/std per variable over the TRAIN split's present labels (categorical: 0 and 1).
    One column is copied at a time (not the train rows of every column)."""
    k = len(graph.variables)
    mean = np.zeros(k, np.float64)
    std = np.ones(k, np.float64)
    train = split == int(Split.TRAIN)
    for j, v in enumerate(graph.variables):
        if v.is_categorical:
            continue
        col = labels[train, j]
        col = col[np.isfinite(col)]
        if col.size >= 2:
            mean[j] = float(col.mean())
            std[j] = float(col.std()) or 1.0
    return mean, std


_WRITE_ROWS = 4096  # rows per write: bounds a block's dtype conversion, not the file's layout


def _write_rows(f, name: str, array: np.ndarray, dtype: np.dtype | type, **create) -> None:
    """``array`` (N, ...) into the new dataset ``name`` of ``dtype``, one block of rows at a
    time (whole chunks of a chunked dataset, about ``_WRITE_ROWS`` rows): a dtype conversion
    copies one block, never the whole array (``create_dataset(data=a.astype(...))`` would).
    ``create``: h5py layout options (chunks, compression); the file equals a one-shot write."""
    dset = f.create_dataset(name, shape=array.shape, dtype=dtype, **create)
    rows = dset.chunks[0] if dset.chunks else 1
    step = rows * max(1, _WRITE_ROWS // rows)
    for start in range(0, array.shape[0], step):
        dset[start:start + step] = np.asarray(array[start:start + step], dtype=dtype)


def write_dataset(path: str | Path, ds: Dataset, *, cdae_version: str = "") -> None:
    """Validate ``ds`` and write it atomically to ``path`` (a temporary file renamed at the
    end). Each array is written in blocks of rows: no full-size temporary copy is made."""
    import h5py

    validate(ds, str(path))
    n = ds.images.shape[0]
    chunk = (min(n, 256),) + ds.images.shape[1:]
    with atomic_path(path) as tmp:
        # no chunk cache: every chunk is written whole, once, and compressed at once; a cache
        # (HDF5 2.0's default is 8 MiB per dataset) would only hold uncompressed chunks until
        # the file is closed (measured in prepare-data: +7.8 MiB at 10,000 digits, +1.3 at 2,000)
        with h5py.File(tmp, "w", rdcc_nbytes=0) as f:
            _write_rows(f, "images", ds.images, np.uint8, chunks=chunk, compression="gzip",
                        compression_opts=4)
            _write_rows(f, "labels", ds.labels, np.float32)
            _write_rows(f, "label_mask", ds.label_mask, np.uint8)
            _write_rows(f, "split", ds.split, np.uint8)
            if ds.noise is not None:
                _write_rows(f, "noise", ds.noise, np.float64)
            if ds.base_index is not None:
                _write_rows(f, "base_index", ds.base_index, np.int64)
            if ds.base_images is not None:  # h5py picks the chunk shape, as before
                _write_rows(f, "base_images", ds.base_images, ds.base_images.dtype,
                            compression="gzip", compression_opts=4)
            if ds.source_index is not None:
                _write_rows(f, "source_index", ds.source_index, np.int64)
            f.attrs["schema_version"] = SCHEMA_VERSION
            f.attrs["graph"] = ds.graph.to_json()
            f.attrs["label_mean"] = ds.label_mean
            f.attrs["label_std"] = ds.label_std
            f.attrs["noise_names"] = json.dumps(list(ds.noise_names))
            f.attrs["scm"] = ds.scm
            f.attrs["source"] = ds.source
            f.attrs["data_params"] = ds.data_params
            f.attrs["has_ground_truth"] = bool(ds.has_ground_truth)
            f.attrs["cdae_version"] = cdae_version


def validate(ds: Dataset, where: str) -> None:
    """Check shapes, dtypes and ranges; raise DataError naming ``where`` and the problem."""
    n = ds.images.shape[0] if ds.images.ndim == 4 else -1
    k = len(ds.graph.variables)
    if ds.images.ndim != 4 or ds.images.dtype != np.uint8:
        raise DataError(f"{where}: images must be uint8 (N, C, H, W), got "
                        f"{ds.images.dtype} {ds.images.shape}", hint="re-run prepare-data")
    if n == 0:
        raise DataError(f"{where}: the dataset holds no images", hint="check the data source")
    if ds.labels.shape != (n, k):
        raise DataError(f"{where}: labels have shape {ds.labels.shape}, expected ({n}, {k}) for "
                        f"variables {', '.join(ds.graph.names)}", hint="re-run prepare-data")
    if ds.label_mask.shape != (n, k) or ds.split.shape != (n,):
        raise DataError(f"{where}: label_mask/split shapes do not match {n} images",
                        hint="re-run prepare-data")
    if not np.isin(ds.split, [0, 1]).all():
        raise DataError(f"{where}: split holds values other than 0 (train) and 1 (test)",
                        hint="re-run prepare-data")
    for j, v in enumerate(ds.graph.variables):
        col = ds.labels[:, j]
        present = col[np.isfinite(col)]
        if np.isinf(col).any():
            raise DataError(f"{where}: labels of '{v.name}' contain infinities",
                            hint="re-run prepare-data")
        if v.is_categorical and present.size and (
                (present < 0).any() or (present >= v.classes).any()
                or (present != np.round(present)).any()):
            raise DataError(f"{where}: labels of '{v.name}' are outside its classes "
                            f"0..{v.classes - 1}", hint="fix the labels or graph.variables")
    if ds.label_mean.shape != (k,) or ds.label_std.shape != (k,) or (ds.label_std <= 0).any():
        raise DataError(f"{where}: normalisation stats are missing or invalid",
                        hint="re-run prepare-data")
    if ds.base_index is not None and ds.base_images is not None:
        if ds.base_index.shape != (n,) or (ds.base_index < 0).any() or (
                ds.base_index >= ds.base_images.shape[0]).any():
            raise DataError(f"{where}: base_index does not address base_images",
                            hint="re-run prepare-data")
    if ds.noise is not None and ds.noise.shape[0] != n:
        raise DataError(f"{where}: noise has {ds.noise.shape[0]} rows for {n} images",
                        hint="re-run prepare-data")
    if ds.has_ground_truth and (ds.noise is None or not ds.scm):
        raise DataError(f"{where}: marked has_ground_truth but stores no SCM noise",
                        hint="re-run prepare-data")
    if ds.source_index is not None and (ds.source_index.shape != (n,)
                                        or (ds.source_index < 0).any()):
        raise DataError(f"{where}: source_index must hold {n} non-negative rows",
                        hint="re-run prepare-data")


def read_images(paths: list[str], image_shape: tuple[int, int, int]) -> np.ndarray:
    """Image files (PNG, JPEG, ...) as uint8 (N, C, H, W) for a model of ``image_shape``
    (C, H, W): converted to grayscale (C = 1) or RGB (C = 3), never resized. DataError naming
    a missing or unreadable file, or one of another size."""
    from PIL import Image

    c, h, w = image_shape
    mode = {1: "L", 3: "RGB"}.get(c)
    if mode is None:
        raise DataError(f"images of {c} channels cannot be read from image files",
                        hint="image files give 1 (grayscale) or 3 (RGB) channels")
    out = np.empty((len(paths), c, h, w), np.uint8)
    for k, name in enumerate(paths):
        path = Path(name)
        if not path.is_file():
            raise DataError(f"{path}: no such image file", hint="check the path")
        try:
            with Image.open(path) as im:
                size = im.size
                pixels = np.asarray(im.convert(mode), dtype=np.uint8)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise DataError(f"{path}: cannot read the image ({' '.join(str(exc).split())})",
                            hint="check the file is a valid PNG or JPEG") from exc
        if size != (w, h):
            raise DataError(f"{path}: the image is {size[0]}x{size[1]}, the model takes {w}x{h}",
                            hint=f"resize it to {w}x{h} px")
        out[k] = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    return out


class RowReader:
    """A row-indexed view of an image dataset (N, ...) in an open HDF5 file: ``reader[rows]``
    reads only those rows (any order, repeats allowed; a slice or one int works too), so a
    stage can stream a large file batch by batch. Offers ``shape``, ``dtype``, ``ndim`` and
    ``len()`` like the array it stands for; ``reader[()]`` reads everything."""

    def __init__(self, dset) -> None:  # an h5py.Dataset
        self._dset = dset
        self.shape: tuple[int, ...] = tuple(dset.shape)
        self.dtype = dset.dtype
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        if isinstance(key, (slice, tuple)) or np.isscalar(key):
            return self._dset[key]
        rows = np.asarray(key)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        if rows.ndim != 1:
            raise IndexError(f"rows must be one-dimensional, got shape {rows.shape}")
        rows = rows.astype(np.int64)
        if rows.size == 0:
            return np.empty((0,) + self.shape[1:], self.dtype)
        if rows.min() < 0 or rows.max() >= self.shape[0]:
            raise IndexError(f"rows outside 0..{self.shape[0] - 1}")
        uniq, inverse = np.unique(rows, return_inverse=True)  # sorted, as HDF5 needs
        lo, hi = int(uniq[0]), int(uniq[-1]) + 1
        if hi - lo <= max(4 * uniq.size, 256):  # dense enough: one contiguous read
            block = self._dset[lo:hi][uniq - lo]
        else:
            block = self._dset[uniq]
        return block[inverse.ravel()]


def read_dataset(path: str | Path) -> Dataset:
    """Read and validate a dataset file, every array in memory; DataError for missing, corrupt
    or foreign files. :func:`open_dataset` streams the images instead."""
    with open_dataset(path, lazy=False) as ds:
        return ds


@contextlib.contextmanager
def open_dataset(path: str | Path, *, lazy: bool = True) -> Iterator[Dataset]:
    """The dataset file, validated, with ``images`` and ``base_images`` as :class:`RowReader`
    views that read rows on demand while the ``with`` block keeps the file open (``lazy``).

    Resident: labels (float64), label_mask, split, noise, base_index, source_index: O(N) small
    arrays, tens of bytes per image, against 784 bytes of a 28x28 image."""
    import h5py

    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: dataset file not found", hint="run `cdae prepare-data` first")
    try:
        f = h5py.File(p, "r")
    except OSError as err:
        raise _unreadable(p, err) from None
    with f:
        try:
            ds = _load(f, p, lazy)
        except DataError:
            raise
        except (OSError, KeyError, ValueError) as err:
            raise _unreadable(p, err) from None
        validate(ds, str(p))
        yield ds


def _unreadable(p: Path, err: Exception) -> DataError:
    return DataError(f"{p}: cannot read the dataset file ({type(err).__name__}: "
                     f"{str(err).splitlines()[0] if str(err) else 'corrupt'})",
                     hint="delete it and re-run `cdae prepare-data`")


def _load(f, p: Path, lazy: bool) -> Dataset:
    version = int(f.attrs.get("schema_version", -1))
    if version < 0:
        raise DataError(f"{p}: not a cdae dataset (no schema_version)",
                        hint="run `cdae prepare-data` to make one")
    if version > SCHEMA_VERSION:
        raise DataError(f"{p}: written by a newer cdae (schema {version} > "
                        f"{SCHEMA_VERSION})", hint="upgrade cdae")
    missing = [k for k in ("images", "labels", "label_mask", "split") if k not in f]
    if missing:
        raise DataError(f"{p}: missing dataset '{missing[0]}'", hint="re-run prepare-data")

    def big(name: str):
        return RowReader(f[name]) if lazy else f[name][()]

    return Dataset(
        images=big("images"),
        labels=f["labels"][()].astype(np.float64),
        label_mask=f["label_mask"][()].astype(bool),
        split=f["split"][()],
        graph=CausalGraph.from_json(f.attrs["graph"]),
        label_mean=np.asarray(f.attrs["label_mean"], np.float64),
        label_std=np.asarray(f.attrs["label_std"], np.float64),
        noise=f["noise"][()] if "noise" in f else None,
        noise_names=tuple(json.loads(f.attrs.get("noise_names", "[]"))),
        base_index=f["base_index"][()] if "base_index" in f else None,
        base_images=big("base_images") if "base_images" in f else None,
        scm=str(f.attrs.get("scm", "")),
        source=str(f.attrs.get("source", "")),
        data_params=str(f.attrs.get("data_params", "")),
        has_ground_truth=bool(f.attrs.get("has_ground_truth", "noise" in f)),
        source_index=f["source_index"][()] if "source_index" in f else None,
    )
