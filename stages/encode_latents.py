"""Stage `encode-latents`: u, z and the DDIM-inverted x_T of every image of a split -> HDF5.

Layout of the latents file (schema 1), N images of the split (``encode.max_images`` drawn with a
fixed seed)::

    /index    int64   (N,)          rows of the dataset file
    /u        float32 (N, K, d)     abducted exogenous noise
    /z        float32 (N, K, d)     factual latents
    /parents  float32 (N, K)        factual parents used (raw units)
    /x_T      float32 (N, C, H, W)  DDIM inversion with the factual condition, chunked
    attrs: schema_version, split, steps, abduction, inversion_iters, parents_from,
           checkpoint_sha256, names, per_image (+ shard, shard_rows in a shard's file)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

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
    writes ``<latents>.shard-i-of-n.h5`` (or ``out``); ``cdae merge`` joins the shards into the
    file the unsharded run writes."""
    import h5py
    import torch

    from cdae.counterfactual import CounterfactualEngine, to_unit
    from cdae.dataset import read_dataset

    ep = cfg.override(params.encode, "encode", split=split, steps=steps)
    ip = params.intervene
    model_path = Path(params.paths.model_dir) / "model.pt"
    engine = CounterfactualEngine.load(model_path)
    engine.inversion_iters = params.diffusion.inversion_iters
    ds = read_dataset(params.paths.dataset)
    from stages.intervene import check_compatible

    check_compatible(engine, ds.graph, str(params.paths.dataset), model_path, ds.image_shape)
    part = parse_shard(shard)
    idx_all = select(ds, ep.split, ep.max_images)
    rows_sel = part.rows(idx_all.size, ep.batch_size)
    idx = idx_all[rows_sel]
    k, d = len(engine.graph.names), engine.model.d
    target = Path(out) if out else part.path(Path(params.paths.latents))
    c, h, w = ds.image_shape
    use_labels = ip.parents_from is cfg.ParentsFrom.LABELS
    with atomic_path(target) as tmp, h5py.File(tmp, "w") as f, \
            Progress(idx.size, "encode-latents", unit="img") as bar:
        f.create_dataset("index", data=idx.astype(np.int64))
        chunk = max(1, min(ep.batch_size, idx.size))
        du = f.create_dataset("u", (idx.size, k, d), np.float32, chunks=(chunk, k, d))
        dz = f.create_dataset("z", (idx.size, k, d), np.float32, chunks=(chunk, k, d))
        dp = f.create_dataset("parents", (idx.size, k), np.float32)
        dx = f.create_dataset("x_T", (idx.size, c, h, w), np.float32, chunks=(chunk, c, h, w))
        for lo in range(0, idx.size, ep.batch_size):
            rows = idx[lo:lo + ep.batch_size]
            x = to_unit(ds.images[rows]).to(engine.device)
            y = (torch.as_tensor(ds.labels[rows], dtype=torch.float32, device=engine.device)
                 if use_labels else None)
            fact = engine.abduct(x, y, steps=ep.steps, abduction=cfg.Abduction.INVERT)
            sl = slice(lo, lo + rows.size)
            du[sl] = fact.u.cpu().numpy()
            dz[sl] = fact.z.cpu().numpy()
            dp[sl] = fact.parents.cpu().numpy()
            dx[sl] = fact.x_T.cpu().numpy()
            bar.advance(rows.size)
        f.attrs.update({"schema_version": SCHEMA_VERSION, "split": ep.split, "steps": ep.steps,
                        "abduction": cfg.Abduction.INVERT.value,
                        "inversion_iters": engine.inversion_iters,
                        "parents_from": ip.parents_from.value,
                        "checkpoint_sha256": file_sha256(model_path),
                        "names": json.dumps(list(engine.graph.names)),
                        **shard_attrs(part, rows_sel, {n: 0 for n in PER_IMAGE})})
    log.info("wrote %s: %d images of the %s split (DDIM inversion, %d steps%s)", target,
             idx.size, ep.split, ep.steps, f", shard {part}" if part.enabled else "")
    return {"path": str(target), "images": int(idx.size), "steps": ep.steps}


def load_cached(path: str | Path, model_path: str | Path, rows: np.ndarray, steps: int,
                parents_from: cfg.ParentsFrom,
                inversion_iters: int) -> dict[str, np.ndarray] | None:
    """Cached u, z, parents, x_T for dataset ``rows`` when the latents file matches the model,
    the DDIM steps and the abduction settings; otherwise None (the caller re-abducts)."""
    import h5py

    p = Path(path)
    if not p.is_file():
        return None
    try:
        with h5py.File(p, "r") as f:
            a = f.attrs
            if (int(a.get("schema_version", -1)) != SCHEMA_VERSION or int(a["steps"]) != steps
                    or a["parents_from"] != parents_from.value
                    or int(a.get("inversion_iters", -1)) != inversion_iters
                    or a["checkpoint_sha256"] != file_sha256(model_path)):
                return None
            index = f["index"][()]
            pos = {int(r): i for i, r in enumerate(index)}
            if not all(int(r) in pos for r in rows):
                return None
            sel = np.array([pos[int(r)] for r in rows])
            order = np.argsort(sel)
            inv = np.empty_like(order)
            inv[order] = np.arange(order.size)
            out = {}
            for key in ("u", "z", "parents", "x_T"):
                out[key] = f[key][np.sort(sel)][inv]
            return out
    except (OSError, KeyError) as err:
        log.warning("ignoring latents cache %s (%s)", p, err)
        return None
