"""Benchmark `cdae intervene`: counterfactuals/s and the share of wall time outside the UNet.

Usage (from the repo root): python -m benchmarks.bench_intervene [--profile default]
       [--images 200] [--steps 50] [--threads 2]

Builds a synthetic 28x28 dataset and an untrained checkpoint of the profile's model in a
temporary folder (the cost of a forward does not depend on the weights), then runs the real
intervene stage (`stages.intervene.run`: checkpoint and HDF5 reading, abduction by inversion,
action, guided decoding with params' solver and grid, HDF5 writing) with the UNet's forward timed. The share
outside the UNet is everything else: data loading, HDF5, the encoder, the causal layer, solver
arithmetic and Python (target: at most 15%).
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.bench_train import synthetic_dataset
from cdae import config
from cdae.dataset import write_dataset
from cdae.training import train
from cdae.unet import UNet


class UNetTimer:
    """Wraps UNet.forward (class-wide) and accumulates its wall time and call count."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0
        self._orig = UNet.forward

    def __enter__(self) -> "UNetTimer":
        orig = self._orig

        def timed(module: UNet, *args: object, **kwargs: object) -> torch.Tensor:
            start = time.perf_counter()
            out = orig(module, *args, **kwargs)
            self.seconds += time.perf_counter() - start
            self.calls += 1
            return out

        UNet.forward = timed  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        UNet.forward = self._orig  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default=None)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=1.0,
                        help="> 0 doubles the batch of every decoding forward")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    from stages import intervene

    base = config.load("params.yaml", args.profile)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        paths = dataclasses.replace(base.paths, dataset=str(d / "dataset.h5"),
                                    model_dir=str(d / "models"), latents=str(d / "none.h5"),
                                    counterfactuals_dir=str(d / "cf"))
        params = dataclasses.replace(
            base, paths=paths,
            train=dataclasses.replace(base.train, steps=1, device=config.Device.CPU,
                                      threads=args.threads),
            intervene=dataclasses.replace(base.intervene, max_images=args.images,
                                          steps=args.steps, guidance=args.guidance))
        ds = synthetic_dataset(params, args.images * 2)
        write_dataset(paths.dataset, ds)
        (d / "models").mkdir()
        train(params, ds, d / "models", resume=False, show_progress=False)
        print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, profile "
              f"{params.profile}, {args.images} images, {args.steps} steps of "
              f"{params.diffusion.solver.value} on a {params.diffusion.spacing.value} grid for "
              f"inversion ({params.diffusion.inversion_iters} fixed-point iterations) and for "
              f"decoding, guidance {args.guidance:g}")
        with UNetTimer() as timer:
            start = time.perf_counter()
            intervene.run(params, {"thickness": 2.0}, out=str(d / "cf.h5"))
            wall = time.perf_counter() - start
    print(f"wall {wall:.2f} s: {args.images / wall:.1f} counterfactuals/s; UNet forwards "
          f"{timer.calls} taking {timer.seconds:.2f} s")
    print(f"share of wall time outside the UNet forward: {100 * (1 - timer.seconds / wall):.1f}% "
          f"(target <= 15%)")


if __name__ == "__main__":
    main()
