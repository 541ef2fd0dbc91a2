"""Morpho-MNIST morphometrics and perturbations (cdae.morpho), against known shapes and the
reference implementation's numbers on the real t10k split in ../shared/data/morphomnist."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import numpy as np
import pytest
from skimage.morphology import medial_axis
from skimage.transform import pyramid_expand, pyramid_reduce

from cdae import morpho

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "morphomnist"
IMAGES = SHARED / "t10k-images-idx3-ubyte.gz"

needs_shared = pytest.mark.skipif(
    not IMAGES.is_file(), reason=f"shared Morpho-MNIST data not found at {SHARED}"
)


def _t10k(n: int) -> np.ndarray:
    raw = gzip.open(IMAGES).read()
    return np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28)[:n]


def _csv(name: str) -> dict[str, np.ndarray]:
    with open(SHARED / name, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {k: np.array([float(r[k]) for r in rows]) for k in rows[0]}


def _ring(width: float, inner: float = 6.0) -> np.ndarray:
    """Anti-aliased annulus (no stroke ends, so its medial axis is a clean circle)."""
    yy, xx = np.mgrid[:28, :28]
    rr = np.hypot(yy - 13.5, xx - 13.5)
    return np.clip(np.minimum(rr - (inner - 0.5), (inner + width + 0.5) - rr), 0, 1) * 255.0


# ------------------------------------------------------------------ parity with the reference
@needs_shared
def test_measure_matches_reference_on_real_digits():
    n = 500
    images = _t10k(n)
    ref = _csv("t10k-measured-reference.csv")
    assert np.array_equal(ref["index"][:n], np.arange(n))
    thickness, intensity = morpho.measure(images)
    mad_t = np.mean(np.abs(thickness - ref["thickness"][:n]))
    mad_i = np.mean(np.abs(intensity - ref["intensity"][:n]))
    assert mad_t < 0.02, mad_t
    assert mad_i < 0.5, mad_i


@needs_shared
def test_set_thickness_at_least_as_accurate_as_reference():
    n = 100
    ref = _csv("t10k-set-thickness-reference.csv")
    idx = ref["index"][:n].astype(int)
    target = ref["target_thickness"][:n]
    images = _t10k(int(idx.max()) + 1)
    ours = np.array([
        morpho.measure_thickness(np.rint(morpho.set_thickness(images[k], t)).astype(np.uint8))
        for k, t in zip(idx, target)
    ])
    ours_mae = np.mean(np.abs(ours - target))
    ref_mae = np.mean(np.abs(ref["thickness_after"][:n] - target))
    assert ours_mae <= ref_mae, (ours_mae, ref_mae)


@needs_shared
def test_fast_medial_axis_is_identical_to_skimage():
    for img in _t10k(20):
        binary = morpho._binarise(morpho._upsample(img.astype(float), 4))
        skel, dist = morpho._medial_axis(binary)
        skel_ref, dist_ref = medial_axis(binary, return_distance=True, rng=morpho.MEDIAL_AXIS_SEED)
        assert np.array_equal(skel, skel_ref)
        assert np.array_equal(dist, dist_ref)


def _test_images(n: int) -> np.ndarray:
    if IMAGES.is_file():
        return _t10k(n)
    rng = np.random.default_rng(0)
    return np.stack([np.rint(_ring(rng.uniform(1.5, 4), rng.uniform(4, 7))).astype(np.uint8) for _ in range(n)])


@pytest.mark.parametrize("scale", [4, 8, 16])
def test_linear_pyramid_operators_match_skimage(scale):
    for img in _test_images(10):
        x = img / 255.0
        ref = pyramid_expand(x, upscale=scale, order=3)
        ours = morpho._pyramid_expand01(x, scale)
        assert np.abs(ours - ref).max() < 1e-12
        assert np.array_equal(np.floor(np.clip(ours, 0, 1) * 255), np.floor(np.clip(ref, 0, 1) * 255))
        mask = morpho._binarise(morpho._upsample(img.astype(float), scale))
        down = morpho._downsample(mask, scale)
        ref_down = np.clip(pyramid_reduce(mask.astype(float), downscale=scale, order=3), 0, 1) * 255
        assert down.shape == img.shape
        assert np.abs(down - ref_down).max() < 2.5
        assert np.abs(down - ref_down).mean() < 0.01


# ------------------------------------------------------------------ known shapes
@pytest.mark.parametrize("width", [2.0, 3.0, 4.0, 5.0])
def test_thickness_of_ring_of_known_width(width):
    assert morpho.measure_thickness(_ring(width)) == pytest.approx(width, abs=0.15)


def test_thickness_of_straight_bar():
    img = np.zeros((28, 28))
    img[2:26, 12:15] = 255  # 3 px wide, 24 px long
    assert morpho.measure_thickness(img) == pytest.approx(3.0, abs=0.2)
    assert morpho.measure_thickness(img.astype(np.uint8)) == morpho.measure_thickness(img)


def test_intensity_median_rule():
    img = np.zeros((28, 28))
    img[5:10, 5:10] = 200
    img[5:10, 10:12] = 101  # threshold is 0 + 0.5 * (200 - 0) = 100: counted
    img[20, 20] = 99  # below the threshold: ignored
    expected = np.median(np.r_[np.full(25, 200.0), np.full(10, 101.0)])
    assert morpho.measure_intensity(img) == expected


@pytest.mark.parametrize("target", [1.5, 2.5, 4.0])
def test_set_thickness_on_ring(target):
    out = morpho.set_thickness(_ring(3.0), target)
    assert out.shape == (28, 28) and out.min() >= 0 and out.max() <= 255
    assert morpho.measure_thickness(np.rint(out)) == pytest.approx(target, abs=0.1)


def test_set_thickness_is_monotone_in_target():
    img = _ring(3.0)
    ts = [morpho.measure_thickness(morpho.set_thickness(img, t)) for t in (1.2, 2.0, 3.0, 4.5, 6.0)]
    assert all(a < b for a, b in zip(ts, ts[1:])), ts


def test_extreme_erosion_keeps_the_stroke():
    out = morpho.set_thickness(_ring(5.0), 0.1)
    assert out.max() > 0 and np.isfinite(morpho.measure_thickness(out))


def test_set_intensity():
    img = _ring(3.0) * 0.6
    for target in (80.0, 150.0, 240.0):
        out = morpho.set_intensity(img, target)
        assert morpho.measure_intensity(out) == pytest.approx(target, abs=1e-6)
        assert out.min() >= 0 and out.max() <= 255
    assert morpho.set_intensity(img, 1000.0).max() == 255.0


def test_non_finite_targets_are_refused():
    with pytest.raises(ValueError):
        morpho.set_thickness(_ring(3.0), float("nan"))
    with pytest.raises(ValueError):
        morpho.set_intensity(_ring(3.0), float("inf"))


def test_blank_image_does_not_crash():
    blank = np.zeros((28, 28), np.uint8)
    assert np.isnan(morpho.measure_thickness(blank))
    assert np.isnan(morpho.measure_intensity(blank))
    t, i = morpho.measure(np.stack([blank, np.full((28, 28), 7, np.uint8)]))
    assert np.isnan(t).all() and np.isnan(i).all()
    assert np.array_equal(morpho.set_thickness(blank, 3.0), blank)
    assert np.array_equal(morpho.set_intensity(blank, 100.0), blank)
    out = morpho.perturb_batch(blank[None], [3.0], [100.0], workers=1)
    assert out.dtype == np.uint8 and not out.any()


# ------------------------------------------------------------------ batch helpers
def test_perturb_batch_independent_of_workers_and_reports_progress():
    base = _test_images(24)
    rng = np.random.default_rng(1)
    t = rng.uniform(1, 5, 24)
    i = rng.uniform(70, 250, 24)
    seen: list[int] = []
    serial = morpho.perturb_batch(base, t, i, workers=1, progress=seen.append)
    assert serial.dtype == np.uint8 and serial.shape == base.shape
    assert seen and sum(seen) == 24 and len(seen) > 1
    seen2: list[int] = []
    parallel = morpho.perturb_batch(base, t, i, workers=2, progress=seen2.append)
    assert np.array_equal(serial, parallel)
    assert sum(seen2) == 24
    expected0 = np.clip(np.rint(morpho.set_intensity(morpho.set_thickness(base[0], t[0]), i[0])), 0, 255)
    assert np.array_equal(serial[0], expected0.astype(np.uint8))
    mt, mi = morpho.measure(serial)
    assert np.mean(np.abs(mt - t)) < 0.15
    assert np.mean(np.abs(mi - i)) < 1.5


def test_measure_batch_independent_of_workers():
    images = _test_images(40)
    seen: list[int] = []
    a = morpho.measure_batch(images, workers=1, progress=seen.append)
    assert sum(seen) == 40
    b = morpho.measure_batch(images, workers=2)
    c = morpho.measure(images)
    for x, y, z in zip(a, b, c):
        np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(x, z)
    empty = morpho.measure_batch(np.zeros((0, 28, 28), np.uint8))
    assert empty[0].shape == (0,)


# ------------------------------------------------------------------ windowed computations
@needs_shared
def test_thickness_on_the_digit_window_equals_the_full_canvas():
    """measure_thickness runs the medial axis on the digit's bounding box grown by one pixel:
    the same skeleton and distances as skimage's medial_axis on the whole upsampled canvas."""
    for img in _t10k(30):
        binary = morpho._binarise(morpho._upsample(img.astype(float), morpho.MEASURE_SCALE))
        skel, dist = medial_axis(binary, return_distance=True, rng=morpho.MEDIAL_AXIS_SEED)
        full = 2.0 * dist[skel].mean() / morpho.MEASURE_SCALE
        assert morpho.measure_thickness(img) == full


def _set_thickness_full_canvas(image, target, scale=morpho.SET_THICKNESS_SCALE):
    """set_thickness's first trial computed on the whole canvas (no windows)."""
    from scipy import ndimage as ndi

    binary = morpho._binarise(morpho._upsample(image.astype(float), scale))
    rho = scale * (target - morpho.measure_thickness(image)) / 2.0
    if rho >= 0:
        mask = ndi.distance_transform_edt(~binary) <= rho
    else:
        rho = max(rho, 0.5 - float(ndi.distance_transform_edt(binary).max()))
        mask = ndi.distance_transform_edt(binary) > -rho
    return morpho._downsample(mask, scale)


@needs_shared
@pytest.mark.parametrize("target", [0.3, 1.0, 2.5, 5.0, 8.0])
def test_set_thickness_window_equals_full_canvas(target):
    for img in _t10k(15):
        ours = morpho.set_thickness(img, target, max_evals=1)
        full = _set_thickness_full_canvas(img, target)
        assert np.abs(ours - full).max() < 1e-9


def test_perturb_batch_fills_one_output_in_chunk_order():
    base = _test_images(40)
    t = np.linspace(1.5, 4.5, 40)
    i = np.linspace(80, 250, 40)
    for workers in (1, 2):
        out = morpho.perturb_batch(base, t, i, workers=workers)
        assert out.dtype == np.uint8 and out.shape == base.shape and out.flags.c_contiguous
        for k in (0, 17, 39):
            expected = morpho._to_uint8(morpho.set_intensity(morpho.set_thickness(base[k], t[k]),
                                                             i[k]))
            assert np.array_equal(out[k], expected)
