"""Training loop: loss of METHOD.md, AdamW, EMA, seeded batches, checkpoints, clean stops.

Reproducibility: batch order is a permutation per epoch drawn from ``seed + epoch``; the
per-step randomness (timesteps, noise, posterior samples, condition dropout) comes from a
generator seeded with ``(seed, step)``. A run resumed at step k therefore continues exactly as
the uninterrupted run would (bit-identical on CPU).
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from cdae import config as cfg
from cdae import distributed
from cdae.causal import CausalLayer
from cdae.checkpoint import config_hash, load_checkpoint, save_checkpoint
from cdae.counterfactual import to_unit
from cdae.dataset import Dataset, Split
from cdae.diffusion import BetaSchedule, GaussianDiffusion
from cdae.errors import DataError, TrainingError
from cdae.model import CausalDiffAE
from cdae.progress import Progress, log


def select_device(choice: cfg.Device, key: str = "train.device") -> torch.device:
    """The torch device of a setting (``key`` names it in the error): auto = cuda when present."""
    if choice is cfg.Device.CUDA:
        if not torch.cuda.is_available():
            raise TrainingError(f"{key} (or --device) is cuda, but no CUDA device is available",
                                hint="use --device cpu or auto")
        return torch.device("cuda")
    if choice is cfg.Device.AUTO and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def build_model(params: cfg.Params, image_shape: tuple[int, int, int], label_mean: np.ndarray,
                label_std: np.ndarray) -> CausalDiffAE:
    diffusion = make_diffusion(params)
    return CausalDiffAE(params.graph, params.model, image_shape,
                        torch.as_tensor(label_mean, dtype=torch.float32),
                        torch.as_tensor(label_std, dtype=torch.float32),
                        prediction=params.diffusion.prediction,
                        schedule=(diffusion.sqrt_alphas_cumprod,
                                  diffusion.sqrt_one_minus_alphas_cumprod))


def make_diffusion(params: cfg.Params) -> GaussianDiffusion:
    return GaussianDiffusion(params.diffusion.timesteps,
                             BetaSchedule(params.diffusion.schedule.value))


def beta_at(step: int, tp: cfg.TrainParams) -> float:
    """KL weight: linear warm-up from 0 to beta_max over beta_warmup_steps."""
    if tp.beta_warmup_steps == 0:
        return tp.beta_max
    return tp.beta_max * min(1.0, step / tp.beta_warmup_steps)


def lr_factor(step: int, tp: cfg.TrainParams) -> float:
    """Multiplier of train.lr and train.mechanism_lr for the update made at ``step`` (0-based)
    of a run of ``tp.steps``: 1 (constant) or (1 + cos(pi step / steps)) / 2 (cosine)."""
    if tp.lr_schedule is cfg.LrSchedule.CONSTANT:
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * min(step, tp.steps) / tp.steps))


@dataclass
class LossParts:
    """The loss (with its graph) and its parts, detached 0-dim tensors on the loss's device: no
    host read-back, so a GPU step runs without waiting for the CPU (read them at log steps)."""

    total: torch.Tensor
    mse: torch.Tensor
    kl: torch.Tensor
    align: torch.Tensor
    mech: torch.Tensor


@dataclass
class Draws:
    """The random numbers of one training step, drawn before the model runs (so the
    deterministic rest, :func:`loss_terms`, can be compiled as one graph). Shapes are those of
    this process's rows of the batch."""

    posterior: torch.Tensor  # (B, K*d+S) N(0, 1): the encoder posterior's sample
    block_drop: torch.Tensor | None  # (B, K) bool: blocks replaced by the null (p_block_drop)
    uncond: torch.Tensor  # (B,) bool: images trained on the null condition (p_uncond)
    t: torch.Tensor  # (B,) long in [0, T-1]: diffusion timesteps
    noise: torch.Tensor  # (B, C, H, W) N(0, 1): the noise of q_sample
    mech_pick: torch.Tensor | None  # (M,) long: rows of the reference labels (mechanism_batch)


def draw_step(model: CausalDiffAE, diffusion: GaussianDiffusion, image_shape: torch.Size,
              tp: cfg.TrainParams, gen: torch.Generator, shard: slice | None = None,
              global_batch: int | None = None, reference: torch.Tensor | None = None) -> Draws:
    """All of one step's random numbers from ``gen``, in a fixed order. Data-parallel: drawn for
    the whole ``global_batch`` and sliced to ``shard``, so the ranks together reproduce one
    process's step. ``image_shape`` (B, C, H, W) is this process's batch."""
    b, dev = image_shape[0], gen.device
    rows = slice(None) if shard is None else shard
    gb = b if global_batch is None else global_batch

    def draw(fn: Callable[..., torch.Tensor], *shape: int, **kw: Any) -> torch.Tensor:
        return fn(*kw.pop("args", ()), (gb, *shape), generator=gen, device=dev, **kw)[rows]

    posterior = draw(torch.randn, model.cond_dim)
    # drawn only when on: the default run's random stream is unchanged
    block_drop = draw(torch.rand, model.k) < tp.p_block_drop if tp.p_block_drop > 0 else None
    uncond = draw(torch.rand) < tp.p_uncond
    t = draw(torch.randint, args=(0, diffusion.num_timesteps))
    noise = draw(torch.randn, *image_shape[1:])
    pick = None
    if (tp.mechanism_weight > 0 and tp.mechanism_batch and reference is not None
            and reference.shape[0]):
        pick = torch.randint(0, reference.shape[0], (tp.mechanism_batch,), generator=gen,
                             device=dev)
    return Draws(posterior, block_drop, uncond, t, noise, pick)


def image_loss(model: CausalDiffAE, diffusion: GaussianDiffusion, x0: torch.Tensor,
               y_norm: torch.Tensor, mask: torch.Tensor, draws: Draws, beta: torch.Tensor,
               tp: cfg.TrainParams) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                             torch.Tensor]:
    """The image terms of the loss, a deterministic function of its inputs (no host reads, no
    data-dependent shapes; part of :func:`loss_terms`). x0 (B, C, H, W) in [-1, 1];
    y_norm (B, K) standardised labels (masked ones are arbitrary); mask (B, K) bool; beta 0-dim
    tensor (the KL weight at this step).
    Returns (w_t mse + beta * kl_weight * (kl + align), mse, kl, align), 0-dim tensors."""
    b = x0.shape[0]
    mean, logvar = model.encode(x0)
    kl = 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).mean()
    std = (tp.posterior_var_scale * logvar.exp()).sqrt()
    u, style = model.split_latent(mean + std * draws.posterior)
    z = model.causal.causal_layer(u, frozen_mechanisms=tp.mechanism_fit is cfg.MechanismFit.LABELS)

    mu = model.causal.prior_mean(y_norm)
    # g_i is fitted by the mechanisms: only the categorical embeddings learn from the images
    mu = torch.where(model.is_categorical.view(1, -1, 1), mu, mu.detach())
    sigma = model.params.prior_sigma
    align_per = (z - mu).square().mean(-1) / (2.0 * sigma ** 2)  # (B, K)
    align = (align_per * mask.float()).sum(1).mean()

    c = model.condition(z, style)
    null = model.null(b).to(c.dtype)
    if draws.block_drop is not None:
        cols = draws.block_drop.repeat_interleave(model.d, dim=1)  # (B, K*d); style stays
        cols = torch.cat([cols, cols.new_zeros(b, c.shape[1] - cols.shape[1])], 1)
        c = torch.where(cols, null, c)
    c = torch.where(draws.uncond.unsqueeze(1), null, c)
    x_t = diffusion.q_sample(x0, draws.t, draws.noise)
    bf16 = {"cuda": tp.bf16, "cpu": tp.bf16_cpu}.get(x0.device.type, False)
    with torch.autocast(device_type=x0.device.type, dtype=torch.bfloat16, enabled=bf16):
        eps = model.eps(x_t, draws.t, c)
    per_image = (eps.float() - draws.noise).square().flatten(1).mean(1)  # (B,)
    mse = per_image.mean()
    if tp.loss_weighting is cfg.LossWeighting.MIN_SNR:
        # the same x0-space weighting for both predictions: min(SNR, g) / (SNR + 1) of the
        # v error is min(SNR, g) / SNR of the eps error
        denoise = (diffusion.min_snr_weight(draws.t, tp.min_snr_gamma) * per_image).mean()
    elif model.prediction is cfg.Prediction.V:
        # |v - v_hat|^2 = |eps - eps_hat|^2 / ab_t at the same x_t
        denoise = (per_image / diffusion.alphas_cumprod.to(draws.t.device)[draws.t]).mean()
    else:
        denoise = mse
    return denoise + beta * tp.kl_weight * (kl + align), mse, kl, align


def loss_terms(model: CausalDiffAE, diffusion: GaussianDiffusion, x0: torch.Tensor,
               y: torch.Tensor, mask: torch.Tensor, draws: Draws, beta: torch.Tensor,
               tp: cfg.TrainParams, reference: torch.Tensor | None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The whole loss of one step given its random numbers: (total, mse, kl, align, mech),
    0-dim tensors; :func:`image_loss` plus ``mechanism_weight`` times the mechanisms' label
    likelihood (:func:`mechanism_loss`). Deterministic, no host reads, no data-dependent
    shapes: ``train.compile`` compiles it whole."""
    y_norm = model.normalise(torch.where(mask, y, torch.zeros_like(y)))
    if tp.mechanism_weight > 0:
        mech = mechanism_loss(model.causal, y_norm, mask, draws.mech_pick, reference)
    else:
        mech = x0.new_zeros(())
    image, mse, kl, align = image_loss(model, diffusion, x0, y_norm, mask, draws, beta, tp)
    return image + tp.mechanism_weight * mech, mse, kl, align, mech


LossTerms = Callable[..., tuple[torch.Tensor, ...]]


def compute_loss(model: CausalDiffAE, diffusion: GaussianDiffusion, x0: torch.Tensor,
                 y: torch.Tensor, mask: torch.Tensor, step: int, tp: cfg.TrainParams,
                 gen: torch.Generator, shard: slice | None = None,
                 global_batch: int | None = None,
                 reference: torch.Tensor | None = None,
                 terms_fn: LossTerms = loss_terms,
                 beta: torch.Tensor | None = None) -> LossParts:
    """The per-batch loss of METHOD.md.

    x0 (B, C, H, W) in [-1, 1]; y (B, K) raw labels; mask (B, K) bool, the FIXED label mask.
    L = w_t mse + beta(step) * kl_weight * [KL(q(u|x) || N(0, I)) + sum_i m_i KL_i(align)]
        + mechanism_weight * NLL(mechanisms on labels). KLs are means over dimensions; w_t = 1,
    min(SNR_t, gamma) / SNR_t under ``loss_weighting: min_snr``, or 1 / ab_t for
    ``diffusion.prediction: v`` (the v error); ``mse`` reported is the unweighted eps error.
    Data-parallel: the rows are ``shard`` of a ``global_batch`` (see :func:`draw_step`).
    ``reference`` (M, K) standardised train labels fix the scale of the monotone prior maps
    (see :meth:`CausalLayer.mechanism_nll`). ``terms_fn`` is :func:`loss_terms` or its
    compiled form (``train.compile``); ``beta`` the 0-dim KL weight of ``step`` on x0's device
    when the caller holds it there already (the training loop: no host-to-device copy a step).
    """
    draws = draw_step(model, diffusion, x0.shape, tp, gen, shard, global_batch, reference)
    if beta is None:
        beta = torch.tensor(beta_at(step, tp), dtype=torch.float32, device=x0.device)
    total, mse, kl, align, mech = terms_fn(model, diffusion, x0, y, mask, draws, beta, tp,
                                           reference)
    return LossParts(total, mse.detach(), kl.detach(), align.detach(), mech.detach())


def mechanism_loss(causal: CausalLayer, y_norm: torch.Tensor, mask: torch.Tensor,
                   pick: torch.Tensor | None, reference: torch.Tensor | None) -> torch.Tensor:
    """The mechanisms' label likelihood (scalar). With ``pick`` (M,) rows of the ``reference``
    (N_train, K) standardised train labels (``train.mechanism_batch`` = M > 0: drawn from the
    whole train split with replacement, the same rows on every data-parallel rank), it is fitted
    on those labels, not on the image batch's (B, K) ``y_norm`` under ``mask``: labels cost
    nothing to evaluate, and a 32-label batch leaves the fitted intensity mechanism noisy
    (default profile's labels, 3 seeds: intensity counterfactual error under do(thickness)
    1.31-1.48 with 32 labels a step against 0.36-0.59 with 1024;
    ``benchmarks/bench_mechanism_fit.py``)."""
    if pick is not None and reference is not None:
        labels = reference[pick.to(reference.device)]
        return causal.mechanism_nll(labels, torch.isfinite(labels), reference)
    return causal.mechanism_nll(y_norm, mask, reference)


class EMA:
    """Exponential moving average of a module's parameters and buffers, with a warm-up.

    After ``n`` updates the decay is ``min(decay, (1 + n) / (10 + n))``. Without the warm-up a short
    run keeps ``decay**steps`` of the random initial weights in the average (18% after 1,700 steps
    at 0.999, with the UNet's zero-initialised output conv among them), which ruins counterfactuals
    of CPU-sized runs. Until the warm-up reaches ``decay`` (update 8,990 for 0.999) the average
    weighs step k's weights about as k^8 over the steps so far: a power-function EMA (Karras et
    al. 2024) with gamma 8 and relative length sigma_rel 0.09, whatever ``decay`` is.
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def decay_at(self, updates: int) -> float:
        """The decay used for update number ``updates`` (0-based)."""
        return min(self.decay, (1.0 + updates) / (10.0 + updates))

    @torch.no_grad()
    def update(self, model: torch.nn.Module, updates: int) -> None:
        """Blend ``model`` into the average; ``updates`` = optimizer steps taken before this one.
        One multi-tensor lerp for all floating-point tensors (one kernel launch per group on a
        GPU instead of one per tensor)."""
        weight = 1.0 - self.decay_at(updates)
        shadow, current = [], []
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                shadow.append(self.shadow[k])
                current.append(v)
            else:
                self.shadow[k].copy_(v)
        if shadow:
            torch._foreach_lerp_(shadow, current, weight)


class _StopFlag:
    """Turns SIGTERM/SIGINT into a flag checked after each step (SLURM preemption)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "_StopFlag":
        for s in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread: signals stay with the caller
                log.debug("train: no %s handler outside the main thread", s.name)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        self.signum = signum

    def __exit__(self, *exc: Any) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


class _LossModule(torch.nn.Module):
    """The whole training loss as one module, so DistributedDataParallel can wrap it:
    forward(...) = compute_loss(model, diffusion, ...)."""

    def __init__(self, model: CausalDiffAE, diffusion: GaussianDiffusion,
                 reference: torch.Tensor, tp: cfg.TrainParams,
                 terms_fn: LossTerms = loss_terms) -> None:
        super().__init__()
        self.model = model
        self.diffusion = diffusion
        self.reference = reference  # (N_train, K) standardised labels, NaN = missing
        self.terms_fn = terms_fn
        # beta of every step, on the device once (indexing it needs no host-to-device copy)
        self.betas = torch.tensor([beta_at(i, tp) for i in range(tp.steps + 1)],
                                  dtype=torch.float32, device=reference.device)

    def forward(self, x0: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, step: int,
                tp: cfg.TrainParams, gen: torch.Generator, shard: slice | None,
                global_batch: int) -> LossParts:
        return compute_loss(self.model, self.diffusion, x0, y, mask, step, tp, gen, shard,
                            global_batch, self.reference, self.terms_fn, self.betas[step])


@dataclass
class TrainResult:
    step: int
    stopped_by_signal: bool
    seconds: float
    images_per_second: float
    log_rows: list[dict[str, float]]
    is_main: bool = True  # False on data-parallel ranks other than 0: they write nothing
    out_of_time: bool = False  # stopped by train.max_minutes before train.steps (model written)


def label_quantiles(labels: np.ndarray, graph: Any) -> list[list[float]]:
    """Percentiles 0..100 (101 values) of each continuous variable's train labels (NaN rows for
    categorical variables); kept in the checkpoint to warn about out-of-support interventions."""
    out = []
    for j, v in enumerate(graph.variables):
        col = labels[:, j][np.isfinite(labels[:, j])]
        if v.is_categorical or col.size == 0:
            out.append([float("nan")] * 101)
        else:
            out.append([float(q) for q in np.percentile(col, np.arange(101))])
    return out


class BatchIndices:
    """The examples of each training step, as device tensors: epoch e is the permutation drawn
    from (seed, e), cut into n // batch steps (the whole permutation when n < batch). Each
    epoch's permutation is copied to the device once and a step takes a slice of it (a
    host-to-device copy from pageable memory waits for the device, so one a step would stall a
    GPU's queue). A run resumed at step k gets the same batches as the uninterrupted run."""

    def __init__(self, n: int, batch: int, seed: int, device: torch.device) -> None:
        self.n, self.batch, self.seed, self.device = n, batch, seed, device
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def __call__(self, step: int) -> torch.Tensor:
        epoch, k = divmod(step, max(self.n // self.batch, 1))
        if epoch != self._epoch:
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            self._epoch, self._perm = epoch, torch.as_tensor(perm, device=self.device)
        return (self._perm[k * self.batch:(k + 1) * self.batch] if self.n >= self.batch
                else self._perm)


def train(params: cfg.Params, dataset: Dataset, out_dir: Path, *,
          on_log: Callable[[dict[str, float]], None] | None = None,
          resume: bool = True, show_progress: bool = True) -> TrainResult:
    """Train a CausalDiffAE on the train split of ``dataset``; write checkpoints into out_dir.

    ``out_dir/checkpoint.pt`` is written every ``train.checkpoint_every`` steps and when a
    SIGTERM/SIGINT arrives; ``out_dir/model.pt`` when all steps are done, or at the first step
    that ends after ``train.max_minutes`` of this call's training loop (a time-boxed run, e.g.
    a cluster job's limit; every data-parallel rank stops at the same step). With ``resume`` a
    checkpoint (or a time-boxed model.pt) of the same configuration continues where it stopped.
    """
    tp = params.train
    if tp.threads:
        torch.set_num_threads(tp.threads)
    device = select_device(tp.device)
    dist_info = distributed.setup(device.type, tp.batch_size)
    if device.type == "cuda" and dist_info.enabled:
        device = torch.device("cuda", dist_info.local_rank)
    main = dist_info.is_main
    shard = dist_info.shard(tp.batch_size) if dist_info.enabled else None
    torch.manual_seed(tp.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    train_idx = dataset.indices(Split.TRAIN)
    if train_idx.size == 0:
        raise DataError("the train split is empty", hint="check data.test_fraction and the source")
    if tp.batch_size > train_idx.size:
        raise DataError(f"train.batch_size {tp.batch_size} is larger than the train split "
                        f"({train_idx.size} images)", hint="lower train.batch_size")
    images = to_unit(dataset.images[train_idx]).to(device)
    mask_np = dataset.label_mask[train_idx] & np.isfinite(dataset.labels[train_idx])
    labels = torch.as_tensor(np.where(mask_np, dataset.labels[train_idx], np.nan),
                             dtype=torch.float32, device=device)
    mask = torch.as_tensor(mask_np, device=device)

    model = build_model(params, dataset.image_shape, dataset.label_mean, dataset.label_std)
    model.to(device)
    if device.type == "cuda":
        model.unet.to(memory_format=torch.channels_last)
    mech_params = [*model.causal.mechanisms.parameters(), *model.causal.monotone.parameters()]
    mech_ids = {id(q) for q in mech_params}
    other = [q for q in model.parameters() if id(q) not in mech_ids]
    opt = torch.optim.AdamW([{"params": other, "lr": tp.lr},
                             {"params": mech_params, "lr": tp.mechanism_lr}],
                            lr=tp.lr, weight_decay=tp.weight_decay,
                            fused=device.type == "cuda" or None)  # CUDA: one fused kernel group
    ema = EMA(model, tp.ema_decay)
    diffusion = make_diffusion(params).to(device)
    with torch.no_grad():
        reference = model.normalise(labels)  # NaN where a label is missing
    # train.compile: the whole loss (encoder, causal layer, mechanisms, UNet forward and their
    # backward) as one compiled graph; what it saves is mostly host time per kernel launch
    # (README: Performance). The weights' keys and values are those of the plain modules.
    terms_fn: LossTerms = (torch.compile(loss_terms, dynamic=False, mode=tp.compile_mode.value)
                           if tp.compile else loss_terms)
    cuda_graphs = (tp.compile and tp.compile_mode is cfg.CompileMode.REDUCE_OVERHEAD
                   and device.type == "cuda")
    loss_module: torch.nn.Module = _LossModule(model, diffusion, reference, tp, terms_fn)
    if dist_info.enabled:
        from torch.nn.parallel import DistributedDataParallel

        loss_module = DistributedDataParallel(
            loss_module, device_ids=[device.index] if device.type == "cuda" else None)
    params_dict = cfg.to_dict(params)
    chash = config_hash(params_dict)
    start = 0
    log_rows: list[dict[str, float]] = []
    ck_path = out_dir / "checkpoint.pt"
    final_path = out_dir / "model.pt"
    source = ck_path if ck_path.is_file() else final_path
    if resume and source.is_file():
        ck = load_checkpoint(source, map_location=device)
        # the hash of the stored params, read with the settings added since (LEGACY_SETTINGS),
        # not the hash stored beside them: a run from before a setting existed resumes
        same = (config_hash(ck["params"]) if isinstance(ck["params"], dict)
                else ck.get("config_hash")) == chash
        if same and int(ck["step"]) <= tp.steps:
            ema.shadow = {k: v.to(device) for k, v in ck["ema"].items()}
            full = "model" in ck and "optimizer" in ck
            if full:
                model.load_state_dict(ck["model"])
                opt.load_state_dict(ck["optimizer"])
            else:  # EMA weights alone (e.g. the model.pt scripts/gpu_run.sh returns): warm start
                model.load_state_dict(ck["ema"])
            start = int(ck["step"])
            log_rows = list(ck.get("log", []))
            if main:
                log.info("resuming from %s at step %d%s", source, start, "" if full else
                         " (EMA weights alone: the weights start from them, the optimizer afresh)")
        elif main:
            log.info("starting afresh: %s was written for other settings", source)

    # the support of the labels training sees (data.labeled_fraction's mask applied)
    quantiles = label_quantiles(np.where(mask_np, dataset.labels[train_idx], np.nan),
                                params.graph)

    def payload(step: int) -> dict[str, Any]:
        raw = model.state_dict()
        return {"params": params_dict, "graph": params.graph.to_json(),
                "image_shape": list(dataset.image_shape),
                "label_mean": [float(v) for v in dataset.label_mean],
                "label_std": [float(v) for v in dataset.label_std],
                "label_quantiles": quantiles,
                "step": step, "total_steps": tp.steps, "config_hash": chash,
                "model": {k: v.detach().cpu() for k, v in raw.items()},
                "ema": {k: v.detach().cpu() for k, v in ema.shadow.items()},
                "optimizer": opt.state_dict(), "log": log_rows}

    n = train_idx.size
    batches = BatchIndices(n, tp.batch_size, tp.seed, device)
    t0 = time.perf_counter()
    budget = tp.max_minutes * 60.0  # seconds of this invocation's training loop, 0 = none
    stopped = False
    out_of_time = False
    step = start
    keys = ("loss", "mse", "kl", "align", "mech")
    acc = torch.zeros(len(keys), dtype=torch.float64, device=device)  # sums since the last row
    acc_n = 0
    checked = start  # the losses up to this step are known to be finite
    shown: dict[str, float] = {}  # what the progress bar shows: the last logged mean loss
    model.train()
    with _StopFlag() as stop, Progress(tp.steps, "train", unit="step", start=start,
                                       enabled=show_progress and main) as bar:
        while step < tp.steps:
            if cuda_graphs:  # a new step: the graphs may reuse the last step's output memory
                torch.compiler.cudagraph_mark_step_begin()
            idx = batches(step)
            idx = idx if shard is None else idx[shard]
            gen = torch.Generator(device=device).manual_seed(tp.seed * 1_000_003 + step)
            parts = loss_module(images[idx], labels[idx], mask[idx], step, tp, gen, shard,
                                tp.batch_size)
            loss = parts.total
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if tp.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tp.grad_clip)
            factor = lr_factor(step, tp)
            for group, base in zip(opt.param_groups, (tp.lr, tp.mechanism_lr)):
                group["lr"] = base * factor
            opt.step()
            ema.update(model, step)
            step += 1
            acc += torch.stack([loss.detach(), parts.mse, parts.kl, parts.align,
                                parts.mech]).double()
            acc_n += 1
            late = budget > 0 and time.perf_counter() - t0 >= budget
            signalled, timed_out = distributed.any_flag(
                dist_info, [float(stop.signum is not None), float(late)], device)
            log_now = step % tp.log_every == 0 or step == tp.steps
            if log_now or signalled or timed_out or step % tp.checkpoint_every == 0:
                # the loop's only read-back: before anything is logged or saved, the losses since
                # the last check must be finite (a diverged step never reaches a file)
                sums = acc.tolist()
                (bad,) = distributed.any_flag(
                    dist_info, [float(not all(map(math.isfinite, sums)))], device)
                if bad:
                    distributed.teardown(dist_info)
                    raise TrainingError(f"non-finite loss between steps {checked + 1} and {step}",
                                        hint="lower train.lr; the last good checkpoint is "
                                        f"{ck_path}")
                checked = step
            if log_now:
                means = distributed.mean_over_ranks(
                    dist_info, {k: v / acc_n for k, v in zip(keys, sums)}, device)
                row = {"step": float(step), **means, "beta": beta_at(step, tp)}
                log_rows.append(row)
                if on_log is not None and main:
                    on_log(row)
                acc.zero_()
                acc_n = 0
                shown = {"loss": means["loss"]}
            bar.advance(1, **shown)
            if signalled:
                if main:
                    save_checkpoint(ck_path, payload(step))
                    log.warning("received signal %d: saved %s at step %d; run `cdae train` "
                                "again to resume", stop.signum or signal.SIGTERM, ck_path, step)
                stopped = True
                break
            if timed_out:
                if main:
                    log.info("train.max_minutes (%g) reached at step %d of %d: writing the model "
                             "now; `cdae train` again continues it", tp.max_minutes, step,
                             tp.steps)
                out_of_time = True
                break
            if step % tp.checkpoint_every == 0 and step < tp.steps and main:
                save_checkpoint(ck_path, payload(step))
    seconds = time.perf_counter() - t0
    if not stopped and main:
        save_checkpoint(final_path, payload(step))
        if ck_path.exists():
            ck_path.unlink()
    distributed.teardown(dist_info)
    done = step - start
    ips = done * tp.batch_size / max(seconds, 1e-9)
    if math.isfinite(ips) and main:
        log.info("trained %d steps in %.1f s (%.1f images/s on %s)", done, seconds, ips, device)
    return TrainResult(step, stopped, seconds, ips, log_rows, main, out_of_time)
