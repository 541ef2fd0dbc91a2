"""Benchmark training: images/s, and the overhead of cdae's full training step over a bare one.

Usage (from the repo root): python -m benchmarks.bench_train [--profile default] [--steps 20]
       [--rounds 3] [--threads 2] [--device cpu|cuda] [--bf16-cpu]

On a GPU (``--device cuda --profile gpu``) the gap between "full" and "bare" is what the loop's
host read-backs and per-step Python cost: "bare" reads nothing back either.

"Bare" = the same model, loss, batch size and AdamW step in a plain loop on one pre-built batch
(no indexing, no EMA, no logging, no checkpoint, no signal handling). "Full" = `cdae.training.train`
(seeded batch indexing, the global-batch random draws, EMA, loss bookkeeping, periodic logging,
checkpoint every ``--checkpoint-every`` steps, the stop-flag check) on synthetic 28x28 data of the
same size. Rounds are interleaved so a busy machine affects both alike; the ratio uses the best
round of each. The final model save is excluded from "full" (it happens once per run) and timed
on its own.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cdae import config
from cdae.dataset import Dataset, normalisation_stats
from cdae.training import build_model, compute_loss, make_diffusion, train


def synthetic_dataset(params: config.Params, n: int) -> Dataset:
    rng = np.random.default_rng(0)
    t = 0.5 + rng.gamma(10, 1 / 5, n)
    i = 64 + 191 / (1 + np.exp(-(2 * (t - 2.5) + 0.5 * rng.normal(size=n))))
    labels = np.stack([t, i, rng.integers(0, 10, n)], 1)
    split = (np.arange(n) % 10 == 0).astype(np.uint8)
    mean, std = normalisation_stats(labels, split, params.graph)
    images = rng.integers(0, 255, (n, 1, 28, 28), dtype=np.uint8)
    return Dataset(images, labels, np.ones((n, 3), bool), split, params.graph, mean, std)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare(params: config.Params, ds: Dataset, steps: int, device: torch.device) -> float:
    """Seconds for ``steps`` plain forward + backward + AdamW steps on one fixed batch."""
    tp = params.train
    torch.manual_seed(0)
    model = build_model(params, ds.image_shape, ds.label_mean, ds.label_std).to(device)
    diffusion = make_diffusion(params).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=tp.lr)
    b = tp.batch_size
    x0 = (torch.as_tensor(ds.images[:b], dtype=torch.float32) / 127.5 - 1.0).to(device)
    y = torch.as_tensor(ds.labels[:b], dtype=torch.float32, device=device)
    mask = torch.ones(b, y.shape[1], dtype=torch.bool, device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    for warm in (True, False):
        _sync(device)
        start = time.perf_counter()
        for step in range(2 if warm else steps):
            parts = compute_loss(model, diffusion, x0, y, mask, step, tp, gen)
            opt.zero_grad(set_to_none=True)
            parts.total.backward()
            opt.step()
        _sync(device)
    return time.perf_counter() - start


def full(params: config.Params, ds: Dataset, out: Path) -> tuple[float, float]:
    """(loop seconds, seconds of the final model save) of `cdae.training.train`."""
    start = time.perf_counter()
    result = train(params, ds, out, resume=False, show_progress=False)
    total = time.perf_counter() - start
    return result.seconds, total


def compare_bf16_cpu(params: config.Params, ds: Dataset, steps: int, rounds: int) -> None:
    """Best-of-``rounds`` full-loop step time with bf16 autocast on the CPU off and on."""
    best: dict[bool, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for on in (False, True):
                p = dataclasses.replace(params, train=dataclasses.replace(params.train,
                                                                           bf16_cpu=on))
                loop, _ = full(p, ds, Path(tmp) / f"r{r}{on}")
                best[on] = min(best.get(on, loop), loop)
                print(f"round {r}: bf16_cpu {on}: {loop / steps * 1e3:.1f} ms/step", flush=True)
    b = params.train.batch_size
    for on in (False, True):
        print(f"bf16_cpu {str(on):5s} {best[on] / steps * 1e3:8.1f} ms/step "
              f"{b * steps / best[on]:8.1f} images/s")
    print(f"time with bf16 autocast / without: x{best[True] / best[False]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default=None)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--checkpoint-every", type=int, default=10,
                        help="checkpoint period inside the timed loop (params default: 500)")
    parser.add_argument("--bf16-cpu", action="store_true",
                        help="instead: the full loop with train.bf16_cpu off and on (CPU), the "
                        "ratio of their step times")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    params = config.load("params.yaml", args.profile)
    tp = dataclasses.replace(params.train, steps=args.steps, log_every=min(params.train.log_every,
                                                                          args.steps),
                             checkpoint_every=args.checkpoint_every, threads=args.threads,
                             device=config.Device(args.device))
    params = dataclasses.replace(params, train=tp)
    ds = synthetic_dataset(params, max(8 * tp.batch_size, 512))
    print(f"torch {torch.__version__}, {args.device}, threads {torch.get_num_threads()}, profile "
          f"{params.profile}, batch {tp.batch_size}, {args.steps} steps per round, checkpoint "
          f"every {args.checkpoint_every} steps")
    if args.bf16_cpu:
        compare_bf16_cpu(params, ds, args.steps, args.rounds)
        return
    bare_s, full_s = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            bare_s.append(bare(params, ds, args.steps, torch.device(args.device)))
            loop, total = full(params, ds, Path(tmp) / f"r{r}")
            full_s.append(loop)
            print(f"round {r}: bare {bare_s[-1] / args.steps * 1e3:.1f} ms/step, full "
                  f"{loop / args.steps * 1e3:.1f} ms/step (run incl. set-up and final save "
                  f"{total:.1f} s)", flush=True)
    b, f = min(bare_s) / args.steps, min(full_s) / args.steps
    print(f"bare step  {b * 1e3:8.1f} ms   {tp.batch_size / b:8.1f} images/s")
    print(f"full step  {f * 1e3:8.1f} ms   {tp.batch_size / f:8.1f} images/s")
    print(f"overhead of the full step over the bare one: {100 * (f / b - 1):+.1f}% "
          f"(target <= 10%)")


if __name__ == "__main__":
    main()
