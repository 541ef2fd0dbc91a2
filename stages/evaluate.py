"""Stage `evaluate`: score counterfactuals against the true SCM -> metrics.json.

Protocol (EVALUATION.md): the first ``evaluate.max_images`` images of the test split. For
do(thickness) and do(intensity), one value per image drawn from the TRAIN marginal of that
variable (seeded). Targets: the intervened value, and for the other variables the TRUE SCM's
counterfactual with the true (stored) noise. Attributes are MEASURED on the images by the
generator (Morpho-MNIST morphometrics for the default dataset). Every row is reported beside the
same images' "do nothing" (x* = x) and "true mechanism" (the generator's own counterfactual
image) rows.

Imported data (``has_ground_truth`` False in the file) stores no noise and no base images:
:func:`plan_evaluation` decides what is computable. The true counterfactual images (L1/PSNR to
them, the true-mechanism rows) are skipped; targets come from the factual labels through the
SCM's equations where the generator abducts its noise from labels
(``counterfactual_from_labels``), else only the intervened value and the non-descendants'
factual labels are targets; without a known SCM nothing is measured on images and only the
``null`` row runs. ``setup.ground_truth`` and ``setup.targets`` say which.
"""

from __future__ import annotations

import enum
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import numpy as np

from cdae import config as cfg
from cdae.atomic import write_text
from cdae.metrics import l1, mae, psnr
from cdae.progress import log

if TYPE_CHECKING:
    from cdae.dataset import Dataset
    from cdae.generators import Generator
    from cdae.graph import CausalGraph

GROUND_TRUTH_MISSING = "not available for imported data"


class TargetSource(str, enum.Enum):
    """Where the counterfactual label targets come from (most to least complete)."""

    STORED_NOISE = "the true SCM with the stored exogenous noise"
    LABELS = ("the SCM's equations with the exogenous noise abducted from the factual labels "
              "(no stored noise)")
    GRAPH = ("the intervened value and the factual labels of its non-descendants; descendants "
             "have no target (no SCM known)")


@dataclass(frozen=True)
class EvaluationPlan:
    """What evaluate can compute for a dataset file.

    ``measurable``: variables measured on images (empty: no generator to measure with);
    ``true_images``: the true counterfactual images can be rendered (L1/PSNR to them and the
    true-mechanism rows); ``targets``: how counterfactual label targets are made.
    """

    measurable: tuple[str, ...]
    true_images: bool
    targets: TargetSource

    def notes(self) -> dict[str, str]:
        """Lines for metrics.json's ``setup``."""
        return {
            "ground_truth": ("the true SCM's counterfactual images (stored noise and base "
                             "images)" if self.true_images else
                             f"{GROUND_TRUTH_MISSING}: no true counterfactual L1/PSNR and no "
                             "true-mechanism rows"),
            "targets": self.targets.value,
        }


def plan_evaluation(ds: Dataset, gen: Generator | None) -> EvaluationPlan:
    """What is computable for ``ds`` with its generator ``gen`` (None when the file names no
    SCM). Generated files: everything; imported files: see the module docstring."""
    measurable = tuple(m for m in gen.measurable if m in ds.graph.names) if gen else ()
    if ds.has_ground_truth and gen is not None:
        return EvaluationPlan(measurable, True, TargetSource.STORED_NOISE)
    if gen is not None and gen.counterfactual_from_labels:
        return EvaluationPlan(measurable, False, TargetSource.LABELS)
    return EvaluationPlan(measurable, False, TargetSource.GRAPH)


def counterfactual_targets(plan: EvaluationPlan, gen: Generator | None, graph: CausalGraph,
                           labels: Mapping[str, np.ndarray], noise: np.ndarray | None,
                           do: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Target labels (N,) per variable under ``do`` (raw units; NaN where a factual label is
    missing); variables without a computable target are left out."""
    if plan.targets is TargetSource.STORED_NOISE:
        assert gen is not None and noise is not None
        return gen.counterfactual_labels(dict(labels), noise, do)
    if plan.targets is TargetSource.LABELS:
        assert gen is not None
        return gen.counterfactual_labels(dict(labels), None, do)
    unknown = set(graph.descendants(do))
    out = {name: np.asarray(labels[name], np.float64) for name in graph.names
           if name not in unknown}
    for name, value in do.items():
        out[name] = np.broadcast_to(np.asarray(value, np.float64),
                                    np.shape(labels[name])).copy()
    return out


def _measured_rows(measured: dict[str, np.ndarray], target: dict[str, np.ndarray],
                   names: tuple[str, ...]) -> dict[str, float]:
    """``<var>_mae`` of the measured values against the targets, for variables with one."""
    return {f"{n}_mae": mae(measured[n], target[n]) for n in names if n in target}


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
    try:
        gen = make_generator(cfg.SCMKind(ds.scm), data) if ds.scm else None
    except ValueError:
        raise DataError(f"{params.paths.dataset}: unknown SCM {ds.scm!r}",
                        hint="re-run `cdae prepare-data` with this cdae") from None
    plan = plan_evaluation(ds, gen)
    if not plan.true_images:
        log.info("evaluate: %s: ground truth %s; targets from %s", params.paths.dataset,
                 GROUND_TRUTH_MISSING, plan.targets.value)
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
    noise = ds.noise[rows] if ds.noise is not None else None
    base = (ds.base_images[ds.base_index[rows]]
            if ds.base_images is not None and ds.base_index is not None else None)
    x_np = ds.images[rows]
    x = to_unit(x_np).to(engine.device)
    y = torch.as_tensor(ds.labels[rows], dtype=torch.float32, device=engine.device)

    t0 = time.perf_counter()
    fact = engine.abduct(x, y, steps=ep.steps, abduction=cfg.Abduction.INVERT)
    fact_img = engine.abduct(x, None, steps=1, abduction=cfg.Abduction.NOISE)  # parents only
    abduct_s = time.perf_counter() - t0
    measurable = plan.measurable
    measured_factual = gen.measure(x_np) if gen is not None and measurable else {}

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
        target = counterfactual_targets(plan, gen, ds.graph, labels, noise, do)
        measured = gen.measure(x_cf) if gen is not None and measurable else {}
        true_img = (gen.true_counterfactual(base, labels, noise, do)[0]
                    if gen is not None and plan.true_images else None)
        row: dict[str, float] = {}
        row.update(_measured_rows(measured, target, measurable))
        if true_img is not None:
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
            if m in do or ds.graph.variable(m).is_categorical or m not in target:
                continue
            row[f"parent_{m}_mae_labels"] = mae(believed[:, j], target[m])
            row[f"parent_{m}_mae_image"] = mae(believed_img[:, j], target[m])
        results[key] = row
        nothing = _measured_rows(measured_factual, target, measurable)
        if true_img is not None:
            nothing["l1_to_true_counterfactual"] = l1(x_np, true_img)
        if nothing:
            results[f"{key}_do_nothing"] = nothing
        if gen is not None and true_img is not None:
            truth = _measured_rows(gen.measure(true_img), target, measurable)
            results[f"{key}_true_mechanism"] = truth
        log.info("evaluate %s: %s", key, ", ".join(f"{k}={v:.3f}" for k, v in row.items()))
    results["null"]["composition_l1"] = results["null"]["l1_to_factual"]  # type: ignore[index]

    results["setup"] = {
        "dataset": params.paths.dataset, "split": ep.split, "images": int(n),
        "image_shape": list(ds.image_shape), "ddim_steps": ep.steps, "guidance": ep.guidance,
        "abduction": "invert", "parents_from": "labels",
        "parent_error_from": "labels and image (encoder), both reported",
        "values": "one per image from the train marginal of the intervened variable",
        "attributes": (f"measured ({gen.measurement})" if gen is not None and measurable else
                       "not measured (no SCM known for this file, or none of its variables is "
                       "measurable): only the null row runs"),
        **plan.notes(),
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
