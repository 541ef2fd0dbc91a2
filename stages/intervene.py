"""Stage `intervene`: counterfactuals of a split's images under one do-intervention -> HDF5.

Output layout (one file per intervention)::

    /index            int64   (N,)          dataset rows
    /factual          uint8   (N, C, H, W)
    /counterfactual   uint8   (N, C, H, W)
    /parents_factual  float32 (N, K)        raw units; what the model used as factual parents
    /parents_cf       float32 (N, K)        raw units; intervened values and what the learned
                                            mechanisms propagate to descendants
    attrs: name, do (JSON), names (JSON), guidance, steps, abduction, parents_from, model_step

When the latents file of `encode-latents` matches (same checkpoint, DDIM steps and parents
source, abduction ``invert``), its x_T is reused and only decoding runs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from cdae import config as cfg
from cdae.atomic import atomic_path
from cdae.errors import InterventionError
from cdae.progress import Progress, log

_SAFE = re.compile(r"[^A-Za-z0-9_.=+-]")


def default_name(do: dict[str, float]) -> str:
    """File-safe name for an intervention, e.g. ``do_thickness=2.0``."""
    return "do_" + "_".join(f"{k}={v:g}" for k, v in do.items()) if do else "do_nothing"


def output_path(out_dir: str | Path, name: str) -> Path:
    """``out_dir/name.h5``; ``name`` may not escape ``out_dir``."""
    safe = _SAFE.sub("_", name)
    if not safe or safe.startswith(".") or safe != name:
        raise InterventionError(f"intervention name '{name}' is not a safe file name",
                                hint="use letters, digits and _ . = + - only")
    return Path(out_dir) / f"{safe}.h5"


def check_support(engine, do: dict[str, float], strict: bool) -> list[str]:
    """Warn (or, strict, fail) for values outside the train split's 0.5..99.5 percentiles."""
    notes = []
    for name, value in do.items():
        pct = engine.percentile(name, value)
        if pct is None:
            continue
        if pct <= 0.5 or pct >= 99.5:
            msg = (f"{name}={value:g} lies at the {pct:.1f}th percentile of the train split: "
                   "outside the training support, the counterfactual is an extrapolation")
            if strict:
                raise InterventionError(msg, hint="choose a value inside the support or drop "
                                        "--strict")
            log.warning(msg)
            notes.append(msg)
    return notes


def check_compatible(engine, graph, where: str, model_path: Path,
                     image_shape: tuple[int, ...] | None = None) -> None:
    """DataError saying what differs when a checkpoint does not fit the graph or the images."""
    from cdae.errors import DataError

    mine, theirs = engine.graph, graph
    if mine.to_dict() != theirs.to_dict():
        if mine.names != theirs.names:
            what = f"variables {', '.join(mine.names)} vs {', '.join(theirs.names)}"
        elif mine.edges != theirs.edges:
            what = (f"edges {', '.join('->'.join(e) for e in mine.edges)} vs "
                    f"{', '.join('->'.join(e) for e in theirs.edges)}")
        else:
            what = "variable types or units differ"
        raise DataError(f"{model_path} was trained on another graph than {where} ({what})",
                        hint="re-run `cdae train` or use the matching params")
    if image_shape is not None and tuple(image_shape) != tuple(engine.model.image_shape):
        raise DataError(f"{model_path} expects images {tuple(engine.model.image_shape)}, "
                        f"{where} holds {tuple(image_shape)}", hint="re-run `cdae train`")


def run(params: cfg.Params, do: dict[str, float], *, name: str | None = None,
        out: str | None = None, strict: bool = False, guidance: float | None = None,
        steps: int | None = None, abduction: cfg.Abduction | None = None,
        parents_from: cfg.ParentsFrom | None = None,
        max_images: int | None = None) -> dict[str, object]:
    import h5py
    import torch

    from cdae.counterfactual import CounterfactualEngine, Factual, to_uint8, to_unit
    from cdae.dataset import read_dataset
    from stages.encode_latents import load_cached, select

    ip = cfg.override(params.intervene, "intervene", guidance=guidance, steps=steps,
                      abduction=abduction, parents_from=parents_from, max_images=max_images)
    model_path = Path(params.paths.model_dir) / "model.pt"
    name = name or default_name(do)
    target = Path(out) if out else output_path(params.paths.counterfactuals_dir, name)
    engine = CounterfactualEngine.load(model_path)
    engine.inversion_iters = params.diffusion.inversion_iters
    checked: dict[str, float] = {}
    from cdae.counterfactual import add_intervention

    for k, v in do.items():
        add_intervention(checked, k, v, engine.graph)
    notes = check_support(engine, checked, strict)
    ds = read_dataset(params.paths.dataset)
    check_compatible(engine, params.graph, "params.yaml", model_path)
    check_compatible(engine, ds.graph, str(params.paths.dataset), model_path, ds.image_shape)
    rows = select(ds, ip.split, ip.max_images)
    use_labels = ip.parents_from is cfg.ParentsFrom.LABELS
    cache = None
    if ip.abduction is cfg.Abduction.INVERT:
        cache = load_cached(params.paths.latents, model_path, rows, ip.steps, ip.parents_from,
                            engine.inversion_iters)
    log.info("intervene %s on %d images (%s abduction%s, %d DDIM steps, guidance %g)", name,
             rows.size, ip.abduction.value, ", cached x_T" if cache else "", ip.steps,
             ip.guidance)
    c, h, w = ds.image_shape
    k = len(engine.graph.names)
    gen = torch.Generator(device=engine.device).manual_seed(params.seed)
    with atomic_path(target) as tmp, h5py.File(tmp, "w") as f, \
            Progress(rows.size, f"intervene {name}", unit="img") as bar:
        f.create_dataset("index", data=rows.astype(np.int64))
        f.create_dataset("factual", data=ds.images[rows])
        dcf = f.create_dataset("counterfactual", (rows.size, c, h, w), np.uint8)
        dpf = f.create_dataset("parents_factual", (rows.size, k), np.float32)
        dpc = f.create_dataset("parents_cf", (rows.size, k), np.float32)
        for lo in range(0, rows.size, ip.batch_size):
            sel = rows[lo:lo + ip.batch_size]
            sl = slice(lo, lo + sel.size)
            x = to_unit(ds.images[sel]).to(engine.device)
            if cache is not None:
                dev = engine.device
                z = torch.as_tensor(cache["z"][sl], device=dev)
                fact = Factual(u=torch.as_tensor(cache["u"][sl], device=dev), z=z, style=None,
                               x_T=torch.as_tensor(cache["x_T"][sl], device=dev),
                               parents=torch.as_tensor(cache["parents"][sl], device=dev),
                               from_labels=torch.zeros(z.shape[:2], dtype=torch.bool))
                if engine.model.style_dim:
                    _, style = engine.model.split_latent(engine.model.encode(x)[0])
                    fact.style = style
            else:
                y = (torch.as_tensor(ds.labels[sel], dtype=torch.float32, device=engine.device)
                     if use_labels else None)
                fact = engine.abduct(x, y, steps=ip.steps, abduction=ip.abduction, t0=ip.t0,
                                     generator=gen)
            z_cf = engine.intervene(fact, checked)
            x_cf = engine.predict(fact, z_cf, steps=ip.steps, guidance=ip.guidance,
                                  abduction=ip.abduction, t0=ip.t0)
            dcf[sl] = to_uint8(x_cf)
            dpf[sl] = fact.parents.cpu().numpy()
            pc = engine.model.read_labels(z_cf)
            for var, value in checked.items():
                pc[:, engine.graph.index(var)] = value
            dpc[sl] = pc.cpu().numpy()
            bar.advance(sel.size)
        pf, pcf = dpf[()], dpc[()]
        f.attrs.update({"name": name, "do": json.dumps(checked),
                        "names": json.dumps(list(engine.graph.names)), "guidance": ip.guidance,
                        "steps": ip.steps, "abduction": ip.abduction.value,
                        "parents_from": ip.parents_from.value, "model_step": engine.step})
    summary = {
        "name": name, "path": str(target), "images": int(rows.size), "do": checked,
        "guidance": ip.guidance, "steps": ip.steps, "abduction": ip.abduction.value,
        "parents_from": ip.parents_from.value, "warnings": notes,
        "parents": {n: {"factual_mean": float(np.mean(pf[:, j])),
                        "counterfactual_mean": float(np.mean(pcf[:, j])),
                        "intervened": n in checked,
                        "categorical": engine.graph.variable(n).is_categorical,
                        "changed": int(np.sum(np.abs(pcf[:, j] - pf[:, j]) > 1e-6)),
                        "unit": engine.graph.variable(n).unit}
                    for j, n in enumerate(engine.graph.names)},
        "examples": [{n: [round(float(pf[i, j]), 3), round(float(pcf[i, j]), 3)]
                      for j, n in enumerate(engine.graph.names)} for i in range(min(5, rows.size))],
    }
    return summary
