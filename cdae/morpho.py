"""Morpho-MNIST morphometrics (thickness, intensity) and perturbations (set_thickness, set_intensity).

Images are 2-D arrays (H, W) holding grey values on the 0..255 scale (uint8 or float).

Measurement follows Morpho-MNIST / DeepSCM (see ``shared/spec/DATA.md`` section 1):

* thickness: upsample by ``scale`` (``pyramid_expand``, cubic), back to 0..255 with the fractional
  part dropped (the reference stores the upsampled image as uint8), binarise with the relative
  threshold ``min + 0.5 * (max - min)`` (``>=``), medial axis with distance (fixed tie-break seed),
  ``thickness = 2 * mean(distance on the skeleton) / scale`` in original pixels;
* intensity: median of the original pixels ``>= min + 0.5 * (max - min)``.

A blank (constant) image has neither: both measure as NaN.

``set_thickness`` dilates or erodes the binarised high-resolution digit by thresholding a Euclidean
distance transform (exact for any real radius, O(pixels)) instead of the reference's integer disk,
then refines the radius once against the scale-4 measurement (see its docstring for the numbers).

Batch helpers (:func:`perturb_batch`, :func:`measure_batch`) spread chunks over processes; every
computation here is deterministic, so results do not depend on the number of workers.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Callable, Sequence

import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import medial_axis as _skimage_medial_axis
from skimage.transform import pyramid_expand, pyramid_reduce

__all__ = [
    "MEASURE_SCALE",
    "SET_THICKNESS_SCALE",
    "THRESHOLD",
    "measure_thickness",
    "measure_intensity",
    "measure",
    "set_thickness",
    "set_intensity",
    "perturb_batch",
    "measure_batch",
]

MEASURE_SCALE = 4
"""Upsampling factor of the thickness measurement (Morpho-MNIST default)."""

SET_THICKNESS_SCALE = 8
"""Upsampling factor :func:`set_thickness` works at (chosen by measurement, see its docstring)."""

SET_THICKNESS_MAX_EVALS = 3
"""Most radius trials (render + re-measure) :func:`set_thickness` makes."""

SET_THICKNESS_TOL = 0.02
""":func:`set_thickness` stops as soon as the measured thickness is this close to the target (px)."""

THRESHOLD = 0.5
"""Relative binarisation threshold: a pixel is foreground when ``>= min + THRESHOLD * (max - min)``."""

MEDIAL_AXIS_SEED = 0
"""Seed of the medial-axis tie-break permutation (passed to ``skimage.morphology.medial_axis``)."""

ProgressFn = Callable[[int], None]


# --------------------------------------------------------------------------------------------
# Medial axis
# --------------------------------------------------------------------------------------------
# ``skimage.morphology.medial_axis`` rebuilds two 512-entry neighbourhood lookup tables with 1,024
# ``ndimage.label`` calls on every call, which is ~75% of its run time on a 112x112 image. We build
# the tables once and run the same algorithm (same ordering, same tie-break permutation, same
# single-pass removal loop), so the result is identical to skimage's; if skimage's compiled loop
# cannot be imported (a future release renames it) we fall back to the public function.

try:  # pragma: no cover - exercised implicitly, the fallback only on other skimage versions
    from skimage.morphology._skeletonize_various_cy import _skeletonize_loop as _sk_loop
except Exception:  # pragma: no cover
    _sk_loop = None

_EIGHT = np.ones((3, 3), dtype=bool)
_TABLES: tuple[np.ndarray, np.ndarray] | None = None


def _pattern(index: int) -> np.ndarray:
    """The 3x3 neighbourhood encoded by ``index`` (bit k = pixel k in row-major order)."""
    return np.array([(index >> k) & 1 for k in range(9)], dtype=bool).reshape(3, 3)


def _tables() -> tuple[np.ndarray, np.ndarray]:
    """(keep table, cornerness table) of the medial-axis thinning, built once per process."""
    global _TABLES
    if _TABLES is None:
        keep = np.zeros(512, dtype=np.uint8)
        corner = np.zeros(512, dtype=np.int64)
        for index in range(512):
            pat = _pattern(index)
            corner[index] = 9 - int(pat.sum())
            if not pat[1, 1]:
                continue
            without = pat.copy()
            without[1, 1] = False
            # keep a pixel whose removal changes the number of 8-connected components,
            # or which has at most one foreground neighbour (an end point)
            n_with = ndi.label(pat, _EIGHT)[1]
            n_without = ndi.label(without, _EIGHT)[1]
            keep[index] = 1 if (n_with != n_without or pat.sum() < 3) else 0
        _TABLES = (keep, corner)
    return _TABLES


def _neighbourhood_index(binary: np.ndarray) -> np.ndarray:
    """Per pixel, the 9-bit code of its 3x3 neighbourhood (outside the image counts as 0)."""
    padded = np.pad(binary.astype(np.int64), 1)
    h, w = binary.shape
    code = np.zeros((h, w), dtype=np.int64)
    bit = 0
    for di in range(3):
        for dj in range(3):
            code += padded[di : di + h, dj : dj + w] << bit
            bit += 1
    return code


def _medial_axis(binary: np.ndarray, seed: int = MEDIAL_AXIS_SEED) -> tuple[np.ndarray, np.ndarray]:
    """``skimage.morphology.medial_axis(binary, return_distance=True, rng=seed)``, faster."""
    binary = np.asarray(binary, dtype=bool)
    if _sk_loop is None:
        return _skimage_medial_axis(binary, return_distance=True, rng=seed)
    keep, corner = _tables()
    distance = ndi.distance_transform_edt(binary)
    corner_score = corner[_neighbourhood_index(binary)]
    ii, jj = np.nonzero(binary)
    ii = np.ascontiguousarray(ii, dtype=np.intp)
    jj = np.ascontiguousarray(jj, dtype=np.intp)
    tiebreak = np.random.default_rng(seed).permutation(np.arange(ii.size))
    order = np.lexsort((tiebreak, corner_score[binary], distance[binary]))
    order = np.ascontiguousarray(order, dtype=np.int32)
    result = np.ascontiguousarray(binary, dtype=np.uint8)
    _sk_loop(result, ii, jj, order, keep)
    return result.astype(bool), distance


# --------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------


def _as_image(image: np.ndarray) -> np.ndarray:
    arr = np.asarray(image, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D image (H, W), got shape {arr.shape}")
    return arr


def _binarise(img: np.ndarray) -> np.ndarray | None:
    """Relative-threshold foreground mask, or None for a constant image."""
    lo, hi = float(img.min()), float(img.max())
    if not hi > lo:
        return None
    return img >= lo + THRESHOLD * (hi - lo)


def _upsample(img: np.ndarray, scale: int) -> np.ndarray:
    """Cubic pyramid upsampling of a 0..255 image, returned on 0..255 as whole grey levels."""
    if scale == 1:
        return img
    up = pyramid_expand(img / 255.0, upscale=scale, order=3)
    # the reference keeps the upsampled image as uint8 (fraction dropped); values are in [0, 1]
    return np.floor(np.clip(up, 0.0, 1.0) * 255.0)


def _thickness_of_binary(binary: np.ndarray, scale: int) -> float:
    if not binary.any():
        return float("nan")
    skeleton, distance = _medial_axis(binary)
    if not skeleton.any():
        return float("nan")
    return float(2.0 * distance[skeleton].mean() / scale)


def measure_thickness(image: np.ndarray, scale: int = MEASURE_SCALE) -> float:
    """Mean stroke thickness in original pixels (Morpho-MNIST rule); NaN for a blank image."""
    img = _as_image(image)
    binary = _binarise(_upsample(img, int(scale)))
    if binary is None:
        return float("nan")
    return _thickness_of_binary(binary, int(scale))


def measure_intensity(image: np.ndarray) -> float:
    """Median grey value (0..255) of the pixels ``>= min + 0.5 (max - min)``; NaN for a blank image."""
    img = _as_image(image)
    mask = _binarise(img)
    if mask is None:
        return float("nan")
    return float(np.median(img[mask]))


def measure(images: np.ndarray, scale: int = MEASURE_SCALE) -> tuple[np.ndarray, np.ndarray]:
    """Thickness and intensity of each image of a (N, H, W) stack, serially; NaN for blank ones."""
    arr = np.asarray(images)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"expected images of shape (N, H, W), got {arr.shape}")
    thickness = np.array([measure_thickness(x, scale) for x in arr], dtype=np.float64)
    intensity = np.array([measure_intensity(x) for x in arr], dtype=np.float64)
    return thickness, intensity


# --------------------------------------------------------------------------------------------
# Perturbations
# --------------------------------------------------------------------------------------------


def _morph_unused(fg_edt: np.ndarray, bg_edt: np.ndarray, rho: float) -> np.ndarray:
    """Binary dilation (rho >= 0) or erosion (rho < 0) by a closed Euclidean disk of radius |rho|.

    ``bg_edt`` is the distance of every pixel to the nearest foreground pixel (0 on it), so the
    dilation is ``bg_edt <= rho``; ``fg_edt`` is the distance to the nearest background pixel,
    so the erosion keeps ``fg_edt > |rho|``.
    """
    if rho >= 0:
        return bg_edt <= rho
    return fg_edt > -rho


def _downsample(binary: np.ndarray, scale: int) -> np.ndarray:
    down = pyramid_reduce(binary.astype(np.float64), downscale=scale, order=3)
    return np.clip(down, 0.0, 1.0) * 255.0


def set_thickness(
    image: np.ndarray,
    target_px: float,
    scale: int = SET_THICKNESS_SCALE,
    max_evals: int = SET_THICKNESS_MAX_EVALS,
    tol: float = SET_THICKNESS_TOL,
) -> np.ndarray:
    """Dilate or erode the digit so its measured thickness becomes ``target_px``; float 0..255.

    DOCSTRING_TABLE
    """
    img = _as_image(image)
    scale = int(scale)
    binary = _binarise(_upsample(img, scale))
    if binary is None:
        return img.copy()
    t0 = measure_thickness(img)
    if not np.isfinite(t0):
        return img.copy()

    edt: dict[bool, np.ndarray] = {}

    def render(rho: float) -> np.ndarray:
        if rho >= 0:
            if False not in edt:
                edt[False] = ndi.distance_transform_edt(~binary)
            mask = edt[False] <= rho
        else:
            mask = fg_edt > -rho
        return _downsample(mask, scale)

    fg_edt = ndi.distance_transform_edt(binary)
    # never erode the stroke away: keep at least its innermost pixels
    rho_min = -(float(fg_edt.max()) - 0.5)
    nominal = 2.0 / scale  # d(thickness)/d(radius) of a straight stroke, px per high-res px
    target = float(target_px)

    rho = max(scale * (target - t0) / 2.0, rho_min)
    best, best_err = None, np.inf
    lo = hi = None  # (rho, t) brackets with t < target and t > target
    prev = None
    for _ in range(max(1, int(max_evals))):
        out = render(rho)
        t = measure_thickness(out)
        err = abs(t - target) if np.isfinite(t) else np.inf
        if best is None or err < best_err:
            best, best_err = out, err
        if not np.isfinite(t) or err <= tol:
            break
        if t < target and (lo is None or rho > lo[0]):
            lo = (rho, t)
        if t > target and (hi is None or rho < hi[0]):
            hi = (rho, t)
        slope = nominal
        if prev is not None and rho != prev[0]:
            secant = (t - prev[1]) / (rho - prev[0])
            if nominal / 4.0 <= secant <= nominal * 4.0:
                slope = secant
        new_rho = max(rho + (target - t) / slope, rho_min)
        if lo is not None and hi is not None and not (lo[0] < new_rho < hi[0]):
            new_rho = 0.5 * (lo[0] + hi[0])
        if abs(new_rho - rho) < 1e-6:
            break
        prev = (rho, t)
        rho = new_rho
    return best


def set_intensity(image: np.ndarray, intensity: float) -> np.ndarray:
    """Scale the image so its median-rule intensity equals ``intensity``; float, clipped to 0..255.

    A blank image (no measurable intensity) is returned unchanged.
    """
    img = _as_image(image)
    current = measure_intensity(img)
    if not np.isfinite(current) or current <= 0:
        return np.clip(img, 0.0, 255.0)
    return np.clip(img * (float(intensity) / current), 0.0, 255.0)


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Batch helpers
# --------------------------------------------------------------------------------------------


def _perturb_chunk(base: np.ndarray, thickness: np.ndarray, intensity: np.ndarray) -> np.ndarray:
    out = np.empty(base.shape, dtype=np.uint8)
    for k in range(base.shape[0]):
        out[k] = _to_uint8(set_intensity(set_thickness(base[k], thickness[k]), intensity[k]))
    return out


def _measure_chunk(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return measure(images)


def _chunks(n: int, workers: int) -> list[slice]:
    size = max(8, min(256, -(-n // (workers * 8))))
    return [slice(a, min(a + size, n)) for a in range(0, n, size)]


def _resolve_workers(workers: int | None) -> int:
    if workers is None:
        workers = os.cpu_count() or 1
    workers = int(workers)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    return workers


def _run_chunked(fn, arrays: Sequence[np.ndarray], n: int, workers: int | None,
                 progress: ProgressFn | None) -> list:
    """Apply ``fn`` to row chunks of ``arrays``; results in chunk order. ``progress(n_done)``."""
    workers = _resolve_workers(workers)
    if n == 0:
        return []
    slices = _chunks(n, workers)
    results: list = [None] * len(slices)
    done = 0
    if workers == 1 or len(slices) == 1:
        for k, sl in enumerate(slices):
            results[k] = fn(*(a[sl] for a in arrays))
            done += sl.stop - sl.start
            if progress is not None:
                progress(done)
        return results
    with ProcessPoolExecutor(max_workers=min(workers, len(slices))) as pool:
        futures = {pool.submit(fn, *(a[sl] for a in arrays)): k for k, sl in enumerate(slices)}
        for fut in as_completed(futures):
            k = futures[fut]
            results[k] = fut.result()
            done += slices[k].stop - slices[k].start
            if progress is not None:
                progress(done)
    return results


def perturb_batch(
    base_images: np.ndarray,
    thickness: np.ndarray,
    intensity: np.ndarray,
    workers: int | None = None,
    progress: ProgressFn | None = None,
) -> np.ndarray:
    """``round(set_intensity(set_thickness(base, t), i))`` per image, as uint8 (N, H, W).

    ``workers``: processes (default ``os.cpu_count()``; 1 = serial in this process).
    ``progress``: called with the cumulative number of images done after each chunk.
    The output does not depend on ``workers``.
    """
    base = np.asarray(base_images)
    if base.ndim != 3:
        raise ValueError(f"base_images must be (N, H, W), got {base.shape}")
    n = base.shape[0]
    t = np.broadcast_to(np.asarray(thickness, dtype=np.float64), (n,))
    i = np.broadcast_to(np.asarray(intensity, dtype=np.float64), (n,))
    parts = _run_chunked(_perturb_chunk, (base, t, i), n, workers, progress)
    if not parts:
        return np.zeros(base.shape, dtype=np.uint8)
    return np.concatenate(parts, axis=0)


def measure_batch(
    images: np.ndarray,
    workers: int | None = None,
    progress: ProgressFn | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`measure` over (N, H, W) in parallel chunks -> (thickness (N,), intensity (N,))."""
    arr = np.asarray(images)
    if arr.ndim != 3:
        raise ValueError(f"images must be (N, H, W), got {arr.shape}")
    parts = _run_chunked(_measure_chunk, (arr,), arr.shape[0], workers, progress)
    if not parts:
        return np.zeros(0), np.zeros(0)
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
