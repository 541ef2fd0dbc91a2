"""Benchmark cdae.morpho on real Morpho-MNIST digits (../shared/data/morphomnist, t10k split).

Usage (from the repo root):
    python -m benchmarks.bench_morpho [N]                # speed run on N digits (default 2000)
        [--workers W]      processes for the batch run (default: all cores)
        [--ref-n M]        digits for the single-core set_thickness comparison (default min(N, 100))
        [--scales 4,8,16]  also time/score our set_thickness at these scales on the reference pairs
    python -m benchmarks.bench_morpho --parity           # measure() on all 10,000 vs the reference

Speed run:
  1. perturb_batch (set_thickness + set_intensity, uint8) and measure_batch on N digits with all
     cores; wall seconds per image, extrapolated to 70,000 images (MNIST train + test); the MAE of
     the measured thickness / intensity of the output to the requested values.
  2. On the first M of those digits and targets, ONE core: our set_thickness versus a
     reference-style one implemented here only (scale 16, radius r = scale*|delta|/2 rounded to
     an integer, skimage.morphology.disk dilation/erosion, thickness measured at scale 16 with
     skimage's medial_axis): time per image, speed ratio, and both methods' MAE of the measured
     (scale 4, uint8 output) thickness to the target.
  3. ONE core, the 300 (image, target) pairs of t10k-set-thickness-reference.csv: our MAE next to
     the MAE of the reference implementation's own results stored in that file.
Targets: thickness uniform in [1, 5] px; intensity 64 + 191 sigmoid(2 (t - 2.5) + 0.5 e).

Against mode (``--against OLD.py``, e.g. ``git show d64adfe:cdae/morpho.py > /tmp/old.py``):
another version of cdae/morpho.py loaded from a file, against the current one on the same N
digits and targets, ONE core, CPU time: ms/image of set_intensity(set_thickness) as uint8, the
thickness / intensity MAE of the results to the targets (measured with the current module), and
how many output images differ.

Parity mode: thickness / intensity of all 10,000 images against t10k-measured-reference.csv
(mean abs difference per image) and against the sampled labels t10k-morpho.csv (MAE and bias,
to compare with the reference figures 0.1234 px / +0.090 and 0.507 / -0.43 in DATA.md).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import os
import sys
import time
from pathlib import Path

import numpy as np

from scipy import ndimage as ndi
from skimage.morphology import disk, medial_axis
from skimage.transform import pyramid_reduce

from cdae import morpho

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover
    threadpool_limits = None

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "morphomnist"


def load_t10k() -> np.ndarray:
    path = SHARED / "t10k-images-idx3-ubyte.gz"
    if not path.is_file():
        sys.exit(f"shared data not found: {path}")
    raw = gzip.open(path).read()
    return np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28)


def load_csv(name: str) -> dict[str, np.ndarray]:
    with open(SHARED / name, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {k: np.array([float(r[k]) for r in rows]) for k in rows[0]}


# ------------------------------------------------------------------ reference-style set_thickness
def reference_set_thickness(image: np.ndarray, target: float, scale: int = 16) -> np.ndarray:
    """The Morpho-MNIST way, for comparison only: integer disk radius, O(r^2) per pixel."""
    img = np.asarray(image, np.float64)
    binary = morpho._binarise(morpho._upsample(img, scale))
    if binary is None:
        return img.copy()
    skel, dist = medial_axis(binary, return_distance=True, rng=0)
    current = 2.0 * dist[skel].mean() / scale
    delta = target - current
    radius = int(round(scale * abs(delta) / 2.0))
    if radius > 0:
        selem = disk(radius).astype(bool)
        op = ndi.binary_dilation if delta >= 0 else ndi.binary_erosion
        binary = op(binary, structure=selem)
    down = pyramid_reduce(binary.astype(np.float64), downscale=scale, order=3)
    return np.clip(down, 0.0, 1.0) * 255.0


def to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def thickness_mae(outputs, targets) -> float:
    measured = np.array([morpho.measure_thickness(to_uint8(o)) for o in outputs])
    return float(np.nanmean(np.abs(measured - targets)))


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


# ------------------------------------------------------------------ modes
def parity(workers: int) -> None:
    images = load_t10k()
    ref = load_csv("t10k-measured-reference.csv")
    labels = load_csv("t10k-morpho.csv")
    print(f"parity: measure_batch on all {images.shape[0]} t10k images, {workers} workers")
    (t, i), dt = timed(morpho.measure_batch, images, workers)
    n = images.shape[0]
    print(f"  time {dt:.1f} s ({dt / n * 1e3:.2f} ms/image wall, {workers} workers)")
    d_t = t - ref["thickness"]
    d_i = i - ref["intensity"]
    print(f"  vs reference measurement (t10k-measured-reference.csv), per image:")
    print(f"    thickness: mean |diff| {np.mean(np.abs(d_t)):.5f} px, max {np.max(np.abs(d_t)):.4f}, "
          f"exact (<1e-4) {np.mean(np.abs(d_t) < 1e-4) * 100:.1f}%")
    print(f"    intensity: mean |diff| {np.mean(np.abs(d_i)):.5f}, max {np.max(np.abs(d_i)):.4f}")
    for name, ours, rf, unit, ref_mae, ref_bias in (
        ("thickness", t, ref["thickness"], " px", 0.1234, 0.090),
        ("intensity", i, ref["intensity"], "", 0.507, -0.43),
    ):
        e_ours = ours - labels[name]
        e_ref = rf - labels[name]
        print(f"  {name} vs sampled labels: ours MAE {np.mean(np.abs(e_ours)):.4f}{unit} "
              f"(bias {np.mean(e_ours):+.4f}); reference file MAE {np.mean(np.abs(e_ref)):.4f} "
              f"(bias {np.mean(e_ref):+.4f}); DATA.md: {ref_mae}{unit} (bias {ref_bias:+})")


def speed(n: int, workers: int, ref_n: int, scales: list[int]) -> None:
    images = load_t10k()[:n]
    rng = np.random.default_rng(0)
    targets = rng.uniform(1.0, 5.0, n)
    e = rng.standard_normal(n)
    intensity = 64.0 + 191.0 / (1.0 + np.exp(-(2.0 * (targets - 2.5) + 0.5 * e)))
    morpho._tables()

    print(f"speed run: {n} t10k digits, thickness targets U[1, 5], {workers} workers "
          f"(os.cpu_count() = {os.cpu_count()})")
    out, dt_p = timed(morpho.perturb_batch, images, targets, intensity, workers)
    (mt, mi), dt_m = timed(morpho.measure_batch, out, workers)
    per_p, per_m = dt_p / n, dt_m / n
    print(f"  perturb_batch: {dt_p:7.2f} s  = {per_p * 1e3:6.2f} ms/image (wall)")
    print(f"  measure_batch: {dt_m:7.2f} s  = {per_m * 1e3:6.2f} ms/image (wall)")
    print(f"  total        : {(per_p + per_m) * 1e3:6.2f} ms/image -> 70,000 images: "
          f"{(per_p + per_m) * 70000:.0f} s = {(per_p + per_m) * 70000 / 60:.1f} min with {workers} workers")
    print(f"  output vs requested: thickness MAE {np.nanmean(np.abs(mt - targets)):.4f} px "
          f"(bias {np.nanmean(mt - targets):+.4f}), intensity MAE {np.nanmean(np.abs(mi - intensity)):.3f}")

    if threadpool_limits is not None:  # one core means one BLAS thread too
        threadpool_limits(limits=1, user_api="blas")
    m = min(ref_n, n)
    sub, tg = images[:m], targets[:m]
    print(f"\nset_thickness on {m} digits, ONE core, thickness measured at scale 4 on the uint8 output:")
    ours, dt_o = timed(lambda: [morpho.set_thickness(x, t) for x, t in zip(sub, tg)])
    mae_o = thickness_mae(ours, tg)
    ref, dt_r = timed(lambda: [reference_set_thickness(x, t) for x, t in zip(sub, tg)])
    mae_r = thickness_mae(ref, tg)
    print(f"  ours (EDT, scale {morpho.SET_THICKNESS_SCALE}, <= {morpho.SET_THICKNESS_MAX_EVALS} trials, "
          f"tol {morpho.SET_THICKNESS_TOL}): {dt_o / m * 1e3:7.1f} ms/image, MAE {mae_o:.4f} px")
    print(f"  reference-style (disk, scale 16, integer r): {dt_r / m * 1e3:7.1f} ms/image, MAE {mae_r:.4f} px")
    print(f"  speed ratio reference/ours: {dt_r / dt_o:.1f}x;  MAE ratio reference/ours: {mae_r / mae_o:.2f}x")

    pairs = load_csv("t10k-set-thickness-reference.csv")
    idx = pairs["index"].astype(int)
    ptg = pairs["target_thickness"]
    all_images = load_t10k()
    ours_p, dt_p1 = timed(lambda: [morpho.set_thickness(all_images[k], t) for k, t in zip(idx, ptg)])
    print(f"\nset_thickness on the {len(idx)} (image, target) pairs of t10k-set-thickness-reference.csv, one core:")
    print(f"  ours: MAE {thickness_mae(ours_p, ptg):.4f} px, {dt_p1 / len(idx) * 1e3:.1f} ms/image;  "
          f"reference (file's thickness_after): MAE {np.mean(np.abs(pairs['thickness_after'] - ptg)):.4f} px, "
          f"~170 ms/image (DATA.md)")
    for s in scales:
        for evals in (1, morpho.SET_THICKNESS_MAX_EVALS):
            outs, dt = timed(lambda: [morpho.set_thickness(all_images[k], t, scale=s, max_evals=evals)
                                      for k, t in zip(idx, ptg)])
            print(f"  ours scale {s:2d}, <= {evals} trial(s): {dt / len(idx) * 1e3:7.1f} ms/image, "
                  f"MAE {thickness_mae(outs, ptg):.4f} px (reference-file pairs)")


def against(path: Path, n: int) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("morpho_against", path)
    other = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(other)
    if threadpool_limits is not None:
        threadpool_limits(limits=1, user_api="blas")
    images = load_t10k()[:n]
    rng = np.random.default_rng(0)
    targets = rng.uniform(1.0, 5.0, n)
    e = rng.standard_normal(n)
    intensity = 64.0 + 191.0 / (1.0 + np.exp(-(2.0 * (targets - 2.5) + 0.5 * e)))
    print(f"{path} against cdae/morpho.py: {n} t10k digits, thickness U[1, 5], ONE core, CPU time")
    outs = {}
    for name, mod in ((str(path), other), ("cdae/morpho.py", morpho)):
        mod._tables()
        start = time.process_time()
        out = np.stack([to_uint8(mod.set_intensity(mod.set_thickness(x, t), i))
                        for x, t, i in zip(images, targets, intensity)])
        dt = time.process_time() - start
        mt, mi = morpho.measure(out)
        outs[name] = out
        print(f"  {name}: {dt / n * 1e3:6.2f} ms/image; thickness MAE {np.nanmean(np.abs(mt - targets)):.4f} px, "
              f"intensity MAE {np.nanmean(np.abs(mi - intensity)):.3f}")
    a, b = outs.values()
    differ = int((a != b).reshape(n, -1).any(1).sum())
    print(f"  output images that differ: {differ} of {n} (max |diff| "
          f"{int(np.abs(a.astype(int) - b.astype(int)).max())} grey levels)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("n", nargs="?", type=int, default=2000, help="digits for the speed run")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--ref-n", type=int, default=100, help="digits for the one-core comparison")
    ap.add_argument("--scales", default="", help="comma list of extra set_thickness scales to score")
    ap.add_argument("--parity", action="store_true", help="full 10k measure() parity instead")
    ap.add_argument("--against", type=Path, help="another cdae/morpho.py to compare with")
    args = ap.parse_args()
    if args.parity:
        parity(args.workers)
    elif args.against:
        against(args.against, args.n)
    else:
        scales = [int(s) for s in args.scales.split(",") if s.strip()]
        speed(args.n, args.workers, args.ref_n, scales)


if __name__ == "__main__":
    main()
