"""Stage `evaluate`: the counterfactual scorecard -> metrics.json, plots, evaluation.md.

Protocol (EVALUATION.md): ``evaluate.max_images`` images of the split (seeded subset), abducted
once (inversion with ``evaluate.steps``, as far as ``intervene.abduction`` and
``intervene.t0`` say: the counterfactuals `intervene` makes). Interventions: do(v) for every variable v and
``random`` (a fair coin per variable and image, at least one), each under two value protocols:
``marginal`` (a value from the train marginal) and ``forced`` (a train value from another
decile bin, another class). Row keys: ``do_<v>`` / ``random`` (marginal) and
``do_<v>_forced`` / ``random_forced``, each beside ``<key>_do_nothing`` (x* = x) and
``<key>_true_mechanism`` (the generator's own counterfactual image). Every row is the mean over
``evaluate.seeds`` draws of the intervention values (same images), ``<metric>_std`` their
standard deviation. Targets: the intervened value, and for the other variables the TRUE SCM's
counterfactual with the true (stored) noise. Attributes are MEASURED on the images by the
generator where it can (``<v>_mae``), and PREDICTED by the anti-causal predictors of
`train-predictors` (``predicted_<v>_mae`` / ``predicted_<v>_accuracy``; their own test errors
in the ``predictors`` group). ``null`` (composition after one null intervention on every image)
and ``cycles`` (composition after 1 and ``composition_steps`` null interventions, reversibility
after 1 and ``reversibility_cycles`` cycles, on ``evaluate.cycle_images`` images) are
deterministic. ``dci`` scores the encoder's z; ``frechet_<v>_features`` is the Frechet distance
of the predictor of <v>'s penultimate features to the train images'.

Imported data (``has_ground_truth`` False in the file) stores no noise and no base images:
:func:`plan_evaluation` decides what is computable. The true counterfactual images (L1/PSNR to
them, the true-mechanism rows) are skipped; targets come from the factual labels through the
SCM's equations where the generator abducts its noise from labels
(``counterfactual_from_labels``), else only the intervened value and the non-descendants'
factual labels are targets; without a known SCM nothing is measured on images (predicted
effectiveness still is). ``setup.ground_truth`` and ``setup.targets`` say which.
"""

from __future__ import annotations

import enum
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from cdae import config as cfg
from cdae.atomic import write_text
from cdae.metrics import (FloorCheck, Phase, Protocol, accuracy, bias, check_floors, cycles,
                          dci, draw_values, frechet_distance, l1, mae, mean_std, off_support,
                          psnr, random_masks, variable_ranks)
from cdae.progress import Progress, log
from cdae.tables import md_cell, mean_std_cell
from stages.report import Baseline
from stages.train_predictors import PREDICTORS_FILE

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


class ReadBy(str, enum.Enum):
    """How a variable's value on a counterfactual image was read."""

    MEASURED = "measured"  # by the generator's measurements (morphometrics, scene equations)
    PREDICTED = "predicted"  # by the anti-causal predictor q(v | x, ...)


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


# ---------------------------------------------------------------------------- one intervention

@dataclass
class Scored:
    """One intervention on the evaluated images: masks (N, K) of intervened variables, values
    (N, K) raw, targets per variable (N,) (NaN = none), counterfactual images, true images
    (or None) with the rows they exist for."""

    masks: np.ndarray
    values: np.ndarray
    target: dict[str, np.ndarray]
    x_cf: np.ndarray
    believed: np.ndarray
    believed_img: np.ndarray
    true_img: np.ndarray | None
    true_rows: np.ndarray  # (N,) bool: a true counterfactual image exists
    notes: list[str]


#: images per decoding call when several interventions share one: on a 2-core CPU the cost per
#: image is lowest around 32-64 (measured: 20 images 6.4 ms, 32 images 4.4 ms, 160 images 11 ms
#: per image and network call)
DECODE_BATCH = 48


class _Context:
    """What every intervention of one evaluation shares (images, labels, engine, ...)."""

    def __init__(self, *, engine, ds, gen, plan, predictors, rows: np.ndarray, steps: int,
                 guidance: float, abduction: cfg.Abduction, t0: int,
                 guidance_mode: cfg.GuidanceMode = cfg.GuidanceMode.UNCONDITIONAL) -> None:
        import torch

        from cdae.counterfactual import to_unit

        self.engine, self.ds, self.gen, self.plan, self.pred = engine, ds, gen, plan, predictors
        self.names = ds.graph.names
        self.rows = rows
        self.n = rows.size
        self.steps, self.guidance = steps, guidance
        self.abduction, self.t0 = abduction, t0  # intervene's: the counterfactuals it makes
        self.guidance_mode = guidance_mode  # intervene's too
        self.labels = {name: ds.labels[rows, j] for j, name in enumerate(self.names)}
        self.noise = ds.noise[rows] if ds.noise is not None else None
        self.base = ds.base_rows(rows)
        self.x_np = ds.images[rows]
        self.x = to_unit(self.x_np).to(engine.device)
        self.y = torch.as_tensor(ds.labels[rows], dtype=torch.float32, device=engine.device)
        self.categorical = [ds.graph.variable(m).is_categorical for m in self.names]
        self.train_labels = ds.labels[ds.split == 0]  # the support a target is ranked in
        # the predictors' reading of the factual images (the identity a counterfactual keeps)
        self.pred_factual = (predictors.predict(self.x_np, self.labels)
                             if predictors is not None else {})
        # every judge seed's reading of them, for categorical variables with several seeds
        self.judges_factual = ({m: predictors.judge_classes(self.x_np, m, self.labels,
                                                            first=self.pred_factual[m])
                                for m in predictors.judges} if predictors is not None else {})

    def first(self, k: int) -> "_Context":
        """The same evaluation on the first ``k`` images only."""
        return _Context(engine=self.engine, ds=self.ds, gen=self.gen, plan=self.plan,
                        predictors=self.pred, rows=self.rows[:k], steps=self.steps,
                        guidance=self.guidance, abduction=self.abduction, t0=self.t0,
                        guidance_mode=self.guidance_mode)

    def support_ranks(self, m: str, target: Mapping[str, np.ndarray]) -> np.ndarray:
        """Rank (N,) of each image's target of ``m`` among the train values of ``m`` at the
        train examples with the nearest parent values (parents at their targets too)."""
        labels = np.stack([target[n] for n in self.names], 1)
        return variable_ranks(self.ds.graph, m, self.train_labels, self.ds.label_std, labels)

    def sub(self, d: Mapping[str, np.ndarray] | None, rows: np.ndarray):
        return None if d is None else {k: np.asarray(v)[rows] for k, v in d.items()}


def _slice_factual(fact, rows: np.ndarray):
    from cdae.counterfactual import Factual

    idx = list(rows)
    return Factual(fact.u[idx], fact.z[idx], None if fact.style is None else fact.style[idx],
                   fact.x_T[idx], fact.parents[idx], fact.from_labels[idx])


def intervene_groups(engine, fact, masks: np.ndarray, values: np.ndarray,
                     names: tuple[str, ...]):
    """z_cf (N, K, d) for per-image intervention sets: images grouped by their set."""
    import torch

    from cdae.metrics import groups

    z_cf = fact.z.clone()
    for key, rows in groups(masks):
        do = {names[j]: torch.as_tensor(values[rows, j]) for j in key}
        z_cf[list(rows)] = engine.intervene(_slice_factual(fact, rows), do)
    return z_cf


def _repeat(fact, times: int):
    """``fact`` stacked ``times`` times along the batch (several interventions, one decode)."""
    from cdae.counterfactual import Factual

    def rep(t):
        return None if t is None else t.repeat(times, *([1] * (t.dim() - 1)))

    return Factual(rep(fact.u), rep(fact.z), rep(fact.style), rep(fact.x_T), rep(fact.parents),
                   rep(fact.from_labels))


def score_interventions(ctx: _Context, fact, fact_img,
                        draws: list[tuple[np.ndarray, np.ndarray]]) -> list[Scored]:
    """Act and predict for several per-image interventions (masks, values), decoded as ONE
    batch (the CPU's cost per network call is largely fixed); targets and true images per
    intervention and group of images."""
    from cdae.counterfactual import to_uint8

    engine, names, n = ctx.engine, ctx.names, ctx.n
    masks = np.concatenate([m for m, _ in draws])
    values = np.concatenate([v for _, v in draws])
    big = _repeat(fact, len(draws)) if len(draws) > 1 else fact
    big_img = _repeat(fact_img, len(draws)) if len(draws) > 1 else fact_img
    z_cf = intervene_groups(engine, big, masks, values, names)
    x_cf = to_uint8(engine.predict(big, z_cf, steps=ctx.steps, guidance=ctx.guidance,
                                   abduction=ctx.abduction, t0=ctx.t0,
                                   guidance_mode=ctx.guidance_mode))
    believed = engine.model.read_labels(z_cf).cpu().numpy()
    believed_img = engine.model.read_labels(
        intervene_groups(engine, big_img, masks, values, names)).cpu().numpy()
    out = []
    for i, (m, v) in enumerate(draws):
        part = slice(i * n, (i + 1) * n)
        out.append(_with_targets(ctx, m, v, x_cf[part], believed[part], believed_img[part]))
    return out


def score_intervention(ctx: _Context, fact, fact_img, masks: np.ndarray,
                       values: np.ndarray) -> Scored:
    """:func:`score_interventions` of one intervention."""
    return score_interventions(ctx, fact, fact_img, [(masks, values)])[0]


def score_samples(ctx: _Context, fact, fact_img, seed: int) -> Scored:
    """The evaluated images' factual latents decoded from x_T ~ N(0, I) at t = T (seeded; no
    abducted noise, no intervention): how far the condition alone sets each variable. Scored
    as the null intervention is, against the factual values."""
    import dataclasses

    import torch

    from cdae.counterfactual import to_uint8

    engine = ctx.engine
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(tuple(fact.x_T.shape), generator=gen).to(fact.x_T.device)
    x = to_uint8(engine.predict(dataclasses.replace(fact, x_T=noise), fact.z, steps=ctx.steps,
                                guidance=0.0, abduction=cfg.Abduction.INVERT))
    none = np.zeros((ctx.n, len(ctx.names)), bool)
    return _with_targets(ctx, none, np.full(none.shape, np.nan), x,
                         engine.model.read_labels(fact.z).cpu().numpy(),
                         engine.model.read_labels(fact_img.z).cpu().numpy())


def _with_targets(ctx: _Context, masks: np.ndarray, values: np.ndarray, x_cf: np.ndarray,
                  believed: np.ndarray, believed_img: np.ndarray) -> Scored:
    from cdae.metrics import groups

    names, n = ctx.names, ctx.n
    target = {m: np.full(n, np.nan) for m in names}
    true_img = (np.zeros_like(ctx.x_np) if ctx.gen is not None and ctx.plan.true_images
                else None)
    true_rows = np.zeros(n, bool)
    notes: list[str] = []
    for key, rows in groups(masks):
        do = {names[j]: values[rows, j] for j in key}
        labels = ctx.sub(ctx.labels, rows)
        t = counterfactual_targets(ctx.plan, ctx.gen, ctx.ds.graph, labels,
                                   None if ctx.noise is None else ctx.noise[rows], do)
        for m, v in t.items():
            target[m][rows] = v
        if true_img is not None:
            try:
                img, _ = ctx.gen.true_counterfactual(
                    None if ctx.base is None else ctx.base[rows], labels, ctx.noise[rows], do)
            except ValueError as err:  # the generator has no true counterfactual for this do
                notes.append(f"no true counterfactual image for do({', '.join(do)}): {err}")
                continue
            true_img[rows] = img
            true_rows[rows] = True
    return Scored(masks, values, target, x_cf, believed, believed_img,
                  true_img if true_rows.any() else None, true_rows, notes)


def _attribute_rows(ctx: _Context, images: np.ndarray, s: Scored, rows: np.ndarray | None = None,
                    measured: dict[str, np.ndarray] | None = None
                    ) -> tuple[dict[str, float], dict[str, tuple[ReadBy, np.ndarray]]]:
    """Effectiveness of ``images`` (the evaluated images, or those of the bool ``rows``):
    measured ``<v>_mae`` (``measured``: the generator's reading of ``images``, made here when
    None) and predicted ``predicted_<v>_mae`` / ``predicted_<v>_accuracy`` against the targets.
    Also returns per variable the values scored (``measured`` or ``predicted``)."""
    sel = np.arange(ctx.n) if rows is None else np.flatnonzero(rows)
    target = {m: v[sel] for m, v in s.target.items()}
    out: dict[str, float] = {}
    values: dict[str, tuple[ReadBy, np.ndarray]] = {}
    if measured is None and ctx.gen is not None and ctx.plan.measurable:
        measured = ctx.gen.measure(images)
    predicted = ctx.pred.predict(images, target) if ctx.pred is not None else {}
    for j, m in enumerate(ctx.names):
        if not np.isfinite(target[m]).any():
            continue
        if m in ctx.plan.measurable and measured is not None:
            out[f"{m}_mae"] = mae(measured[m], target[m])
            if not ctx.categorical[j]:
                out[f"{m}_bias"] = bias(measured[m], target[m])
            values[m] = (ReadBy.MEASURED, measured[m])
        if m in predicted:
            if ctx.categorical[j]:
                out[f"predicted_{m}_accuracy"] = accuracy(predicted[m], target[m])
                kept = ~s.masks[sel, j]
                if kept.any() and m in ctx.pred_factual:
                    out[f"predicted_{m}_kept"] = accuracy(predicted[m][kept],
                                                          ctx.pred_factual[m][sel][kept])
                if kept.any() and m in ctx.judges_factual:
                    out.update(_judges_kept(ctx, m, images, target, predicted[m], sel, kept))
            else:
                out[f"predicted_{m}_mae"] = mae(predicted[m], target[m])
            values.setdefault(m, (ReadBy.PREDICTED, predicted[m]))
        set_rows = s.masks[sel, j]
        if m in values and not ctx.categorical[j] and set_rows.any():
            split, on, off = _support_split(ctx, m, target, values[m], set_rows)
            out.update(split)
            out.update(_categorical_by_support(ctx, m, target, predicted, on, off))
    return out, values


def _judges_kept(ctx: _Context, m: str, images: np.ndarray, target: Mapping[str, np.ndarray],
                 predicted: np.ndarray, sel: np.ndarray, kept: np.ndarray) -> dict[str, float]:
    """``predicted_<m>_kept`` read by every judge seed of categorical m (``predictors.judges``)
    on the ``kept`` images (m not intervened on): the lowest and highest share kept over the
    seeds, and the share of images whose m changed for every seed (lost beyond doubt).
    ``predicted``: the first seed's classes of ``images``, already made by the caller."""
    every = ctx.pred.judge_classes(images, m, target, first=predicted)[:, kept]
    factual = ctx.judges_factual[m][:, sel][:, kept]
    share = (every == factual).mean(axis=1)
    return {f"predicted_{m}_kept_judges_min": float(share.min()),
            f"predicted_{m}_kept_judges_max": float(share.max()),
            f"predicted_{m}_lost_all_judges": float((every != factual).all(axis=0).mean())}


def _categorical_by_support(ctx: _Context, m: str, target: Mapping[str, np.ndarray],
                            predicted: Mapping[str, np.ndarray], on: np.ndarray,
                            off: np.ndarray) -> dict[str, float]:
    """Predicted accuracy of each categorical variable (e.g. the digit a do(intensity) must
    keep) over the images where ``m`` was set in (``on``) and off (``off``) its train support:
    ``predicted_<c>_accuracy_<m>_set_in_support`` / ``..._off_support``. Tells whether the
    identity a counterfactual loses is lost where the decoder extrapolates."""
    out: dict[str, float] = {}
    for j, c in enumerate(ctx.names):
        if not ctx.categorical[j] or c not in predicted:
            continue
        for side, rows in (("in", on), ("off", off)):
            if rows.any():
                out[f"predicted_{c}_accuracy_{m}_set_{side}_support"] = accuracy(
                    predicted[c][rows], target[c][rows])
    return out


def _support_split(ctx: _Context, m: str, target: Mapping[str, np.ndarray],
                   scored: tuple[ReadBy, np.ndarray], set_rows: np.ndarray
                   ) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """The error on ``m`` over the images where the intervention set ``m``, split by whether
    the set value lies in the train support of ``m`` given its (counterfactual) parents:
    ``<v>_set_off_support`` (share off), ``<v>_set_mae_in_support``, ``<v>_set_mae_off_support``
    (``predicted_<v>_...`` where the value is predicted, not measured). Also returns the bool
    rows (N,) in and off the support."""
    kind, vals = scored
    ranks = ctx.support_ranks(m, target)
    off = off_support(ranks) & set_rows
    on = set_rows & np.isfinite(ranks) & ~off
    prefix = m if kind is ReadBy.MEASURED else f"predicted_{m}"
    out: dict[str, float] = {}
    if on.any() or off.any():
        out[f"{prefix}_set_off_support"] = float(off.sum() / (on.sum() + off.sum()))
    if on.any():
        out[f"{prefix}_set_mae_in_support"] = mae(vals[on], target[m][on])
    if off.any():
        out[f"{prefix}_set_mae_off_support"] = mae(vals[off], target[m][off])
    return out, on, off


def _frechet(ctx: _Context, ref: np.ndarray | None, images: np.ndarray,
             target: Mapping[str, np.ndarray]) -> dict[str, float]:
    if ctx.pred is None or ref is None or images.shape[0] < 2:
        return {}
    from cdae.predictors import feature_variable

    return {f"frechet_{feature_variable(ctx.ds.graph)}_features":
            frechet_distance(ref, ctx.pred.features(images, target))}


def model_row(ctx: _Context, s: Scored, measured_factual: dict[str, np.ndarray],
              ref_feats: np.ndarray | None
              ) -> tuple[dict[str, float], dict[str, tuple[ReadBy, np.ndarray]]]:
    """The model's row for one scored intervention, and the attribute values scored on x*
    per variable (measured where the generator can, else predicted)."""
    measured = ctx.gen.measure(s.x_cf) if ctx.gen is not None and ctx.plan.measurable else {}
    row, scored = _attribute_rows(ctx, s.x_cf, s, measured=measured)
    if s.true_img is not None:
        r = s.true_rows
        row["l1_to_true_counterfactual"] = l1(s.x_cf[r], s.true_img[r])
        row["psnr_to_true_counterfactual"] = psnr(s.x_cf[r], s.true_img[r])
    row["l1_to_factual"] = l1(s.x_cf, ctx.x_np)
    for m in ctx.plan.measurable:
        row[f"{m}_moved"] = mae(measured[m], measured_factual[m])
    for j, m in enumerate(ctx.names):
        if ctx.categorical[j] or not np.isfinite(s.target[m]).any():
            continue
        if m in measured:
            # the decoder's own error: the image against what its latent stands for (the set
            # value where m was intervened on, else the learned mechanisms' value)
            row[f"{m}_render_mae"] = mae(measured[m], s.believed[:, j])
        free = ~s.masks[:, j]  # images where m is not intervened on: the mechanisms' work
        if free.any():
            row[f"parent_{m}_mae_labels"] = mae(s.believed[free, j], s.target[m][free])
            row[f"parent_{m}_mae_image"] = mae(s.believed_img[free, j], s.target[m][free])
    row.update(_frechet(ctx, ref_feats, s.x_cf, s.target))
    return row, scored


def reference_rows(ctx: _Context, s: Scored, measured_factual: dict[str, np.ndarray],
                   ref_feats: np.ndarray | None) -> dict[str, dict[str, float]]:
    """``do_nothing`` (x* = x) and ``true_mechanism`` rows on the same images and targets."""
    out: dict[str, dict[str, float]] = {}
    nothing, _ = _attribute_rows(ctx, ctx.x_np, s, measured=measured_factual or None)
    if s.true_img is not None:
        nothing["l1_to_true_counterfactual"] = l1(ctx.x_np[s.true_rows], s.true_img[s.true_rows])
    nothing.update(_frechet(ctx, ref_feats, ctx.x_np, s.target))
    out[Baseline.DO_NOTHING.value] = nothing
    if s.true_img is not None:
        r = s.true_rows
        truth, _ = _attribute_rows(ctx, s.true_img[r], s, rows=r)
        truth.update(_frechet(ctx, ref_feats, s.true_img[r],
                              {m: v[r] for m, v in s.target.items()}))
        truth["images"] = float(r.sum())
        out[Baseline.TRUE_MECHANISM.value] = truth
    return out


def draw_intervention(ctx: _Context, key: str, protocol: Protocol, pools: list[np.ndarray],
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """masks and values (N, K) of intervention ``key`` (``do_<v>`` or ``random``)."""
    k = len(ctx.names)
    if key == "random":
        masks = random_masks(ctx.n, k, rng)
    else:
        masks = np.zeros((ctx.n, k), bool)
        masks[:, ctx.names.index(key[3:])] = True
    values = np.full((ctx.n, k), np.nan)
    for j, m in enumerate(ctx.names):
        if masks[:, j].any():
            values[:, j] = draw_values(pools[j], ctx.labels[m], protocol, ctx.categorical[j], rng)
    return masks, values


# ---------------------------------------------------------------------------- cycles

def _step(ctx: _Context, images: np.ndarray, labels: np.ndarray, masks: np.ndarray,
          values: np.ndarray) -> np.ndarray:
    """One full abduct (from ``labels``) - act - predict on uint8 images."""
    import torch

    from cdae.counterfactual import to_uint8, to_unit

    e = ctx.engine
    fact = e.abduct(to_unit(images).to(e.device),
                    torch.as_tensor(labels, dtype=torch.float32, device=e.device),
                    steps=ctx.steps, abduction=ctx.abduction, t0=ctx.t0)
    z_cf = intervene_groups(e, fact, masks, values, ctx.names)
    return to_uint8(e.predict(fact, z_cf, steps=ctx.steps, guidance=ctx.guidance,
                              abduction=ctx.abduction, t0=ctx.t0,
                              guidance_mode=ctx.guidance_mode))


def cycle_rows(ctx: _Context, sel: np.ndarray, pa_star: np.ndarray, m_long: int,
               c_long: int) -> dict[str, float]:
    """Composition after 1 and ``m_long`` null interventions; reversibility after 1 and
    ``c_long`` cycles of do(pa*) then do(pa), on the images ``sel`` (every chain in one batch
    per round): for the set ``all`` (every parent) and, where the graph has categorical
    variables, for ``continuous`` (every continuous parent; the categorical ones, e.g. the digit,
    stay factual). Keys ``reversibility_l1_<c>`` (all) and ``reversibility_continuous_l1_<c>``."""
    x = ctx.x_np[sel]
    pa = ctx.ds.labels[ctx.rows[sel]]
    every = np.isfinite(pa_star[sel]) & np.isfinite(pa)
    star = np.where(every, pa_star[sel], pa)
    sets = {"all": every}
    if any(ctx.categorical):
        sets["continuous"] = every & ~np.asarray(ctx.categorical, bool)[None, :]

    def step(images: np.ndarray, phases: np.ndarray, chain: np.ndarray) -> np.ndarray:
        rows = np.arange(images.shape[0]) % sel.size  # image i of sel, in every chain
        changed = np.stack([sets[c][i] if c else np.zeros(pa.shape[1], bool)
                            for c, i in zip(chain, rows)])
        backward = np.asarray([ph is Phase.BACKWARD for ph in phases])[:, None]
        forward = np.asarray([ph is Phase.FORWARD for ph in phases])[:, None]
        labels = np.where(changed & backward, star[rows], pa[rows])
        values = np.where(changed, np.where(forward, star[rows], pa[rows]), np.nan)
        return _step(ctx, images, labels, changed, values)

    comp, rev = cycles(x, step, sorted({1, m_long}), sorted({1, c_long}), tuple(sets))
    out = {f"composition_l1_{m}": v for m, v in comp.items()}
    for name, by_c in rev.items():
        prefix = "reversibility" if name == "all" else f"reversibility_{name}"
        out.update({f"{prefix}_l1_{c}": v for c, v in by_c.items()})
    out["images"] = float(sel.size)
    return out


# ---------------------------------------------------------------------------- DCI

def dci_row(engine, ds, ep: cfg.EvaluateParams) -> dict[str, float]:
    """DCI of the encoder's z (image only, no labels): fit on up to ``dci_images`` train
    images, informativeness on up to as many test images."""
    from cdae.dataset import Split

    rng = np.random.default_rng(ep.seed)
    codes, factors = [], []
    for split in (Split.TRAIN, Split.TEST):
        idx = ds.indices(split)
        idx = np.sort(rng.permutation(idx)[:ep.dci_images])
        enc = [engine.encode(ds.images[idx[lo:lo + 256]]) for lo in range(0, idx.size, 256)]
        z = np.concatenate([e.z.flatten(1).cpu().numpy() for e in enc])
        if enc and enc[0].style is not None:
            z = np.concatenate([z, np.concatenate([e.style.cpu().numpy() for e in enc])], 1)
        codes.append(z)
        factors.append(ds.labels[idx])
    k, d = len(ds.graph.names), engine.model.d
    blocks = [list(range(j * d, (j + 1) * d)) for j in range(k)]
    if codes[0].shape[1] > k * d:
        blocks.append(list(range(k * d, codes[0].shape[1])))
    out = dci(codes[0], factors[0], codes[1], factors[1],
              [v.is_categorical for v in ds.graph.variables], ds.graph.names, blocks=blocks,
              trees=ep.dci_trees, seed=ep.seed)
    out["train_images"] = float(codes[0].shape[0])
    out["test_images"] = float(codes[1].shape[0])
    return out


# ---------------------------------------------------------------------------- the stage

def judge_rows(ds: Dataset, gen, pred, split: str, pools: list[np.ndarray], seed: int
               ) -> tuple[dict[str, float], list[str]]:
    """The categorical predictors as judges of identity, on the whole ``split``: for each
    categorical c and each variable v that is neither c nor an ancestor of c (so do(v) leaves c
    as it was), ``<c>_kept_true_cf_do_<v>``: the share of images whose c predicted on the TRUE
    SCM counterfactual under do(v = a train-marginal value) equals the one predicted on the
    factual image. It is the ceiling of the model's ``predicted_<c>_kept`` under do(v), measured
    on many more images than the scored rows. Empty without ground truth; returns the rows and
    notes (a do the generator cannot render)."""
    from cdae.predictors import specs

    names = ds.graph.names
    rows = ds.indices(split)
    judged = [s for s in specs(ds.graph) if s.classes]
    if gen is None or not ds.has_ground_truth or not judged or rows.size == 0:
        return {}, []
    labels = {m: ds.labels[rows, j] for j, m in enumerate(names)}
    base = ds.base_rows(rows)
    noise = None if ds.noise is None else ds.noise[rows]
    rng = np.random.default_rng(seed)
    out: dict[str, float] = {}
    notes: list[str] = []
    for spec in judged:
        factual = pred.predict(ds.images[rows], labels, variables=(spec.var,))[spec.var]
        for j, v in enumerate(names):
            if v == spec.var or spec.var in ds.graph.descendants([v]):
                continue
            do = {v: rng.choice(pools[j], size=rows.size)}
            try:
                img, cf = gen.true_counterfactual(base, labels, noise, do)
            except ValueError as err:  # the generator has no true counterfactual for this do
                notes.append(f"no true counterfactual image for do({v}): {err}")
                continue
            values = {m: np.asarray(cf.get(m, labels[m]), np.float64) for m in names}
            p = pred.predict(img, values, variables=(spec.var,))[spec.var]
            out[f"{spec.var}_kept_true_cf_do_{v}"] = float(np.mean(p == factual))
        out[f"{spec.var}_kept_true_cf_examples"] = float(rows.size)
    return out, notes


def _load_predictors(path: Path, ds: Dataset):
    from cdae.errors import DataError
    from cdae.predictors import Predictors

    pred = Predictors.load(path)
    if pred.graph.structure() != ds.graph.structure() or pred.image_shape != ds.image_shape:
        raise DataError(f"{path} was trained on another graph or image size than the dataset",
                        hint="re-run `cdae train-predictors`")
    return pred


def with_overrides(params: cfg.Params, out_dir: str | Path | None = None,
                   **overrides: object) -> cfg.Params:
    """``params`` with the command line's evaluate settings (``overrides``: fields of
    :class:`cdae.config.EvaluateParams`, None = keep; validated as params.yaml is) and, with
    ``out_dir``, the scorecard (metrics.json, evaluation.md, evaluation/) written there instead
    of paths.metrics and paths.report_dir."""
    import dataclasses

    ep = cfg.override(params.evaluate, "evaluate", **overrides)
    paths = params.paths
    if out_dir is not None:
        paths = dataclasses.replace(paths, metrics=str(Path(out_dir) / "metrics.json"),
                                    report_dir=str(out_dir))
    return dataclasses.replace(params, evaluate=ep, paths=paths)


def run(params: cfg.Params) -> dict[str, object]:
    import torch

    from cdae.counterfactual import CounterfactualEngine
    from cdae.dataset import Split, read_dataset
    from cdae.errors import DataError
    from cdae.generators import make_generator
    from cdae.training import select_device
    from stages.encode_latents import select
    from stages.intervene import check_compatible

    t_start = time.perf_counter()
    select_device(params.device, "device")  # first: a missing GPU fails before any work
    c_start = time.process_time()
    ep = params.evaluate
    ds = read_dataset(params.paths.dataset)
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
    model_dir = Path(params.paths.model_dir)
    engine = CounterfactualEngine.for_params(model_dir / "model.pt", params)
    check_compatible(engine, ds.graph, str(params.paths.dataset), model_dir / "model.pt",
                     ds.image_shape)
    pred = _load_predictors(model_dir / PREDICTORS_FILE, ds)
    names = ds.graph.names
    rows = select(ds, ep.split, ep.max_images)
    for warning in engine.sampling_warnings(ep.steps):  # the step curves may go below on purpose
        log.warning(warning)
    ctx = _Context(engine=engine, ds=ds, gen=gen, plan=plan, predictors=pred, rows=rows,
                   steps=ep.steps, guidance=ep.guidance, abduction=params.intervene.abduction,
                   t0=params.intervene.t0, guidance_mode=params.intervene.guidance_mode)
    train_rows = ds.indices(Split.TRAIN)
    pools = [ds.labels[train_rows, j] for j in range(len(names))]
    timings: dict[str, float] = {}

    def timed(name: str):
        t0 = time.perf_counter()
        return lambda: timings.__setitem__(name, timings.get(name, 0.0) +
                                           time.perf_counter() - t0)

    done = timed("abduction_seconds")
    fact = engine.abduct(ctx.x, ctx.y, steps=ep.steps, abduction=ctx.abduction, t0=ctx.t0)
    fact_img = engine.abduct(ctx.x, None, steps=1, abduction=cfg.Abduction.NOISE)  # parents
    done()
    log.info("evaluate: abducted %d %s images (%d steps) in %.0f s", ctx.n, ep.split,
             ep.steps, timings["abduction_seconds"])
    measured_factual = gen.measure(ctx.x_np) if gen is not None and plan.measurable else {}
    ref_rng = np.random.default_rng(ep.seed)
    ref_rows = np.sort(ref_rng.permutation(train_rows)[:ep.frechet_images])
    ref_feats = pred.features(ds.images[ref_rows],
                              {m: ds.labels[ref_rows, j] for j, m in enumerate(names)})

    results: dict[str, object] = {}
    notes: list[str] = []
    scatter: dict[str, dict[str, tuple[str, np.ndarray, np.ndarray]]] = {}

    keys = [f"do_{m}" for m in names] + ["random"]
    plan_keys = [(key if protocol is Protocol.MARGINAL else f"{key}_forced", key, protocol)
                 for protocol in Protocol for key in keys]
    # the null decode and every draw of every seed: ctx.n counterfactual images each
    with Progress(ctx.n * (2 + ep.seeds * len(plan_keys)), "evaluate decodes",
                  unit="img") as bar:
        # null: no intervention (deterministic)
        done = timed("decode_seconds")
        none = np.zeros((ctx.n, len(names)), bool)
        s_null = score_intervention(ctx, fact, fact_img, none, np.full(none.shape, np.nan))
        bar.advance(ctx.n)
        done()
        row, _ = model_row(ctx, s_null, measured_factual, ref_feats)
        row["composition_l1"] = row["l1_to_factual"]
        results["null"] = row
        for suffix, ref in reference_rows(ctx, s_null, measured_factual, ref_feats).items():
            results[f"null{suffix}"] = ref
        done = timed("decode_seconds")
        s_sample = score_samples(ctx, fact, fact_img, ep.seed)
        bar.advance(ctx.n)
        done()
        results["sample"], _ = model_row(ctx, s_sample, measured_factual, ref_feats)
        decodes = 2

        per_seed: dict[str, list[dict[str, float]]] = {}
        pa_star: np.ndarray | None = None
        for seed_i in range(ep.seeds):
            rng = np.random.default_rng(ep.seed + seed_i)
            draws = [draw_intervention(ctx, key, protocol, pools, rng)
                     for _, key, protocol in plan_keys]
            done = timed("decode_seconds")
            per_call = max(1, DECODE_BATCH // ctx.n)
            scored_all = []
            for lo in range(0, len(draws), per_call):
                batch = draws[lo:lo + per_call]
                scored_all += score_interventions(ctx, fact, fact_img, batch)
                bar.advance(ctx.n * len(batch))
            done()
            decodes += len(draws)
            for (name, key, protocol), s in zip(plan_keys, scored_all):
                notes += [n for n in s.notes if n not in notes]
                row, scored = model_row(ctx, s, measured_factual, ref_feats)
                per_seed.setdefault(name, []).append(row)
                for suffix, ref in reference_rows(ctx, s, measured_factual, ref_feats).items():
                    per_seed.setdefault(name + suffix, []).append(ref)
                if seed_i == 0:
                    scatter[name] = {m: (kind, s.target[m], v) for m, (kind, v) in
                                     scored.items()}
                    if key == "random" and protocol is Protocol.MARGINAL:
                        pa_star = np.where(s.masks, s.values, s.believed)
                log.info("evaluate %s (seed %d): %s", name, ep.seed + seed_i,
                         ", ".join(f"{k}={v:.3f}" for k, v in row.items()))
    for name, seed_rows in per_seed.items():
        results[name] = mean_std(seed_rows)

    if ep.cycle_images and pa_star is not None:
        sel = np.arange(min(ep.cycle_images, ctx.n))
        done = timed("cycle_seconds")
        results["cycles"] = cycle_rows(ctx, sel, pa_star, ep.composition_steps,
                                       ep.reversibility_cycles)
        done()
        log.info("evaluate cycles: %s", results["cycles"])
    done = timed("dci_seconds")
    results["dci"] = dci_row(engine, ds, ep)
    done()
    results["predictors"] = {f"{m}_{k}": v for m, err in pred.test_error.items()
                             for k, v in err.items() if k.startswith("test_")}
    results["predictors"].update({f"{m}_test_examples": err["test_examples"]  # type: ignore[union-attr]
                                  for m, err in pred.test_error.items()})
    done = timed("judge_seconds")
    judged, judge_notes = judge_rows(ds, gen, pred, ep.split, pools, ep.seed)
    done()
    results["predictors"].update(judged)  # type: ignore[union-attr]
    notes += [n for n in judge_notes if n not in notes]
    if ep.sweep_guidance or ep.sweep_steps:
        done = timed("sweep_seconds")
        results.update(sweep_rows(ctx, ep, pools))
        done()

    from cdae.predictors import feature_variable, specs

    results["setup"] = {
        "dataset": params.paths.dataset, "split": ep.split, "images": int(ctx.n),
        "image_shape": list(ds.image_shape), "ddim_steps": ep.steps, "guidance": ep.guidance,
        "guidance_mode": ctx.guidance_mode.value,
        "solver": params.diffusion.solver.value, "spacing": params.diffusion.spacing.value,
        "inversion_iters": params.diffusion.inversion_iters,
        "seeds": [ep.seed + i for i in range(ep.seeds)],
        "rows": (f"do_<v>, random: {ctx.n} images x {ep.seeds} seeds (mean; _std over seeds); "
                 f"null, sample: {ctx.n} images; cycles: "
                 f"{results.get('cycles', {}).get('images', 0):.0f}"
                 f" images; dci: encoder z of train/test images; all at {ep.steps} grid points "
                 f"({params.diffusion.spacing.value} grid, {params.diffusion.solver.value} solver)"
                 " of inversion and decoding"),
        "abduction": (f"partial (inversion to t0 = {ctx.t0})"
                      if ctx.abduction is cfg.Abduction.PARTIAL else ctx.abduction.value),
        "parents_from": "labels",
        "parent_error_from": "labels and image (encoder), both reported",
        "values": {"marginal": "one per image from the train marginal of the variable",
                   "forced": "one per image from the train values in another decile bin of the "
                             "train marginal (continuous) or another class (categorical)",
                   "random": "a fair coin per variable and image, at least one variable"},
        "attributes": (f"measured ({gen.measurement}): {', '.join(plan.measurable)}"
                       if gen is not None and plan.measurable else "none measured"),
        "predicted": "; ".join(f"q({s.var} | x{''.join(', ' + c for c in s.inputs)})"
                               for s in specs(ds.graph))
        + " (children at their target values); see the predictors group for their test errors",
        "frechet": (f"Frechet distance between penultimate-layer features of the "
                    f"{feature_variable(ds.graph)} predictor (this project's own network, not "
                    f"Inception) of {ref_rows.size} train images and of the row's images"),
        "sample": "the factual latents (parents from the labels) decoded from x_T ~ N(0, I) "
                  "at t = T, no abducted noise and no guidance, scored against the factual "
                  "values: how far the condition alone sets each variable (the digit: "
                  "predicted_digit_kept)",
        "cycles": "composition: the null intervention applied m times; reversibility: "
                  "do(all = pa*) then do(all = pa), pa* the model's counterfactual parents "
                  "under the first random intervention; reversibility_continuous: the same "
                  "on the continuous parents only (categorical ones stay factual)",
        **plan.notes(),
        "notes": notes,
        "units": {m: ds.graph.variable(m).unit for m in names},
        "seed": ep.seed, "model_step": engine.step, "train_seed": engine.train_seed,
        "prediction": engine.model.prediction.value,  # what the UNet was trained to output
        # what `cdae combine` reads where no params file is at hand
        "graph": ds.graph.to_dict(), "floors": dict(ep.floors),
    }
    total = time.perf_counter() - t_start
    results["cost"] = {"seconds": round(total, 1),
                       "cpu_seconds": round(time.process_time() - c_start, 1),
                       **{k: round(v, 1) for k, v in timings.items()},
                       "decodes": decodes,
                       "counterfactuals_per_second": round(
                           ctx.n * decodes / max(timings.get("decode_seconds", 0.0), 1e-9), 2),
                       "device": str(engine.device),
                       "threads": torch.get_num_threads()}
    checks = check_floors(results, ep.floors)
    if checks:
        results["floors"] = {"met": sum(c.met for c in checks), "of": len(checks)}
        for c in checks:
            if c.value is None:
                log.warning("evaluate.floors.%s: the scorecard has no such number (not met)",
                            c.metric)
        log.info("evaluate: %d of %d floors met%s", results["floors"]["met"], len(checks),
                 "; missed: " + ", ".join(c.metric for c in checks if not c.met)
                 if not all(c.met for c in checks) else "")
    text = json.dumps(results, indent=2, sort_keys=True, default=float)
    write_text(params.paths.metrics, text + "\n")
    write_outputs(params, results, scatter)
    return results


def sweep_rows(ctx: _Context, ep: cfg.EvaluateParams, pools: list[np.ndarray]
               ) -> dict[str, dict[str, float]]:
    """Curves: per guidance scale (``sweep_guidance``) and per step count (``sweep_steps``,
    inversion and decoding), the do(v) marginal rows of the first seed and the null
    composition, on the first ``sweep_images`` evaluated images. Groups
    ``sweep_<what>_<value>`` with metrics ``<row>__<metric>``."""
    import copy

    ctx = ctx.first(ep.sweep_images)
    out: dict[str, dict[str, float]] = {}
    facts: dict[int, object] = {}
    fact_img = ctx.engine.abduct(ctx.x, None, steps=1, abduction=cfg.Abduction.NOISE)
    settings = ([("guidance", g, ep.steps, g) for g in ep.sweep_guidance]
                + [("steps", s, s, ep.guidance) for s in ep.sweep_steps])
    scored: dict[tuple[int, float], dict[str, float]] = {}  # a point both sweeps share
    for what, value, steps, guidance in settings:
        if (steps, guidance) in scored:
            out[f"sweep_{what}_{value:g}"] = dict(scored[steps, guidance])
            continue
        sub = copy.copy(ctx)
        sub.steps, sub.guidance = steps, guidance
        if steps not in facts:
            facts[steps] = ctx.engine.abduct(ctx.x, ctx.y, steps=steps,
                                             abduction=ctx.abduction, t0=ctx.t0)
        fact = facts[steps]
        group: dict[str, float] = {"images": float(ctx.n)}
        none = np.zeros((ctx.n, len(ctx.names)), bool)
        s = score_intervention(sub, fact, fact_img, none, np.full(none.shape, np.nan))
        group["null__composition_l1"] = l1(s.x_cf, ctx.x_np)
        rng = np.random.default_rng(ep.seed)
        for m in ctx.names:
            masks, values = draw_intervention(sub, f"do_{m}", Protocol.MARGINAL, pools, rng)
            s = score_intervention(sub, fact, fact_img, masks, values)
            row, _ = _attribute_rows(sub, s.x_cf, s)
            if s.true_img is not None:
                row["l1_to_true_counterfactual"] = l1(s.x_cf[s.true_rows],
                                                      s.true_img[s.true_rows])
            group.update({f"do_{m}__{k}": v for k, v in row.items()})
        out[f"sweep_{what}_{value:g}"] = scored[steps, guidance] = group
        log.info("evaluate sweep %s=%g: %s", what, value, group)
    return out


# ---------------------------------------------------------------------------- outputs

EVALUATION_DIR = "evaluation"  # in paths.report_dir: png/ and csv/ (dvc plots)
EVALUATION_MD = "evaluation.md"  # in paths.report_dir


def scatter_chart(title: str, panels: list[tuple[str, str, np.ndarray, np.ndarray]]
                  ) -> "Image.Image":
    """One panel per (variable, kind, target, value): value against target, with the
    identity line (a perfect counterfactual lies on it). RGB image, Pillow only."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    pw, ph, left, top, bottom, gap = 220, 220, 46, 34, 34, 20
    width = max(1, len(panels)) * (left + pw + gap) + gap
    height = top + ph + bottom
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((gap, 4), title, fill="black", font=font)
    for i, (var, kind, target, value) in enumerate(panels):
        x0 = gap + i * (left + pw + gap) + left
        ok = np.isfinite(target) & np.isfinite(value)
        both = np.concatenate([target[ok], value[ok]]) if ok.any() else np.zeros(1)
        lo, hi = float(both.min()), float(both.max())
        if hi - lo < 1e-9:
            lo, hi = lo - 0.5, hi + 0.5

        def px(a: float, b: float) -> tuple[float, float]:
            return (x0 + (a - lo) / (hi - lo) * pw, top + (1 - (b - lo) / (hi - lo)) * ph)

        draw.rectangle((x0, top, x0 + pw, top + ph), outline="black")
        draw.line((*px(lo, lo), *px(hi, hi)), fill=(200, 200, 200), width=1)
        for a, b in zip(target[ok], value[ok]):
            x, y = px(float(a), float(b))
            draw.ellipse((x - 2, y - 2, x + 2, y + 2), outline=(31, 119, 180))
        for t in (lo, hi):
            lab = f"{t:.3g}"
            x, _ = px(t, lo)
            draw.text((x - font.getlength(lab) / 2, top + ph + 4), lab, fill="black", font=font)
            _, y = px(lo, t)
            draw.text((x0 - 4 - font.getlength(lab), y - 6), lab, fill="black", font=font)
        draw.text((x0, top - 14), f"{var}: {kind.value} vs target (n={int(ok.sum())})",
                  fill="black", font=font)
    return canvas


#: x axis of each sweep's curves (``sweep_<what>_<value>`` groups of metrics.json)
SWEEP_AXES = {"guidance": "guidance scale s", "steps": "steps (inversion and decoding)"}


def sweep_curves(results: Mapping[str, object], what: str, names: tuple[str, ...]
                 ) -> tuple[list[float], dict[str, list[float]], int]:
    """The ``sweep_<what>_<value>`` groups as curves: sorted x values, per series one value
    per x (NaN where missing), and the number of images. Series: the null composition and,
    per do(v), the effectiveness of v (measured MAE, else predicted MAE or accuracy)."""
    prefix = f"sweep_{what}_"
    groups = {float(k[len(prefix):]): v for k, v in results.items()
              if k.startswith(prefix) and isinstance(v, Mapping)}
    xs = sorted(groups)
    wanted = ["null__composition_l1"]
    for m in names:
        for metric in (f"{m}_mae", f"predicted_{m}_mae", f"predicted_{m}_accuracy"):
            if any(f"do_{m}__{metric}" in g for g in groups.values()):
                wanted.append(f"do_{m}__{metric}")
                break
    series = {w: [float(groups[x].get(w, float("nan"))) for x in xs] for w in wanted
              if any(w in g for g in groups.values())}
    images = max((int(g.get("images", 0)) for g in groups.values()), default=0)
    return xs, series, images


def curve_chart(title: str, x_label: str, xs: list[float], series: Mapping[str, list[float]]
                ) -> "Image.Image":
    """Small multiples, one panel per series: value against x (x values evenly spaced and
    labelled, so step counts 10..250 stay readable). RGB image, Pillow only."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    pw, ph, left, top, bottom, gap, per_row = 200, 150, 50, 40, 40, 16, 4
    n = max(1, len(series))
    cols, rows = min(n, per_row), -(-n // per_row)
    width = cols * (left + pw + gap) + gap
    height = 20 + rows * (top + ph + bottom)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((gap, 4), title, fill="black", font=font)
    for i, (name, ys) in enumerate(series.items()):
        x0 = gap + (i % per_row) * (left + pw + gap) + left
        y_top = 20 + (i // per_row) * (top + ph + bottom) + top
        v = np.asarray(ys, np.float64)
        ok = np.isfinite(v)
        lo, hi = (float(v[ok].min()), float(v[ok].max())) if ok.any() else (0.0, 1.0)
        pad = max(hi - lo, 1e-9) * 0.1
        lo, hi = lo - pad, hi + pad

        def px(k: int, value: float) -> tuple[float, float]:
            fx = 0.5 if len(xs) == 1 else k / (len(xs) - 1)
            return x0 + 8 + fx * (pw - 16), y_top + (1 - (value - lo) / (hi - lo)) * ph

        draw.rectangle((x0, y_top, x0 + pw, y_top + ph), outline="black")
        draw.text((x0, y_top - 14), name.replace("__", ": "), fill="black", font=font)
        pts = [px(k, float(v[k])) for k in range(len(xs)) if ok[k]]
        if len(pts) > 1:
            draw.line(pts, fill=(31, 119, 180), width=2)
        for x, y in pts:
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=(31, 119, 180))
        for k, xv in enumerate(xs):
            lab = f"{xv:g}"
            x, _ = px(k, lo)
            draw.text((x - font.getlength(lab) / 2, y_top + ph + 4), lab, fill="black", font=font)
        for t in (lo + pad, hi - pad):
            lab = f"{t:.3g}"
            _, y = px(0, t)
            draw.text((x0 - 4 - font.getlength(lab), y - 6), lab, fill="black", font=font)
        draw.text((x0 + pw / 2 - font.getlength(x_label) / 2, y_top + ph + 20), x_label,
                  fill="black", font=font)
    return canvas


def _clear(folder: Path, patterns: tuple[str, ...]) -> None:
    """Remove this stage's earlier files (by pattern) so a row that is gone leaves none."""
    for pattern in patterns:
        for f in folder.glob(pattern):
            f.unlink()


def write_outputs(params: cfg.Params, results: Mapping[str, object],
                  scatter: Mapping[str, Mapping[str, tuple[str, np.ndarray, np.ndarray]]]) -> None:
    """PNG scatter per row and the training loss curve (``evaluation/png``), one CSV per row
    and variable (``evaluation/csv``: target, value; dvc plots), and ``evaluation.md``."""
    from cdae.atomic import atomic_path, ensure_writable_dir
    from stages.report import loss_chart, read_train_log

    root = Path(params.paths.report_dir)
    png_dir = ensure_writable_dir(root / EVALUATION_DIR / "png")
    csv_dir = ensure_writable_dir(root / EVALUATION_DIR / "csv")
    _clear(png_dir, ("*.png",))
    _clear(csv_dir, ("*.csv",))
    pngs: list[str] = []
    limit = params.evaluate.scatter_points
    for key, per_var in scatter.items():
        panels = [(m, kind, t, v) for m, (kind, t, v) in per_var.items()]
        with atomic_path(png_dir / f"{key}.png") as tmp:
            scatter_chart(f"{key} (first seed)", panels).save(tmp, format="PNG")
        pngs.append(f"{key}.png")
        for m, kind, t, v in panels:
            ok = np.flatnonzero(np.isfinite(t) & np.isfinite(v))[:limit]
            lines = ["target,value"] + [f"{t[i]:.6g},{v[i]:.6g}" for i in ok]
            write_text(csv_dir / f"{key}__{m}_{kind.value}.csv", "\n".join(lines) + "\n")
    for what, x_label in SWEEP_AXES.items():
        sweep_dir = ensure_writable_dir(root / EVALUATION_DIR / f"sweep_{what}")
        _clear(sweep_dir, ("*.csv",))
        xs, series, images = sweep_curves(results, what, params.graph.names)
        if not series:
            continue
        title = (f"effectiveness and composition against the {x_label} (do(v) values from the "
                 f"train marginal, first seed, {images} images)")
        with atomic_path(png_dir / f"sweep_{what}.png") as tmp:
            curve_chart(title, x_label, xs, series).save(tmp, format="PNG")
        pngs.append(f"sweep_{what}.png")
        for name, ys in series.items():
            lines = [f"{what},value"] + [f"{x:g},{y:.6g}" for x, y in zip(xs, ys)]
            write_text(sweep_dir / f"{name}.csv", "\n".join(lines) + "\n")
    log_path = Path(params.paths.model_dir) / "train_log.csv"
    if log_path.is_file():
        with atomic_path(png_dir / "train_loss.png") as tmp:
            loss_chart(read_train_log(log_path)).save(tmp, format="PNG")
        pngs.insert(0, "train_loss.png")
    write_text(root / EVALUATION_MD, evaluation_markdown(
        results, pngs, params.graph, check_floors(results, params.evaluate.floors)))


def evaluation_markdown(results: Mapping[str, object], pngs: list[str], graph,
                        floors: Sequence[FloorCheck] = ()) -> str:
    """reports/evaluation.md: the scorecard as tables (the ``floors`` first), the plots, what
    each number means."""
    from stages.report import glance_rows, metric_meaning

    units = {v.name: v.unit for v in graph.variables}
    setup = results.get("setup", {})
    cost = results.get("cost", {})
    assert isinstance(setup, Mapping) and isinstance(cost, Mapping)
    lines = ["# Counterfactual scorecard", "",
             f"{setup.get('rows', '')}. Dataset `{setup.get('dataset')}`, split "
             f"`{setup.get('split')}`, images {setup.get('image_shape')}, guidance "
             f"{setup.get('guidance')}, model step {setup.get('model_step')}. Seeds "
             f"{setup.get('seeds')}: each cell is the mean ± the standard deviation over the "
             f"seeds' intervention draws. Attributes {setup.get('attributes')}; predicted by "
             f"{setup.get('predicted')}.", ""]
    if floors:
        lines += ["## Floors", "",
                  f"{sum(c.met for c in floors)} of {len(floors)} targets of `evaluate.floors` "
                  "met (mean over the seeds' draws).", "",
                  "| metric | floor | model | met |", "|---|---|---|---|"]
        for c in floors:
            lines.append(f"| `{c.metric}` | {md_cell(str(c.floor))} | {c.reading} | "
                         f"{'yes' if c.met else '**no**'} |")
        lines.append("")
    glance = glance_rows(results, graph)
    if glance:
        lines += ["## At a glance", "",
                  "Each do(v) row: v's own effectiveness, every descendant through the learned "
                  "mechanisms (and their error alone), every other variable kept; then the "
                  "cycles. The groups below hold every metric.", "",
                  "| what | metric | model | do nothing | true mechanism |",
                  "|---|---|---|---|---|"]
        for label, group, m in glance:
            row = results[group]
            cells = [mean_std_cell(row, m)] + [  # type: ignore[arg-type]
                mean_std_cell(results[group + b.value], m)  # type: ignore[arg-type]
                if isinstance(results.get(group + b.value), Mapping) else "–"
                for b in (Baseline.DO_NOTHING, Baseline.TRUE_MECHANISM)]
            lines.append(f"| {md_cell(label)} | `{group}.{m}` | " + " | ".join(cells) + " |")
        lines.append("")
    suffixes = tuple(b.value for b in Baseline)
    keys = [k for k, v in results.items() if isinstance(v, Mapping) and
            (k.startswith("do_") or k.startswith("random") or k in ("null", "sample"))
            and not k.endswith(suffixes)]
    keys.sort(key=lambda k: (k != "null", k != "sample", k.endswith("_forced"), k))
    for key in keys:
        cols = [(key, "model")] + [(key + b.value, t) for b, t in (
            (Baseline.DO_NOTHING, "do nothing"), (Baseline.TRUE_MECHANISM, "true mechanism"))
            if isinstance(results.get(key + b.value), Mapping)]
        metrics: list[str] = []
        for k, _ in cols:
            metrics += [m for m in results[k] if not m.endswith("_std")  # type: ignore[union-attr]
                        and m not in metrics and m != "images"]
        lines += [f"## `{key}`", "", "| metric | " + " | ".join(t for _, t in cols)
                  + " | meaning |", "|---" * (len(cols) + 2) + "|"]
        for m in metrics:
            cells = " | ".join(mean_std_cell(results[k], m) for k, _ in cols)  # type: ignore[arg-type]
            lines.append(f"| `{m}` | {cells} | {md_cell(metric_meaning(m, units))} |")
        lines.append("")
    for key, title in (("cycles", "Composition and reversibility"),
                       ("dci", "DCI of the encoder's z"),
                       ("predictors", "The predictors' own test errors (test split)")):
        block = results.get(key)
        if isinstance(block, Mapping):
            lines += [f"## {title}", "", "| metric | value | meaning |", "|---|---|---|"]
            lines += [f"| `{m}` | {mean_std_cell(block, m)} | {md_cell(metric_meaning(m, units))} |"
                      for m in block if not m.endswith("_std")]
            lines.append("")
    for what, x_label in SWEEP_AXES.items():
        xs, series, images = sweep_curves(results, what, graph.names)
        if not series:
            continue
        lines += [f"## Against the {x_label}", "",
                  f"The null composition and each do(v)'s effectiveness (values from the train "
                  f"marginal, first seed) on the first {images} evaluated images, re-scored at "
                  f"each {what} value (`sweep_{what}_<value>` groups; plot `sweep_{what}.png`).",
                  "", f"| {what} | " + " | ".join(n.replace("__", ": ") for n in series) + " |",
                  "|---" * (len(series) + 1) + "|"]
        lines += [f"| {x:g} | " + " | ".join(f"{ys[k]:.3g}" for ys in series.values()) + " |"
                  for k, x in enumerate(xs)]
        lines.append("")
    lines += ["## Plots", ""]
    for name in pngs:
        lines += [f"![{name}]({EVALUATION_DIR}/png/{name})", ""]
    lines += ["Scatter plots: the value measured (or predicted, where the generator cannot "
              "measure) on each counterfactual against its target, first seed; the grey line is "
              "target = value. The same points are in `evaluation/csv/` (`dvc plots show`).", "",
              "## Setup and cost", "", "| key | value |", "|---|---|"]
    for k, v in list(setup.items()) + [(f"cost.{k}", v) for k, v in cost.items()]:
        text = json.dumps(v) if isinstance(v, (list, dict)) else str(v)
        lines.append(f"| {k} | {text.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def format_metrics(r: dict[str, object]) -> str:
    lines = []
    for key in sorted(r):
        vals = r[key]
        if key in ("setup", "cost") or not isinstance(vals, Mapping):
            continue
        lines.append(f"{key}: " + ", ".join(f"{k}={v:.3f}" for k, v in vals.items()
                                            if not k.endswith("_std")))
    return "\n".join(lines)
