"""Benchmark peak memory of encode-latents and intervene: 50,000 vs 5,000 images.

Usage (from the repo root): python -m benchmarks.bench_memory [--sizes 5000,50000]
       [--steps 1] [--batch 100] [--threads 1]

Builds, in a temporary folder, a tiny untrained checkpoint (the `tiny` profile's model, one
training step; memory does not depend on the weights) and for each size N a synthetic dataset
file in the project's HDF5 format (random 28x28 uint8 images, SCM-like labels, every row in the
test split). Then, each in a fresh Python process, runs on ALL N images:

- encode-latents (`stages.encode_latents.run`, DDIM inversion with ``--steps`` steps), then
- intervene do(thickness=2) (`stages.intervene.run`, decoding from encode-latents' cached x_T),

and reports each stage's peak resident set size: the process imports torch, h5py and the stages
first, then resets its high-water mark (``/proc/self/clear_refs`` 5) and runs the stage, so the
peak (VmHWM) is the stage's own peak, including the ~220 MiB the imports keep resident (Python,
torch, h5py). Printed: that peak, the RSS before the stage, the ratio of the peaks
largest/smallest size (target: <= 1.10) and the growth of the peak in bytes per image. (Not
``getrusage().ru_maxrss``: on Linux a freshly exec'd process carries in it the high-water mark
of the process it was forked from, here this benchmark holding the largest dataset.)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("encode-latents", "intervene")


def bench_params(folder: Path, n: int, steps: int, batch: int, threads: int):
    """The tiny profile with its files in ``folder``; encode and intervene take every test
    image (all N), ``steps`` DDIM steps, batches of ``batch``."""
    from cdae import config

    base = config.load(ROOT / "params.yaml", "tiny")
    paths = dataclasses.replace(base.paths, dataset=str(folder / f"dataset_{n}.h5"),
                                model_dir=str(folder / "models"),
                                latents=str(folder / f"latents_{n}.h5"),
                                counterfactuals_dir=str(folder / "cf"))
    return dataclasses.replace(
        base, paths=paths,
        train=dataclasses.replace(base.train, steps=1, device=config.Device.CPU, threads=threads),
        encode=dataclasses.replace(base.encode, split="test", max_images=0, steps=steps,
                                   batch_size=batch),
        intervene=dataclasses.replace(base.intervene, split="test", max_images=0, steps=steps,
                                      batch_size=batch, guidance=0.0,
                                      abduction=config.Abduction.INVERT))


def synthetic(params, n: int, seed: int = 0):
    """N random digits-sized images with labels from the DeepSCM equations; all test rows."""
    from cdae.dataset import Dataset, normalisation_stats

    rng = np.random.default_rng(seed)
    t = 0.5 + rng.gamma(10, 1 / 5, n)
    i = 64 + 191 / (1 + np.exp(-(2 * (t - 2.5) + 0.5 * rng.normal(size=n))))
    labels = np.stack([t, i, rng.integers(0, 10, n)], 1)
    split = np.ones(n, np.uint8)
    split[:2] = 0  # two train rows, so the file's normalisation stats are defined
    mean, std = normalisation_stats(labels, split, params.graph)
    images = rng.integers(0, 256, (n, 1, 28, 28), dtype=np.uint8)
    return Dataset(images, labels, np.ones((n, 3), bool), split, params.graph, mean, std)


def child(stage: str, folder: Path, n: int, steps: int, batch: int, threads: int) -> None:
    """One measured stage in this (fresh) process; prints one JSON line."""
    import torch

    torch.set_num_threads(threads)
    from stages import encode_latents, intervene

    params = bench_params(folder, n, steps, batch, threads)
    result: dict[str, object] = {"stage": stage, "n": n, "start_kib": _status_kib("VmRSS")}
    with open("/proc/self/clear_refs", "w") as fh:  # reset VmHWM to the current RSS
        fh.write("5")
    start = time.perf_counter()
    if stage == "encode-latents":
        result["images"] = encode_latents.run(params)["images"]
    else:
        out = intervene.run(params, {"thickness": 2.0}, out=str(folder / f"cf_{n}.h5"))
        result["images"] = out["images"]
    result["seconds"] = time.perf_counter() - start
    result["peak_kib"] = _status_kib("VmHWM")
    if stage == "intervene":  # after the peak was read: did it decode from the cached x_T?
        from cdae.dataset import read_dataset

        rows = encode_latents.select(read_dataset(params.paths.dataset), "test", 0)
        cached = encode_latents.load_cached(
            params.paths.latents, Path(params.paths.model_dir) / "model.pt", rows[:1], steps,
            params.intervene.parents_from, params.diffusion.inversion_iters,
            abduction=params.intervene.abduction, t0=params.intervene.t0,
            solver=params.diffusion.solver, spacing=params.diffusion.spacing)
        result["cached_x_T"] = cached is not None
    print(json.dumps(result))


def _status_kib(field: str) -> int:
    """``VmRSS`` / ``VmHWM`` of this process from /proc/self/status, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def run_child(stage: str, folder: Path, n: int, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.bench_memory", "--child", stage,
           "--dir", str(folder), "--n", str(n), "--steps", str(args.steps),
           "--batch", str(args.batch), "--threads", str(args.threads)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{stage} on {n} images failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="5000,50000")
    parser.add_argument("--steps", type=int, default=1, help="DDIM steps (memory does not "
                        "depend on them; few keep the run short)")
    parser.add_argument("--batch", type=int, default=100, help="images per batch")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", choices=STAGES, help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.dir, args.n, args.steps, args.batch, args.threads)
        return

    import torch

    from cdae.dataset import write_dataset
    from cdae.training import train

    torch.set_num_threads(args.threads)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    results: dict[tuple[str, int], dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        params = bench_params(folder, 64, args.steps, args.batch, args.threads)
        (folder / "models").mkdir()
        small = synthetic(params, 64)
        small.split[:] = 0
        train(params, small, folder / "models", resume=False, show_progress=False)
        print(f"torch {torch.__version__}, {os.cpu_count()} cores, {args.threads} torch "
              f"thread(s); tiny-profile model; {args.steps} DDIM steps; batches of {args.batch}")
        for n in sizes:
            write_dataset(bench_params(folder, n, args.steps, args.batch,
                                       args.threads).paths.dataset, synthetic(params, n))
            for stage in STAGES:
                r = results[stage, n] = run_child(stage, folder, n, args)
                extra = (f", {r['images']} images in {r['seconds']:.0f} s"
                         if "images" in r else "")
                if "cached_x_T" in r:
                    extra += f", decoded from cached x_T: {r['cached_x_T']}"
                print(f"  N={n:>6}: {stage:<15} peak RSS {r['peak_kib'] / 1024:7.1f} MiB "
                      f"(RSS before {r['start_kib'] / 1024:.1f} MiB){extra}", flush=True)
            for name in (f"latents_{n}.h5", f"cf_{n}.h5", f"dataset_{n}.h5"):
                (folder / name).unlink(missing_ok=True)
    lo, hi = sizes[0], sizes[-1]
    print(f"\nstage peak RSS, {hi} vs {lo} images (target: ratio <= 1.10):")
    for stage in STAGES:
        a, b = results[stage, lo]["peak_kib"], results[stage, hi]["peak_kib"]
        print(f"  {stage:<15} {a / 1024:7.1f} -> {b / 1024:7.1f} MiB: ratio {b / a:.3f}, "
              f"growth {(b - a) * 1024 / (hi - lo):6.0f} bytes/image")


if __name__ == "__main__":
    main()
