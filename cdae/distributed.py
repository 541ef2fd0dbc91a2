"""Data-parallel training with plain ``torch.distributed`` (one code path: gloo on CPU, NCCL on GPUs).

``torchrun --nproc_per_node N -m cdae train`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``;
:func:`setup` reads them and joins the process group. Without them everything here degrades to a
single process (rank 0 of 1) and no collective is ever called.

How the work is split (see :mod:`cdae.training`): every rank draws the SAME global batch indices
and the same per-step random numbers for the whole global batch, then keeps its contiguous slice
(the role of a ``DistributedSampler``, without its padding). Gradients are averaged over ranks, so
N processes compute the step that one process computes on the global batch, and a checkpoint
written by N processes resumes on M.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from cdae.errors import ConfigError, TrainingError


@dataclass(frozen=True)
class DistInfo:
    """rank / world of this process; ``local_rank`` picks the GPU on a node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Only rank 0 writes checkpoints, logs and progress."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    def shard(self, global_batch: int) -> slice:
        """This rank's rows of a global batch (contiguous, equal sizes)."""
        per = global_batch // self.world
        return slice(self.rank * per, (self.rank + 1) * per)


def env_info() -> DistInfo:
    """The launch described by torchrun's environment variables (rank 0 of 1 without them)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError as err:
        raise TrainingError(f"bad torchrun environment ({err})",
                            hint="launch with torchrun, which sets RANK/WORLD_SIZE") from None
    return DistInfo(rank, world, local)


def setup(device_type: str, global_batch: int) -> DistInfo:
    """Join the process group when launched by torchrun; returns this process's DistInfo.

    ``device_type`` "cuda" uses NCCL and binds the process to GPU ``LOCAL_RANK``; "cpu" uses gloo.
    """
    info = env_info()
    if not info.enabled:
        return info
    if global_batch % info.world:
        raise ConfigError(f"train.batch_size: {global_batch} does not split evenly over "
                          f"{info.world} processes", hint="make it a multiple of the process count")
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend)
    return info


def teardown(info: DistInfo) -> None:
    if info.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def any_flag(info: DistInfo, flags: list[float], device: torch.device) -> list[float]:
    """Element-wise max of small per-rank flags (stop signal, non-finite loss) over all ranks,
    so every rank takes the same branch and none waits forever in a collective."""
    if not info.enabled:
        return flags
    import torch.distributed as dist

    t = torch.tensor(flags, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [float(v) for v in t.tolist()]


def mean_over_ranks(info: DistInfo, values: dict[str, float],
                    device: torch.device) -> dict[str, float]:
    """Average logged scalars over ranks (what the global batch would have logged)."""
    if not info.enabled:
        return values
    import torch.distributed as dist

    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return {k: float(v) / info.world for k, v in zip(keys, t.tolist())}
