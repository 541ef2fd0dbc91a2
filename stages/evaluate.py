"""Stage `evaluate`: score counterfactuals against the true SCM -> metrics.json.

Protocol (EVALUATION.md): the first ``evaluate.max_images`` images of the test split. For
do(thickness) and do(intensity), one value per image drawn from the TRAIN marginal of that
variable (seeded). Targets: the intervened value, and for the other variables the TRUE SCM's
counterfactual with the true (stored) noise. Attributes are MEASURED on the images by the
generator (Morpho-MNIST morphometrics for the default dataset). Every row is reported beside the
same images' "do nothing" (x* = x) and "true mechanism" (the generator's own counterfactual
image) rows.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from cdae import config as cfg
from cdae.atomic import write_text
from cdae.metrics import l1, mae, psnr
from cdae.progress import log


def _measured_rows(measured: dict[str, np.ndarray], target: dict[str, np.ndarray],
                   names: tuple[str, ...]) -> dict[str, float]:
    return {f"{n}_mae": mae(measured[n], target[n]) for n in names}


def run(params: cfg.Params) -> dict[str, object]:
    import torch

    from cdae.counterfactual import CounterfactualEngine, to_uint8, to_unit
    from cdae.dataset import Split, read_dataset
    from cdae.errors import DataError
    from cdae.generators import make_generator
    from stages.encode_latents import select

    t_start = time.perf_counter()
    ep = params.evaluate
    ip = params.intervene
    ds = read_dataset(params.paths.dataset)
    # the generator with the settings that made the file (image size, label units), if stored
    data = (cfg.data_from_json(ds.data_params, str(params.paths.dataset)) if ds.data_params
            else params.data)
    own_scenes = ds.source == cfg.DataSource.SCENES.value  # no base images by design
    if ds.noise is None or not ds.scm or (ds.base_images is None and not own_scenes):
        raise DataError(f"{params.paths.dataset}: has no stored SCM noise and base images",
                        hint="evaluate needs a generated dataset (prepare-data with an SCM)")
    gen = make_generator(cfg.SCMKind(ds.scm), data)
    engine = CounterfactualEngine.load(Path(params.paths.model_dir) / "model.pt")
    engine.inversion_iters = params.diffusion.inversion_iters
    from stages.intervene import check_compatible

    check_compatible(engine, ds.graph, str(params.paths.dataset),
                     Path(params.paths.model_dir) / "model.pt", ds.image_shape)
    names = ds.graph.names
    rows = select(ds, ep.split, ep.max_images)
    n = rows.size
    rng = np.random.default_rng(ep.seed)
    train_rows = ds.indices(Split.TRAIN)
    labels = {name: ds.labels[rows, j] for j, name in enumerate(names)}
    noise = ds.noise[rows]
    base = (ds.base_images[ds.base_index[rows]]
            if ds.base_images is not None and ds.base_index is not None else None)
    x_np = ds.images[rows]
    x = to_unit(x_np).to(engine.device)
    y = torch.as_tensor(ds.labels[rows], dtype=torch.float32, device=engine.device)

    t0 = time.perf_counter()
    fact = engine.abduct(x, y, steps=ep.steps, abduction=cfg.Abduction.INVERT)
    fact_img = engine.abduct(x, None, steps=1, abduction=cfg.Abduction.NOISE)  # parents only
    abduct_s = time.perf_counter() - t0
    measured_factual = gen.measure(x_np)
    measurable = tuple(m for m in gen.measurable if m in names)

    results: dict[str, object] = {}
    decode_s = 0.0
    interventions: dict[str, dict[str, np.ndarray]] = {"null": {}}
    for var in measurable:
        j = names.index(var)
        pool = ds.labels[train_rows, j]
        pool = pool[np.isfinite(pool)]
        interventions[f"do_{var}"] = {var: rng.choice(pool, size=n)}

    for key, do in interventions.items():
        t0 = time.perf_counter()
        z_cf = engine.intervene(fact, {k: torch.as_tensor(v) for k, v in do.items()})
        x_cf = to_uint8(engine.predict(fact, z_cf, steps=ep.steps, guidance=ep.guidance))
        decode_s += time.perf_counter() - t0
        target = gen.counterfactual_labels(labels, noise, do)
        measured = gen.measure(x_cf)
        true_img, _ = gen.true_counterfactual(base, labels, noise, do)
        row: dict[str, float] = {}
        row.update(_measured_rows(measured, target, measurable))
        row["l1_to_true_counterfactual"] = l1(x_cf, true_img)
        row["psnr_to_true_counterfactual"] = psnr(x_cf, true_img)
        row["l1_to_factual"] = l1(x_cf, x_np)
        for m in measurable:
            row[f"{m}_moved"] = mae(measured[m], measured_factual[m])
        # what the learned mechanisms believe (no image involved)
        believed = engine.model.read_labels(z_cf).cpu().numpy()
        z_cf_img = engine.intervene(fact_img, {k: torch.as_tensor(v) for k, v in do.items()})
        believed_img = engine.model.read_labels(z_cf_img).cpu().numpy()
        for j, m in enumerate(names):
            if m in do or ds.graph.variable(m).is_categorical:
                continue
            row[f"parent_{m}_mae_labels"] = mae(believed[:, j], target[m])
            row[f"parent_{m}_mae_image"] = mae(believed_img[:, j], target[m])
        results[key] = row
        nothing = _measured_rows(measured_factual, target, measurable)
        nothing["l1_to_true_counterfactual"] = l1(x_np, true_img)
        results[f"{key}_do_nothing"] = nothing
        true_measured = gen.measure(true_img)
        truth = _measured_rows(true_measured, target, measurable)
        results[f"{key}_true_mechanism"] = truth
        log.info("evaluate %s: %s", key, ", ".join(f"{k}={v:.3f}" for k, v in row.items()))
    results["null"]["composition_l1"] = results["null"]["l1_to_factual"]  # type: ignore[index]

    results["setup"] = {
        "dataset": params.paths.dataset, "split": ep.split, "images": int(n),
        "image_shape": list(ds.image_shape), "ddim_steps": ep.steps, "guidance": ep.guidance,
        "abduction": "invert", "parents_from": "labels",
        "parent_error_from": "labels and image (encoder), both reported",
        "values": "one per image from the train marginal of the intervened variable",
        "attributes": f"measured ({gen.measurement})",
        "units": {m: ds.graph.variable(m).unit for m in names},
        "seed": ep.seed, "model_step": engine.step,
    }
    total = time.perf_counter() - t_start
    results["cost"] = {"seconds": round(total, 1), "abduction_seconds": round(abduct_s, 1),
                       "decode_seconds": round(decode_s, 1),
                       "counterfactuals_per_second": round(n * (len(interventions)) /
                                                           max(decode_s + abduct_s, 1e-9), 2),
                       "device": str(engine.device)}
    text = json.dumps(results, indent=2, sort_keys=True, default=float)
    write_text(params.paths.metrics, text + "\n")
    return results


def format_metrics(r: dict[str, object]) -> str:
    lines = []
    for key in sorted(r):
        if key in ("setup", "cost"):
            continue
        vals = r[key]
        lines.append(f"{key}: " + ", ".join(f"{k}={v:.3f}" for k, v in vals.items()))  # type: ignore[union-attr]
    return "\n".join(lines)
