"""Benchmark variants of one training step on a GPU: where does a step's time go?

Usage (from the repo root, on a CUDA machine):
    python -m benchmarks.bench_gpu_step [--profile gpu] [--steps 30] [--trace]

Times the bare training step of ``benchmarks.bench_train`` (forward, backward, gradient
clipping, AdamW on one fixed batch) under variants of memory format (NCHW / channels_last), bf16
autocast, batch size and ``torch.compile`` of the UNet (``--compile``: default and CUDA-graph
modes), and prints ms/step, images/s and the ratio to the first row (the settings `cdae train`
uses); last, the whole training loop (EMA, logging, batch indexing) at the profile's settings,
eager and with ``train.compile`` in each ``train.compile_mode`` (``--loop-only``: those rows
alone).
Same batch size, twice the time = twice the cost; 4x the batch at about the same time = the step
is bound by kernel launches and host work, not by the GPU's arithmetic.
``--trace`` adds a torch.profiler table of the baseline's most expensive ops (CUDA and host).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

import tempfile
from pathlib import Path

from benchmarks.bench_train import synthetic_dataset
from cdae import config
from cdae.training import build_model, compute_loss, make_diffusion, train


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    channels_last: bool = True
    bf16: bool = True
    batch: int = 0  # 0 = the profile's train.batch_size
    compile: str = ""  # torch.compile mode of the UNet ("" = eager)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(params: config.Params, variant: Variant, steps: int, trace: bool = False,
        device: torch.device = torch.device("cuda")) -> float:
    """Seconds per step of ``variant`` (after 3 warm-up steps; compile warms up longer)."""
    tp = dataclasses.replace(params.train, bf16=variant.bf16)
    b = variant.batch or tp.batch_size
    ds = synthetic_dataset(params, max(b, 512))
    torch.manual_seed(0)
    model = build_model(params, ds.image_shape, ds.label_mean, ds.label_std).to(device)
    if variant.channels_last:
        model.unet.to(memory_format=torch.channels_last)
    if variant.compile:
        model.unet.compile(mode=variant.compile)
    diffusion = make_diffusion(params).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=tp.lr)
    x0 = (torch.as_tensor(ds.images[:b], dtype=torch.float32) / 127.5 - 1.0).to(device)
    y = torch.as_tensor(ds.labels[:b], dtype=torch.float32, device=device)
    mask = torch.ones(b, y.shape[1], dtype=torch.bool, device=device)
    gen = torch.Generator(device=device).manual_seed(0)

    def step(i: int) -> None:
        parts = compute_loss(model, diffusion, x0, y, mask, i, tp, gen)
        opt.zero_grad(set_to_none=True)
        parts.total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tp.grad_clip)
        opt.step()

    for i in range(10 if variant.compile else 3):
        step(i)
    sync(device)
    start = time.perf_counter()
    for i in range(steps):
        step(i)
    sync(device)
    seconds = (time.perf_counter() - start) / steps
    if trace:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for i in range(5):
                step(i)
            sync(device)
        table = prof.key_averages()
        print(table.table(sort_by="cuda_time_total", row_limit=15))
        print(table.table(sort_by="self_cpu_time_total", row_limit=10))
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="gpu")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--trace", action="store_true")
    parser.add_argument("--compile", action="store_true",
                        help="also time torch.compile of the UNet (default and CUDA-graph modes)")
    parser.add_argument("--loop-only", action="store_true",
                        help="time only the whole training loop, eager and with train.compile")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device; run this on a GPU machine")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    params = config.load("params.yaml", args.profile)
    b = params.train.batch_size
    variants = [Variant("as trained (channels_last, bf16)"),
                Variant("NCHW, bf16", channels_last=False),
                Variant("channels_last, fp32", bf16=False),
                Variant("NCHW, fp32", channels_last=False, bf16=False),
                Variant(f"as trained, batch {4 * b}", batch=4 * b),
                Variant(f"NCHW, bf16, batch {4 * b}", channels_last=False, batch=4 * b)]
    if args.compile:
        variants += [Variant("as trained, UNet compiled", compile="default"),
                     Variant("as trained, UNet compiled, CUDA graphs", compile="reduce-overhead"),
                     Variant("NCHW, bf16, UNet compiled", channels_last=False, compile="default")]
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}, profile "
          f"{params.profile}, {args.steps} steps per variant", flush=True)
    base = None
    for i, v in enumerate([] if args.loop_only else variants):
        s = run(params, v, args.steps, trace=args.trace and i == 0)
        base = base or s
        batch = v.batch or b
        print(f"{v.name:40s} {s * 1e3:8.1f} ms/step {batch / s:9.0f} images/s "
              f"time x{s / base:5.2f}", flush=True)
    for compiled, mode in ((False, config.CompileMode.DEFAULT),
                           (True, config.CompileMode.DEFAULT),
                           (True, config.CompileMode.REDUCE_OVERHEAD)):
        s = loop_seconds(params, 3 * args.steps, compiled, mode=mode)
        base = base or s
        name = "the whole training loop" + (f", train.compile {mode.value}" if compiled else "")
        print(f"{name:40s} {s * 1e3:8.1f} ms/step {b / s:9.0f} images/s time x{s / base:5.2f}",
              flush=True)


def loop_seconds(params: config.Params, steps: int, compiled: bool,
                 device: config.Device = config.Device.CUDA, warm: int = 20,
                 mode: config.CompileMode = config.CompileMode.DEFAULT) -> float:
    """Seconds per step of `cdae.training.train` on ``device``: one run of ``warm + steps``
    steps, timed between its log rows at step ``warm`` and at the end (so the first steps'
    cuDNN algorithm search and, with ``compiled``, the compilation are left out)."""
    b = params.train.batch_size
    total = warm + steps
    tp = dataclasses.replace(params.train, steps=total, log_every=warm,
                             checkpoint_every=10 * total, device=device, compile=compiled,
                             compile_mode=mode, max_minutes=0.0)
    loop = dataclasses.replace(params, train=tp)
    seen: dict[int, float] = {}

    def on_log(row: dict[str, float]) -> None:
        seen[int(row["step"])] = time.perf_counter()  # the row is written after a read-back

    with tempfile.TemporaryDirectory() as tmp:
        train(loop, synthetic_dataset(loop, 8 * b), Path(tmp), on_log=on_log,
              show_progress=False)
    return (seen[total] - seen[warm]) / steps


if __name__ == "__main__":
    main()
