"""Counterfactual metrics and the scoring protocol (EVALUATION.md).

Images are uint8 0..255; pixel errors in those units; attribute errors in raw label units.
Everything here is numpy (DCI uses scikit-learn) and knows nothing of models or files: the
``evaluate`` stage feeds it.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:
    from cdae.config import Floor


def _finite_differences(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a - b (flattened, float64) over the pairs where both are finite."""
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    ok = np.isfinite(a) & np.isfinite(b)
    return a[ok] - b[ok]


def mae(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute error over finite pairs (NaN-safe: unmeasurable images are skipped)."""
    d = _finite_differences(a, b)
    return float(np.abs(d).mean()) if d.size else float("nan")


def bias(a: np.ndarray, b: np.ndarray) -> float:
    """Mean signed error a - b over finite pairs (NaN-safe): which way an error leans."""
    d = _finite_differences(a, b)
    return float(d.mean()) if d.size else float("nan")


def accuracy(pred: np.ndarray, target: np.ndarray) -> float:
    """Share of equal classes over pairs with a known target and a prediction (class >= 0)."""
    p = np.asarray(pred, np.float64).ravel()
    t = np.asarray(target, np.float64).ravel()
    ok = np.isfinite(p) & np.isfinite(t) & (p >= 0)
    return float(np.mean(np.round(p[ok]) == np.round(t[ok]))) if ok.any() else float("nan")


def l1(x: np.ndarray, y: np.ndarray) -> float:
    """Mean absolute pixel difference in 0..255 (composition, distance to ground truth)."""
    return float(np.abs(x.astype(np.float64) - y.astype(np.float64)).mean())


def psnr(x: np.ndarray, y: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB (peak 255) over all images; capped at 100 (identical)."""
    mse = float(np.square(x.astype(np.float64) - y.astype(np.float64)).mean())
    return 100.0 if mse == 0 else min(100.0, float(10.0 * np.log10(255.0 ** 2 / mse)))


# ---------------------------------------------------------------------------- support

#: train neighbours (nearest in parent values) a counterfactual value is ranked among
SUPPORT_NEIGHBOURS = 200
#: a value ranked below this share or above 1 - it is off the train support (central 98%)
SUPPORT_TAIL = 0.01


def conditional_ranks(train_values: np.ndarray, train_parents: np.ndarray, values: np.ndarray,
                      parents: np.ndarray, categorical: Sequence[bool] = (),
                      scale: np.ndarray | None = None,
                      neighbours: int = SUPPORT_NEIGHBOURS) -> np.ndarray:
    """Where each value sits in the train distribution of its variable given its parents.

    train_values (M,) and train_parents (M, P) are one variable and its parents on the train
    split; values (N,) and parents (N, P) the counterfactual targets. The rank (N,) in [0, 1] of
    values[i] among the train values of the ``neighbours`` train examples whose parents are
    nearest to parents[i] (Euclidean over continuous parents divided by ``scale`` (P,), default
    their train std; a ``categorical`` parent must match exactly); with P = 0 (a root) among all
    train values. Ties count half. 0.5 = the conditional median; near 0 or 1 = a combination
    the training data hardly holds (e.g. a thin stroke set to the brightness of thick ones).
    NaN where the value or a parent is unknown, or no train example matches.
    """
    tv = np.asarray(train_values, np.float64)
    tp = np.asarray(train_parents, np.float64).reshape(tv.shape[0], -1)
    v = np.asarray(values, np.float64)
    qp = np.asarray(parents, np.float64).reshape(v.shape[0], -1)
    keep = np.isfinite(tv) & np.isfinite(tp).all(1)
    tv, tp = tv[keep], tp[keep]
    cat = np.zeros(tp.shape[1], bool)
    cat[:len(categorical)] = np.asarray(categorical, bool)[:tp.shape[1]]
    if scale is None:
        scale = tp.std(0) if tp.shape[0] else np.ones(tp.shape[1])
    scale = np.where(np.asarray(scale, np.float64) > 0, scale, 1.0)
    out = np.full(v.shape[0], np.nan)
    for i in range(v.shape[0]):
        if not (np.isfinite(v[i]) and np.isfinite(qp[i]).all()):
            continue
        pool = tv
        if tp.shape[1]:
            same = (tp[:, cat] == qp[i, cat]).all(1)
            d = np.square((tp[:, ~cat] - qp[i, ~cat]) / scale[~cat]).sum(1)
            d = np.where(same, d, np.inf)
            k = min(neighbours, int(same.sum()))
            if k == 0:
                continue
            pool = tv[np.argpartition(d, k - 1)[:k]]
        if pool.size:
            out[i] = 0.5 * (np.mean(pool < v[i]) + np.mean(pool <= v[i]))
    return out


def variable_ranks(graph, name: str, train_labels: np.ndarray, label_std: np.ndarray,
                   labels: np.ndarray) -> np.ndarray:
    """:func:`conditional_ranks` of variable ``name`` of a causal graph: labels (N, K) raw (the
    counterfactual values of every variable, in graph order) ranked among train_labels (M, K)
    given the variable's parents, continuous parents scaled by ``label_std`` (K,)."""
    j = graph.index(name)
    cols = [graph.index(p) for p in graph.parents(name)]
    return conditional_ranks(train_labels[:, j], train_labels[:, cols], labels[:, j],
                             labels[:, cols],
                             categorical=[graph.variable(p).is_categorical
                                          for p in graph.parents(name)],
                             scale=np.asarray(label_std, np.float64)[cols])


def off_support(ranks: np.ndarray, tail: float = SUPPORT_TAIL) -> np.ndarray:
    """bool (N,): the rank is known and outside [tail, 1 - tail]."""
    r = np.asarray(ranks, np.float64)
    return np.isfinite(r) & ((r < tail) | (r > 1.0 - tail))


# ---------------------------------------------------------------------------- intervention draws

class Protocol(str, enum.Enum):
    """How intervention values are drawn (EVALUATION.md, "Interventions used for scoring")."""

    MARGINAL = "marginal"  # a value from the train marginal of the variable
    FORCED = "forced"  # a train value from another decile bin (continuous) / another class


def decile_bins(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin 0..len(edges)-2 of each value for the bin ``edges`` (ascending, ends included)."""
    return np.clip(np.searchsorted(edges[1:-1], values, side="right"), 0, edges.size - 2)


def draw_values(pool: np.ndarray, factual: np.ndarray, protocol: Protocol, categorical: bool,
                rng: np.random.Generator) -> np.ndarray:
    """One intervention value per image (N,) from the train values ``pool``.

    MARGINAL: uniform over ``pool`` (the train marginal). FORCED: uniform over the pool values
    in another decile bin of the pool than the factual value (continuous), or of another class
    (categorical); where the factual value is unknown (NaN), from the whole pool. A bin with
    no other values (a constant pool) falls back to the whole pool.
    """
    pool = np.asarray(pool, np.float64)
    pool = pool[np.isfinite(pool)]
    factual = np.asarray(factual, np.float64)
    n = factual.size
    if pool.size == 0:
        raise ValueError("no train values to draw interventions from")
    if protocol is Protocol.MARGINAL:
        return rng.choice(pool, size=n)
    if categorical:
        pool_key = np.round(pool)
        fact_key = np.where(np.isfinite(factual), np.round(factual), np.nan)
    else:
        edges = np.quantile(pool, np.linspace(0, 1, 11))
        pool_key = decile_bins(pool, edges).astype(np.float64)
        fact_key = np.where(np.isfinite(factual), decile_bins(np.nan_to_num(factual), edges),
                            np.nan)
    out = np.empty(n, np.float64)
    for key in np.unique(fact_key[np.isfinite(fact_key)]):
        rows = np.flatnonzero(fact_key == key)
        others = pool[pool_key != key]
        out[rows] = rng.choice(others if others.size else pool, size=rows.size)
    unknown = np.flatnonzero(~np.isfinite(fact_key))
    out[unknown] = rng.choice(pool, size=unknown.size)
    return out


def random_masks(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """(n, k) bool: a fair coin per variable and image, at least one variable per image (an
    all-false row gets one variable chosen uniformly)."""
    masks = rng.random((n, k)) < 0.5
    empty = np.flatnonzero(~masks.any(1))
    masks[empty, rng.integers(0, k, size=empty.size)] = True
    return masks


def groups(masks: np.ndarray) -> list[tuple[tuple[int, ...], np.ndarray]]:
    """Images grouped by their intervention set: [(variable indices, image rows), ...]."""
    keys = [tuple(np.flatnonzero(m)) for m in masks]
    out: dict[tuple[int, ...], list[int]] = {}
    for i, key in enumerate(keys):
        out.setdefault(key, []).append(i)
    return [(key, np.asarray(rows)) for key, rows in sorted(out.items())]


# ---------------------------------------------------------------------------- cycles

class Phase(str, enum.Enum):
    """What one step of a cycle chain applies to an image."""

    NULL = "null"  # the null intervention (composition)
    FORWARD = "forward"  # do(pa*) on an image with parents pa (reversibility, first half)
    BACKWARD = "backward"  # do(pa) on an image with parents pa* (second half)


def cycles(x: np.ndarray, step: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray],
           m_values: Sequence[int], c_values: Sequence[int],
           sets: Sequence[str] = ("all",)) -> tuple[dict[int, float],
                                                    dict[str, dict[int, float]]]:
    """Composition and reversibility (Monteiro et al. 2023) of the images ``x``, as L1 in
    0..255 to ``x``: the null intervention applied m times (each m of ``m_values``), and c
    cycles of do(pa*) then do(pa) (each c of ``c_values``), once per intervention set named in
    ``sets`` (which parents the cycle changes; the caller's ``step`` knows them). All chains run
    side by side: ``step(images, phases, chain)`` applies one full abduct-act-predict to a batch
    whose images carry their :class:`Phase` and their set's name (``""`` for the null chain),
    so each round is one batch. Returns ({m: L1}, {set: {c: L1}})."""
    n, k = x.shape[0], len(sets)
    m_max, r_max = max(m_values), 2 * max(c_values)
    comp, rev = x, np.concatenate([x] * k)
    rev_chain = np.repeat(np.asarray(sets, dtype=object), n)
    comp_out: dict[int, float] = {}
    rev_out: dict[str, dict[int, float]] = {name: {} for name in sets}
    for r in range(1, max(m_max, r_max) + 1):
        parts, phases, chain = [], [], []
        if r <= m_max:
            parts.append(comp)
            phases += [Phase.NULL] * n
            chain.append(np.full(n, "", dtype=object))
        if r <= r_max:
            parts.append(rev)
            phases += [Phase.FORWARD if r % 2 else Phase.BACKWARD] * (n * k)
            chain.append(rev_chain)
        out = step(np.concatenate(parts), np.asarray(phases, dtype=object),
                   np.concatenate(chain))
        if r <= m_max:
            comp, out = out[:n], out[n:]
            if r in m_values:
                comp_out[r] = l1(x, comp)
        if r <= r_max:
            rev = out
            if r % 2 == 0 and r // 2 in c_values:
                for i, name in enumerate(sets):
                    rev_out[name][r // 2] = l1(x, rev[i * n:(i + 1) * n])
    return comp_out, rev_out


# ---------------------------------------------------------------------------- realism

def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N, F) and (M, F):
    |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)). 0 for identical sets; it grows with
    a shift of the features. Few samples bias it upwards: compare numbers from equal N."""
    import warnings

    from scipy import linalg

    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    mu = a.mean(0) - b.mean(0)
    sa = np.atleast_2d(np.cov(a, rowvar=False))
    sb = np.atleast_2d(np.cov(b, rowvar=False))
    with warnings.catch_warnings():  # scipy warns (only) when the product is singular
        warnings.filterwarnings("error", category=linalg.LinAlgWarning)
        try:
            covmean = linalg.sqrtm(sa @ sb)
        except linalg.LinAlgWarning:  # handled below: the root is recomputed regularised
            covmean = None
    if covmean is None or not np.isfinite(covmean).all():
        # a singular product (fewer samples than features): regularise as the FID reference does
        eps = np.eye(sa.shape[0]) * 1e-6
        covmean = linalg.sqrtm((sa + eps) @ (sb + eps))
    covmean = np.real(covmean)
    fd = float(mu @ mu + np.trace(sa) + np.trace(sb) - 2.0 * np.trace(covmean))
    return max(fd, 0.0)


# ---------------------------------------------------------------------------- DCI

def _entropy(p: np.ndarray, base: int) -> np.ndarray:
    """Entropy of each row of ``p`` (rows sum to 1) in ``base``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.where(p > 0, np.log(p), 0.0)
    return -(p * logs).sum(1) / np.log(base) if base > 1 else np.zeros(p.shape[0])


def dci_scores(importance: np.ndarray) -> dict[str, float]:
    """Disentanglement and completeness (Eastwood & Williams 2018) of an importance matrix
    R (D codes, K factors): D = sum_i rho_i (1 - H_K(P_i.)), rho_i = sum_j R_ij / sum R;
    C = mean_j (1 - H_D(P_.j)). 1 = each code serves one factor / each factor one code."""
    r = np.abs(np.asarray(importance, np.float64))
    d, k = r.shape
    total = r.sum()
    if total <= 0:
        return {"disentanglement": 0.0, "completeness": 0.0}
    rows = r.sum(1, keepdims=True)
    p_code = np.divide(r, rows, out=np.full_like(r, 1.0 / k), where=rows > 0)
    dis = 1.0 - _entropy(p_code, k)
    rho = r.sum(1) / total
    cols = r.sum(0, keepdims=True)
    p_fac = np.divide(r, cols, out=np.full_like(r, 1.0 / d), where=cols > 0)
    comp = 1.0 - _entropy(p_fac.T, d)
    return {"disentanglement": float((rho * dis).sum()), "completeness": float(comp.mean())}


def dci(codes_train: np.ndarray, factors_train: np.ndarray, codes_test: np.ndarray,
        factors_test: np.ndarray, categorical: Sequence[bool], names: Sequence[str], *,
        blocks: Sequence[Sequence[int]] | None = None, trees: int = 50,
        seed: int = 0) -> dict[str, float]:
    """DCI of codes (N, D) for factors (N, K): one gradient-boosted model per factor
    (regressor for continuous, classifier for categorical factors; sklearn), feature
    importances as R. Returns disentanglement and completeness per code dimension and, with
    ``blocks`` (the code dims of each block), per block (R summed over each block's dims);
    informativeness per factor on the test codes: MAE (raw units) and R^2, or accuracy.
    Rows with a missing factor are left out of that factor's fit and score."""
    from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor

    k = factors_train.shape[1]
    imp = np.zeros((codes_train.shape[1], k))
    out: dict[str, float] = {}
    for j in range(k):
        ok = np.isfinite(factors_train[:, j])
        ok_t = np.isfinite(factors_test[:, j])
        y, yt = factors_train[ok, j], factors_test[ok_t, j]
        if categorical[j]:
            model = GradientBoostingClassifier(n_estimators=trees, max_depth=3,
                                               random_state=seed)
            model.fit(codes_train[ok], y.astype(int))
            out[f"informativeness_{names[j]}_accuracy"] = float(
                np.mean(model.predict(codes_test[ok_t]) == yt.astype(int)))
        else:
            model = GradientBoostingRegressor(n_estimators=trees, max_depth=3,
                                              random_state=seed)
            model.fit(codes_train[ok], y)
            pred = model.predict(codes_test[ok_t])
            out[f"informativeness_{names[j]}_mae"] = mae(pred, yt)
            var = float(np.var(yt))
            out[f"informativeness_{names[j]}_r2"] = (
                float(1.0 - np.mean((pred - yt) ** 2) / var) if var > 0 else float("nan"))
        imp[:, j] = model.feature_importances_
    per_dim = dci_scores(imp)
    out.update({f"{key}_per_dimension": v for key, v in per_dim.items()})
    if blocks is not None:
        block_imp = np.stack([imp[list(b)].sum(0) for b in blocks])
        out.update({f"{key}_per_block": v for key, v in dci_scores(block_imp).items()})
    return out


# ---------------------------------------------------------------------------- summaries

def mean_std(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Per key: the mean over seeds (``key``) and, with several seeds, the sample standard
    deviation (``key_std``); keys missing from some seeds are averaged over the others."""
    out: dict[str, float] = {}
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    for key in keys:
        vals = np.asarray([r[key] for r in rows if key in r], np.float64)
        finite = vals[np.isfinite(vals)]
        out[key] = float(finite.mean()) if finite.size else float("nan")
        if len(rows) > 1:
            out[f"{key}_std"] = float(finite.std(ddof=1)) if finite.size > 1 else float("nan")
    return out


# what may differ between scorecards that `combine_scorecards` averages: the dataset's path, the
# notes, the draws' seed, the training's seed and the floors (targets read off the numbers, not
# how they were measured); any other setup key is the protocol
FREE_SETUP_KEYS = frozenset({"dataset", "notes", "seed", "train_seed", "floors"})
NOT_SCORES = frozenset({"setup", "cost", "floors"})  # metrics.json groups that hold no scores


def setup_difference(setups: Sequence[Mapping[str, Any]]) -> tuple[str, int, Any, Any] | None:
    """The first protocol setting (a ``setup`` key outside :data:`FREE_SETUP_KEYS`) on which
    scorecard k > 0 differs from scorecard 0: (key, k, value in 0, value in k); None if none."""
    first = setups[0]
    for k, other in enumerate(setups[1:], start=1):
        for key in sorted(set(first) | set(other)):
            if key not in FREE_SETUP_KEYS and first.get(key) != other.get(key):
                return key, k, first.get(key), other.get(key)
    return None


@dataclass(frozen=True)
class Combined:
    """Several scorecards (one per training) as one: ``results`` has metrics.json's nesting,
    each score the mean over the scorecards and ``<metric>_std`` their sample standard deviation
    (the spread between trainings); ``values[group][metric]`` holds each scorecard's number."""

    results: dict[str, Any]
    values: dict[str, dict[str, list[float]]]
    left_out: list[str]  # GROUP.METRIC present in some scorecards only


def _score(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def combine_scorecards(runs: Sequence[Mapping[str, Any]]) -> Combined:
    """Mean and sample standard deviation over ``runs`` (two or more metrics.json dicts of one
    protocol) of every score they all hold: each group's numbers that are not a draw spread
    (``*_std``). A NaN in one run is left out of that mean (as :func:`mean_std` does)."""
    if len(runs) < 2:
        raise ValueError("combine_scorecards needs two or more scorecards")
    results: dict[str, Any] = {}
    values: dict[str, dict[str, list[float]]] = {}
    left_out: list[str] = []
    groups = [g for g, row in runs[0].items() if isinstance(row, Mapping) and g not in NOT_SCORES]
    for run in runs[1:]:
        left_out += [f"{g}.*" for g, row in run.items() if isinstance(row, Mapping)
                     and g not in NOT_SCORES and g not in groups]
    for g in groups:
        rows = [run.get(g) for run in runs]
        if not all(isinstance(r, Mapping) for r in rows):
            left_out.append(f"{g}.*")
            continue
        names: list[str] = []
        for r in rows:
            names += [m for m, v in r.items() if _score(v) and not m.endswith("_std")
                      and m not in names]
        common = [m for m in names if all(_score(r.get(m)) for r in rows)]
        left_out += [f"{g}.{m}" for m in names if m not in common]
        if common:
            results[g] = mean_std([{m: float(r[m]) for m in common} for r in rows])
            values[g] = {m: [float(r[m]) for r in rows] for m in common}
    return Combined(results, values, left_out)


@dataclass(frozen=True)
class FloorCheck:
    """One target of ``evaluate.floors`` against the scorecard."""

    metric: str  # ROW.METRIC of metrics.json
    floor: Floor
    value: float | None  # None: the scorecard has no finite number there

    @property
    def met(self) -> bool:
        return self.value is not None and self.floor.met(self.value)

    @property
    def reading(self) -> str:
        """The value as the floors tables print it."""
        return "no such number" if self.value is None else f"{self.value:.3g}"


def check_floors(results: Mapping[str, Any],
                 floors: Mapping[str, str | Floor]) -> list[FloorCheck]:
    """Each floor ``ROW.METRIC -> Floor`` (or its text, ``evaluate.floors``: ``"<= 0.2"``) read
    off ``results`` (metrics.json's nesting); a missing or non-finite number is not met."""
    from cdae.config import Floor

    out = []
    for key, given in floors.items():
        floor = given if isinstance(given, Floor) else Floor.parse(given)
        row, _, metric = key.partition(".")
        group = results.get(row)
        v = group.get(metric) if isinstance(group, Mapping) else None
        finite = _score(v) and math.isfinite(v)
        out.append(FloorCheck(key, floor, float(v) if finite else None))  # type: ignore[arg-type]
    return out
