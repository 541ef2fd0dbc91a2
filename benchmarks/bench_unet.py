"""Benchmark the default UNet's forward + backward on CPU, contiguous (NCHW) vs channels_last.

Usage (from the repo root): python -m benchmarks.bench_unet [--batch-size 64] [--size 28]
       [--threads 2] [--rounds 7] [--iters 5]

Prints the parameter count and, per memory format, the time of one forward + backward (MSE to
random eps) on a batch: the best (min) and the median over rounds of the mean over ``--iters``
passes. The two formats are measured in interleaved rounds so that a busy machine affects both
alike; the ratio uses the best times, which are the least affected by other processes.
"""

from __future__ import annotations

import argparse
import statistics
import time
from enum import Enum

import torch

from cdae.unet import UNet


class MemoryFormat(str, Enum):
    CONTIGUOUS = "contiguous"
    CHANNELS_LAST = "channels_last"

    @property
    def torch_format(self) -> torch.memory_format:
        return (torch.channels_last if self is MemoryFormat.CHANNELS_LAST
                else torch.contiguous_format)


def _step(model: UNet, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
          target: torch.Tensor) -> None:
    model.zero_grad(set_to_none=True)
    (model(x, t, cond) - target).square().mean().backward()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iters", type=int, default=5, help="forward+backward passes per round")
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = UNet()  # default config: base 32, channel_mult (1, 2, 2), 1 res block, cond_dim 48
    num_params = sum(p.numel() for p in base.parameters())
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"UNet default config: {num_params:,} parameters")
    print(f"batch {args.batch_size} x 1 x {args.size} x {args.size}, cond_dim {base.cond_dim}")

    x = torch.randn(args.batch_size, 1, args.size, args.size)
    t = torch.randint(0, 1000, (args.batch_size,))
    cond = torch.randn(args.batch_size, base.cond_dim)
    target = torch.randn_like(x)
    # Perturb the zero-initialised layers so the backward pass does the work of a trained model.
    with torch.no_grad():
        for param in base.parameters():
            param.add_(0.01 * torch.randn_like(param))

    setups = {}
    for fmt in MemoryFormat:
        model = UNet()
        model.load_state_dict(base.state_dict())
        model = model.to(memory_format=fmt.torch_format).train()
        inputs = (x.contiguous(memory_format=fmt.torch_format), t, cond,
                  target.contiguous(memory_format=fmt.torch_format))
        for _ in range(args.warmup):
            _step(model, *inputs)
        setups[fmt] = (model, inputs)

    times: dict[MemoryFormat, list[float]] = {fmt: [] for fmt in MemoryFormat}
    for _ in range(args.rounds):
        for fmt, (model, inputs) in setups.items():
            start = time.perf_counter()
            for _ in range(args.iters):
                _step(model, *inputs)
            times[fmt].append((time.perf_counter() - start) / args.iters * 1e3)

    best = {fmt: min(ms) for fmt, ms in times.items()}
    for fmt, ms in times.items():
        print(f"{fmt.value:>13}: best {best[fmt]:7.1f} ms / forward+backward "
              f"(median {statistics.median(ms):.1f}, max {max(ms):.1f} over {args.rounds} rounds)")
    ratio = best[MemoryFormat.CHANNELS_LAST] / best[MemoryFormat.CONTIGUOUS]
    print(f"channels_last / contiguous time ratio (best): {ratio:.2f} "
          f"({'channels_last faster' if ratio < 1 else 'contiguous faster'})")


if __name__ == "__main__":
    main()
