"""Stage `encode-latents`: u, z and the DDIM-inverted x_T of every image of a split -> HDF5.

Layout of the latents file (schema 1), N images of the split (``encode.max_images`` drawn with a
fixed seed)::

    /index    int64   (N,)          rows of the dataset file
    /u        float32 (N, K, d)     abducted exogenous noise
    /z        float32 (N, K, d)     factual latents
    /parents  float32 (N, K)        factual parents used (raw units)
    /x_T      float32 (N, C, H, W)  DDIM inversion with the factual condition, chunked: to the
                                    last timestep (abduction invert) or to t0 (partial), as
                                    intervene.abduction and intervene.t0 say
    attrs: schema_version, split, steps, abduction, t0, inversion_iters, solver, spacing,
           parents_from, checkpoint_sha256, names, per_image (+ shard, shard_rows in a shard's
           file)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Iterator

import numpy as np

from cdae import config as cfg
from cdae.atomic import atomic_path
from cdae.progress import Progress, log
from cdae.shards import parse_shard, shard_attrs

SCHEMA_VERSION = 1
PER_IMAGE = ("index", "u", "z", "parents", "x_T")  # datasets whose first axis runs over images


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def select(ds, split: str, max_images: int) -> np.ndarray:
    """Dataset rows of ``split``: all of them, or ``max_images`` drawn at random with a fixed
    seed (sorted), so every stage that asks for n images of a split gets the same n images and
    datasets stored class by class are not evaluated on one class."""
    from cdae.dataset import Split
    from cdae.errors import DataError

    idx = ds.indices(Split.parse(split))
    if idx.size == 0:
        raise DataError(f"the {split} split is empty", hint="check data.test_fraction")
    if not max_images or max_images >= idx.size:
        return idx
    return np.sort(np.random.default_rng(0).permutation(idx)[:max_images])


def run(params: cfg.Params, *, split: str | None = None, steps: int | None = None,
        out: str | None = None, shard: str | None = None) -> dict[str, object]:
    """Write u, z, parents and x_T of the selected images of a split to the latents file.

    ``shard`` "i/n" (or the torchrun rank) processes one contiguous run of whole batches and
    writes ``<latents>.shard-i-of-n.h5`` (``<out>.shard-i-of-n.h5`` with ``out``); ``cdae
    merge`` joins the shards into the file the unsharded run writes."""
    import h5py
    import torch

    from cdae.counterfactual import CounterfactualEngine, to_unit
    from cdae.dataset import open_dataset

    ep = cfg.override(params.encode, "encode", split=split, steps=steps)
    ip = params.intervene
    model_path = Path(params.paths.model_dir) / "model.pt"
    engine = CounterfactualEngine.for_params(model_path, params)
    with open_dataset(params.paths.dataset) as ds:  # images streamed batch by batch
        from stages.intervene import check_compatible

        check_compatible(engine, ds.graph, str(params.paths.dataset), model_path, ds.image_shape)
        part = parse_shard(shard)
        idx_all = select(ds, ep.split, ep.max_images)
        rows_sel = part.rows(idx_all.size, ep.batch_size)
        idx = idx_all[rows_sel]
        k, d = len(engine.graph.names), engine.model.d
        target = part.path(Path(out) if out else Path(params.paths.latents))
        c, h, w = ds.image_shape
        use_labels = ip.parents_from is cfg.ParentsFrom.LABELS
        abduction = cached_abduction(ip.abduction)
        for warning in engine.sampling_warnings(ep.steps):
            log.warning(warning)
        with atomic_path(target) as tmp, h5py.File(tmp, "w") as f, \
                Progress(idx.size, "encode-latents", unit="img") as bar:
            f.create_dataset("index", data=idx.astype(np.int64))
            b = min(ep.batch_size, idx.size)  # one HDF5 chunk per batch (none for 0 rows)

            def per_image(name: str, shape: tuple[int, ...]):
                return f.create_dataset(name, (idx.size, *shape), np.float32,
                                        chunks=(b, *shape) if b else None)

            du, dz = per_image("u", (k, d)), per_image("z", (k, d))
            dp, dx = per_image("parents", (k,)), per_image("x_T", (c, h, w))
            for lo in range(0, idx.size, ep.batch_size):
                rows = idx[lo:lo + ep.batch_size]
                x = to_unit(ds.images[rows]).to(engine.device)
                y = (torch.as_tensor(ds.labels[rows], dtype=torch.float32, device=engine.device)
                     if use_labels else None)
                fact = engine.abduct(x, y, steps=ep.steps, abduction=abduction, t0=ip.t0)
                sl = slice(lo, lo + rows.size)
                du[sl] = fact.u.cpu().numpy()
                dz[sl] = fact.z.cpu().numpy()
                dp[sl] = fact.parents.cpu().numpy()
                dx[sl] = fact.x_T.cpu().numpy()
                bar.advance(rows.size)
            f.attrs.update({"schema_version": SCHEMA_VERSION, "split": ep.split, "steps": ep.steps,
                            "abduction": abduction.value, "t0": ip.t0,
                            **engine.sampling_attrs(),
                            "parents_from": ip.parents_from.value,
                            "checkpoint_sha256": file_sha256(model_path),
                            "names": json.dumps(list(engine.graph.names)),
                            **shard_attrs(part, rows_sel, {n: 0 for n in PER_IMAGE})})
    log.info("wrote %s: %d images of the %s split (%s inversion%s, %d steps on a %s grid, "
             "%d fixed-point iterations%s)", target, idx.size, ep.split, engine.solver.value,
             f" to t0={ip.t0}" if abduction is cfg.Abduction.PARTIAL else "", ep.steps,
             engine.spacing.value, engine.inversion_iters,
             f", shard {part}" if part.enabled else "")
    return {"path": str(target), "images": int(idx.size), "steps": ep.steps}


class CachedRows:
    """Rows ``positions`` of one per-image dataset of an open latents file; ``[sl]`` reads the
    rows of positions ``sl`` (a slice of the caller's rows) from disk."""

    def __init__(self, dset, positions: np.ndarray) -> None:
        from cdae.dataset import RowReader

        self._rows = RowReader(dset)
        self._positions = positions
        self.shape = (positions.size,) + tuple(dset.shape[1:])

    def __getitem__(self, sl: slice) -> np.ndarray:
        return self._rows[self._positions[sl]]


CACHE_KEYS = ("u", "z", "parents", "x_T")


def cached_abduction(abduction: cfg.Abduction) -> cfg.Abduction:
    """The deterministic abduction encode-latents stores for intervene's ``abduction``: partial
    stays partial (x_t0), everything else is the full inversion (noise abduction is drawn afresh
    by intervene and never reads the cache)."""
    return abduction if abduction is cfg.Abduction.PARTIAL else cfg.Abduction.INVERT


@contextlib.contextmanager
def open_cached(path: str | Path, model_path: str | Path, rows: np.ndarray, steps: int,
                parents_from: cfg.ParentsFrom, inversion_iters: int, *,
                abduction: cfg.Abduction = cfg.Abduction.INVERT, t0: int = 0,
                solver: cfg.Solver = cfg.Solver.DDIM,
                spacing: cfg.Spacing = cfg.Spacing.UNIFORM,
                ) -> Iterator[dict[str, CachedRows] | None]:
    """Cached u, z, parents, x_T for dataset ``rows`` when the latents file matches the model,
    the steps and the abduction settings (``abduction`` invert or partial, ``t0`` for partial,
    ``inversion_iters``, ``solver``, ``spacing``), else None (the caller re-abducts). Each is read
    from the file on demand (``cache["x_T"][lo:hi]``: the rows ``rows[lo:hi]``) while the
    ``with`` block keeps it open; only the index (int64 per image) is held in memory."""
    import h5py

    p = Path(path)
    if not p.is_file():
        yield None
        return
    try:
        f = h5py.File(p, "r")
    except OSError as err:
        log.warning("ignoring latents cache %s (%s)", p, err)
        yield None
        return
    with f:
        try:
            cache = _match(f, model_path, rows, steps, parents_from, inversion_iters,
                           abduction, t0, solver, spacing)
        except (OSError, KeyError) as err:
            log.warning("ignoring latents cache %s (%s)", p, err)
            cache = None
        yield cache


def _match(f, model_path: str | Path, rows: np.ndarray, steps: int,
           parents_from: cfg.ParentsFrom, inversion_iters: int, abduction: cfg.Abduction,
           t0: int, solver: cfg.Solver, spacing: cfg.Spacing) -> dict[str, CachedRows] | None:
    a = f.attrs
    if (int(a.get("schema_version", -1)) != SCHEMA_VERSION or int(a["steps"]) != steps
            or a["parents_from"] != parents_from.value
            or a.get("abduction", "") != abduction.value
            or (abduction is cfg.Abduction.PARTIAL and int(a.get("t0", -1)) != t0)
            or int(a.get("inversion_iters", -1)) != inversion_iters
            # files written before these settings existed were DDIM on a uniform grid
            or a.get("solver", cfg.Solver.DDIM.value) != cfg.Solver(solver).value
            or a.get("spacing", cfg.Spacing.UNIFORM.value) != cfg.Spacing(spacing).value
            or a["checkpoint_sha256"] != file_sha256(model_path)):
        return None
    index = f["index"][()]
    order = np.argsort(index, kind="stable")
    found = np.searchsorted(index[order], rows)
    found = np.minimum(found, max(index.size - 1, 0))
    if index.size == 0 or not np.array_equal(index[order][found], rows):
        return None
    positions = order[found]
    if any(f[key].shape[0] != index.size for key in CACHE_KEYS):
        return None
    return {key: CachedRows(f[key], positions) for key in CACHE_KEYS}


def load_cached(path: str | Path, model_path: str | Path, rows: np.ndarray, steps: int,
                parents_from: cfg.ParentsFrom, inversion_iters: int, *,
                abduction: cfg.Abduction = cfg.Abduction.INVERT, t0: int = 0,
                solver: cfg.Solver = cfg.Solver.DDIM,
                spacing: cfg.Spacing = cfg.Spacing.UNIFORM) -> dict[str, np.ndarray] | None:
    """:func:`open_cached` read whole into memory (small runs, tests)."""
    with open_cached(path, model_path, rows, steps, parents_from, inversion_iters,
                     abduction=abduction, t0=t0, solver=solver, spacing=spacing) as cache:
        return None if cache is None else {k: v[:] for k, v in cache.items()}
