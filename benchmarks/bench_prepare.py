"""Benchmark prepare-data at scale: images/s, peak memory vs size, set_thickness vs disk dilation.

Usage (from the repo root): python -m benchmarks.bench_prepare [--sizes 2000,10000]
       [--workers 0] [--compare 300] [--full] [--quiet-load 0.6] [--quiet-wait 2700]

Needs the shared t10k digits (../shared/data/morphomnist/t10k-images-idx3-ubyte.gz, labels).

1. prepare-data (the real stage, ``stages.prepare_data.run``: IDX reading, the DeepSCM SCM,
   set_thickness + set_intensity in parallel over ``--workers`` processes (0 = all cores), the
   HDF5 write) with ``data.source: idx`` on IDX files made of the first N shared t10k digits
   (90% as the train file, 10% as the t10k file, gzip like MNIST's), one fresh process per size.
   Printed per size: wall time, images/s; then 70,000 images (MNIST train + test) extrapolated
   from the two sizes (fixed cost + per-image cost, a straight line through both; target <= 10
   minutes on the 2-core machine).
2. Peak memory of those runs: the process imports everything first, resets its high-water mark
   (``/proc/self/clear_refs`` 5), then runs the stage; VmHWM is the stage's peak. The growth per
   image between the sizes is set against the output's size per image: the images (uint8 28x28)
   and labels (3 float64) the stage makes, and everything the file stores per image. Worker
   processes hold one chunk (<= 256 images) each, whatever N: not in these numbers.
   ``--full``: the real 70,000-image run, after the sizes: synthetic MNIST-sized IDX files
   (gzip, 60,000 train + 10,000 t10k: the shared t10k digits tiled 7 times, so each digit is
   rendered 7 times with different SCM noise) and one fresh process as above. It starts once
   the machine is quiet (1-minute load average below ``--quiet-load``, polled every 30 s for
   at most ``--quiet-wait`` s; it runs anyway after that and says so). Printed: the wall time
   of the whole process (interpreter start to exit) and of the stage, images/s, CPU time, the
   stage's peak RSS, the load average before and after, and the peak's growth per image from
   the largest ``--sizes`` run (a long baseline: allocator and library constants cancel).
3. On the first ``--compare`` shared digits, ONE core, targets U[1, 5] px: our set_thickness
   (cdae.morpho: Euclidean distance transform, no quantisation) against the Morpho-MNIST
   reference approach written here only (benchmarks.bench_morpho.reference_set_thickness:
   scale 16, integer disk radius r = round(16 |delta| / 2), binary dilation / erosion by a disk,
   pyramid_reduce back): time per image, speed ratio, and each method's thickness MAE to the
   target, both measured with cdae.morpho.measure_thickness on the uint8 result.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "morphomnist"
N_FULL = 70_000


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


class TreeCpu:
    """CPU seconds (user + system) of this process and every process below it (the worker
    pool), sampled from /proc every ``interval`` s in a thread: a worker's last interval
    before it exits is lost (at most ``interval`` s per worker)."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.seen: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._tick = os.sysconf("SC_CLK_TCK")

    def _sample(self) -> None:
        procs: dict[int, tuple[int, float]] = {}
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                fields = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # the process ended meanwhile
                continue
            procs[int(d)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / self._tick)
        tree, grew = {os.getpid()}, True
        while grew:
            below = {pid for pid, (ppid, _) in procs.items() if ppid in tree} - tree
            tree |= below
            grew = bool(below)
        for pid in tree - {os.getpid()}:
            self.seen[pid] = max(self.seen.get(pid, 0.0), procs[pid][1])

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> "TreeCpu":
        self._self0 = time.process_time()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.own = time.process_time() - self._self0
        self.others = sum(self.seen.values())


def shared_t10k() -> tuple[np.ndarray, np.ndarray]:
    from cdae.mnist import load_idx_pair

    imgs, labs = SHARED / "t10k-images-idx3-ubyte.gz", SHARED / "t10k-labels-idx1-ubyte.gz"
    if not imgs.is_file():
        sys.exit(f"shared digits not found: {imgs}")
    return load_idx_pair(imgs, labs)


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX unsigned-byte file (gzip) of ``array`` (N,) labels or (N, H, W) images."""
    magic = 0x0800 | array.ndim
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big")
                                                 for d in array.shape)
    with gzip.open(path, "wb", compresslevel=6) as fh:
        fh.write(header + np.ascontiguousarray(array, np.uint8).tobytes())


def make_idx_folder(folder: Path, images: np.ndarray, labels: np.ndarray,
                    n_test: int | None = None) -> None:
    """train = the first digits, t10k = the last ``n_test`` (default 10%; MNIST's file
    names)."""
    folder.mkdir(parents=True)
    cut = images.shape[0] - (images.shape[0] // 10 if n_test is None else n_test)
    for prefix, sl in (("train", slice(0, cut)), ("t10k", slice(cut, None))):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images[sl])
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels[sl])


def stage_params(idx_dir: Path, out: Path, workers: int):
    from cdae import config

    base = config.load(ROOT / "params.yaml")
    return dataclasses.replace(
        base, paths=dataclasses.replace(base.paths, dataset=str(out)),
        data=dataclasses.replace(base.data, source=config.DataSource.IDX, idx_dir=str(idx_dir),
                                 max_images=0, workers=workers))


def child(idx_dir: Path, out: Path, workers: int) -> None:
    """prepare-data in this fresh process; one JSON line: seconds, RSS, peak."""
    from stages import prepare_data

    params = stage_params(idx_dir, out, workers)
    result: dict[str, object] = {"start_kib": _status_kib("VmRSS")}
    with open("/proc/self/clear_refs", "w") as fh:  # VmHWM := current RSS
        fh.write("5")
    start = time.perf_counter()
    with TreeCpu() as cpu:
        summary = prepare_data.run(params)
    result["seconds"] = time.perf_counter() - start
    result["cpu_seconds"] = cpu.own + cpu.others
    result["processes"] = len(cpu.seen)
    result["peak_kib"] = _status_kib("VmHWM")
    result["images"] = summary["train"] + summary["test"]
    print(json.dumps(result))


def file_bytes_per_image(path: Path) -> dict[str, float]:
    import h5py

    with h5py.File(path, "r") as f:
        n = f["images"].shape[0]
        return {name: f[name].dtype.itemsize * int(np.prod(f[name].shape)) / n
                for name in f if f[name].shape[0] == n or name == "base_images"}


def run_child(folder: Path, out: Path, workers: int) -> dict:
    """prepare-data on the IDX files in ``folder`` in a fresh process (``child``): its JSON
    result plus ``process_seconds``, the wall time from the interpreter's start to its exit."""
    cmd = [sys.executable, "-m", "benchmarks.bench_prepare", "--child", str(folder),
           "--out", str(out), "--workers", str(workers)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"prepare-data on {folder} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_seconds"] = seconds
    return result


def run_prepare(sizes: list[int], workers: int) -> dict[int, dict]:
    """The ``sizes`` runs (first N shared digits); their results by N."""
    images, labels = shared_t10k()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            folder = Path(tmp) / f"idx_{n}"
            make_idx_folder(folder, images[:n], labels[:n])
            out = Path(tmp) / f"dataset_{n}.h5"
            load = os.getloadavg()[0]
            r = results[n] = run_child(folder, out, workers)
            r["file"] = file_bytes_per_image(out)
            print(f"  N={n:>6}: {r['seconds']:6.1f} s = {r['images'] / r['seconds']:6.1f} "
                  f"images/s wall; CPU {r['cpu_seconds']:.1f} s in this process and "
                  f"{r['processes']} below it = {r['cpu_seconds'] / r['images'] * 1e3:.2f} "
                  f"ms/image; stage peak RSS {r['peak_kib'] / 1024:6.1f} MiB (RSS before "
                  f"{r['start_kib'] / 1024:.1f} MiB); load average before {load:.1f}", flush=True)
    lo, hi = sizes[0], sizes[-1]
    t_lo, t_hi = results[lo]["seconds"], results[hi]["seconds"]
    per_image = (t_hi - t_lo) / (hi - lo)
    fixed = t_hi - per_image * hi
    full = fixed + per_image * N_FULL
    cores = os.cpu_count() or 1
    cpu_per_image = results[hi]["cpu_seconds"] / hi
    print(f"  70,000 images, wall as measured (machine load as above): "
          f"{N_FULL / (hi / t_hi) / 60:.1f} min at the {hi}-digit rate; {full / 60:.1f} min "
          f"from the line through both sizes ({fixed:.1f} s fixed + {per_image * 1e3:.2f} "
          f"ms/image); target <= 10 min")
    print(f"  70,000 images from the CPU time of the {hi}-digit run: {cpu_per_image * 1e3:.2f} "
          f"ms/image x 70,000 / {cores} cores = {cpu_per_image * N_FULL / cores / 60:.1f} min "
          f"on an otherwise idle machine (assumes the {cores} workers scale perfectly)")
    growth = (results[hi]["peak_kib"] - results[lo]["peak_kib"]) * 1024 / (hi - lo)
    file_total = sum(results[hi]["file"].values())
    made = 28 * 28 + 3 * 8
    print(f"  peak RSS growth {growth:.0f} bytes/image between {lo} and {hi} digits; the output "
          f"per image: images + labels as the stage makes them (uint8 28x28 + 3 float64) "
          f"{made} bytes, everything the file stores {file_total:.0f} bytes ("
          + ", ".join(f"{k} {v:.0f}" for k, v in sorted(results[hi]["file"].items())) + ")")
    print(f"  => growth / (images + labels) = {growth / made:.2f}, growth / file per image = "
          f"{growth / file_total:.2f}")
    return results


def wait_quiet(threshold: float, max_wait: float, poll: float = 30.0) -> tuple[bool, float]:
    """Poll the 1-minute load average every ``poll`` s until it is below ``threshold`` or
    ``max_wait`` s have passed: (quiet, seconds waited)."""
    start = time.monotonic()
    for k in itertools.count():
        load = os.getloadavg()
        waited = time.monotonic() - start
        if load[0] < threshold:
            return True, waited
        if waited >= max_wait:
            return False, waited
        if k % 10 == 0:  # a line every 5 minutes
            print(f"  waiting for a quiet machine: load average {load[0]:.2f} {load[1]:.2f} "
                  f"{load[2]:.2f} (1/5/15 min) after {waited / 60:.1f} min", flush=True)
        time.sleep(min(poll, max(1.0, max_wait - waited)))
    raise AssertionError("unreachable")


def run_full(workers: int, threshold: float, max_wait: float, small: dict | None) -> None:
    """The 70,000-image run (see the module docstring, ``--full``)."""
    images, labels = shared_t10k()
    reps = -(-N_FULL // images.shape[0])
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "idx_full"
        make_idx_folder(folder, np.concatenate([images] * reps)[:N_FULL],
                        np.concatenate([labels] * reps)[:N_FULL], n_test=10_000)
        on_disk = sum(f.stat().st_size for f in folder.iterdir())
        print(f"\nprepare-data on ALL {N_FULL:,} images: synthetic MNIST-sized IDX files "
              f"(60,000 train + 10,000 t10k, gzip, {on_disk / 2**20:.1f} MiB: the shared t10k "
              f"digits x{reps}), data.workers {workers} (os.cpu_count() = {cores})", flush=True)
        quiet, waited = wait_quiet(threshold, max_wait)
        before = os.getloadavg()
        print(f"  {'quiet' if quiet else 'NOT quiet'} after {waited / 60:.1f} min of waiting "
              f"(threshold: 1-minute load average < {threshold}); load average before the run "
              f"{before[0]:.2f} {before[1]:.2f} {before[2]:.2f} (1/5/15 min)", flush=True)
        out = Path(tmp) / "dataset_full.h5"
        r = run_child(folder, out, workers)
        after = os.getloadavg()
        file_total = sum(file_bytes_per_image(out).values())
        out_mib = out.stat().st_size / 2**20
    n = r["images"]
    if n != N_FULL:
        sys.exit(f"the full run wrote {n} images, expected {N_FULL}")
    print(f"  process wall time {r['process_seconds']:.1f} s = "
          f"{r['process_seconds'] / 60:.2f} min (interpreter start to exit; target <= 10 min), "
          f"stage {r['seconds']:.1f} s = {n / r['seconds']:.1f} images/s")
    print(f"  CPU {r['cpu_seconds']:.1f} s in this process and {r['processes']} below it = "
          f"{r['cpu_seconds'] / n * 1e3:.2f} ms/image; stage peak RSS "
          f"{r['peak_kib'] / 1024:.1f} MiB (RSS before {r['start_kib'] / 1024:.1f} MiB); "
          f"output file {out_mib:.1f} MiB")
    print(f"  load average after the run {after[0]:.2f} {after[1]:.2f} {after[2]:.2f} "
          f"(1/5/15 min)")
    if small:
        m = max(small)
        growth = (r["peak_kib"] - small[m]["peak_kib"]) * 1024 / (n - m)
        print(f"  peak RSS growth {growth:.0f} bytes/image between {m:,} and {n:,} images; "
              f"everything the file stores: {file_total:.0f} bytes/image => growth / file per "
              f"image = {growth / file_total:.2f}")


def compare(m: int) -> None:
    from benchmarks.bench_morpho import reference_set_thickness, thickness_mae
    from cdae import morpho

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # comes with scikit-learn; without it BLAS may use more cores
        threadpool_limits = None
    if threadpool_limits is not None:
        threadpool_limits(limits=1, user_api="blas")
    images = shared_t10k()[0][:m]
    targets = np.random.default_rng(0).uniform(1.0, 5.0, m)
    morpho._tables()

    def timed(fn):  # CPU seconds of this (single-threaded) process: robust to a busy machine
        start = time.process_time()
        outs = [fn(x, t) for x, t in zip(images, targets)]
        return outs, time.process_time() - start

    ours, dt_o = timed(morpho.set_thickness)
    ref, dt_r = timed(lambda x, t: reference_set_thickness(x, t, scale=16))
    mae_o, mae_r = thickness_mae(ours, targets), thickness_mae(ref, targets)
    print(f"\nset_thickness on {m} shared t10k digits, targets U[1, 5] px, ONE core, CPU time; "
          f"thickness of the uint8 result measured with cdae.morpho.measure_thickness:")
    print(f"  ours (distance transform, scale {morpho.SET_THICKNESS_SCALE}): "
          f"{dt_o / m * 1e3:7.1f} ms/image, MAE to target {mae_o:.4f} px")
    print(f"  disk dilation/erosion, scale 16 (Morpho-MNIST's approach): "
          f"{dt_r / m * 1e3:7.1f} ms/image, MAE to target {mae_r:.4f} px")
    print(f"  speed ratio disk/ours: {dt_r / dt_o:.1f}x (expected >= 10x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2000,10000", help="digits per prepare-data run "
                        "(at most 10,000: the shared t10k split)")
    parser.add_argument("--workers", type=int, default=0, help="data.workers (0 = all cores)")
    parser.add_argument("--compare", type=int, default=300, help="digits for set_thickness "
                        "vs disk dilation (0 = skip)")
    parser.add_argument("--full", action="store_true", help="also run prepare-data on "
                        "70,000 images (synthetic MNIST-sized IDX files), once the machine is "
                        "quiet")
    parser.add_argument("--quiet-load", type=float, default=0.6, help="--full starts when the "
                        "1-minute load average is below this")
    parser.add_argument("--quiet-wait", type=float, default=2700.0, help="--full waits at "
                        "most this many seconds for a quiet machine, then runs anyway")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.out, args.workers)
        return
    sizes = sorted(int(s) for s in args.sizes.split(","))
    if len(sizes) < 2 or sizes[-1] > 10_000:
        sys.exit("--sizes: two or more sizes, at most 10000")
    print(f"prepare-data, data.source idx (shared t10k digits), data.workers {args.workers} "
          f"(os.cpu_count() = {os.cpu_count()}), default profile's SCM")
    small = run_prepare(sizes, args.workers)
    if args.full:
        run_full(args.workers, args.quiet_load, args.quiet_wait, small)
    if args.compare:
        compare(args.compare)


if __name__ == "__main__":
    main()
