"""Gaussian diffusion math: noise schedules, the epsilon-prediction loss and deterministic DDIM.

Notation follows Ho et al. (2020) / Nichol & Dhariwal (2021, "improved-diffusion"):

* ``betas[t]`` is beta_t, ``alphas_cumprod[t]`` is alpha_bar_t = prod_{s<=t} (1 - beta_s), for
  t = 0 .. T-1 (T = ``num_timesteps``).
* The forward process is q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I).
* The model predicts epsilon: ``model_fn(x_t, t) -> eps``.

Deterministic DDIM (Song et al., 2021, eta = 0) moves between two arbitrary timesteps ``t`` and
``t_next`` of the same trajectory::

    x0_pred = (x_t - sqrt(1 - alpha_bar_t) * eps) / sqrt(alpha_bar_t)
    x_next  = sqrt(alpha_bar_next) * x0_pred + sqrt(1 - alpha_bar_next) * eps

Timestep ``-1`` stands for the clean image (alpha_bar = 1), so a step to ``t_next = -1`` returns
``x0_pred`` and a step from ``t = -1`` starts from a clean image. The same formula runs both
directions (decoding: ``t_next < t``; inversion: ``t_next > t``).

Grid and evaluation points (identical in both directions, so inversion followed by sampling with
the same ``eps_fn`` retraces the same timesteps): ``timesteps(S, t_end)`` returns the ascending grid
``g_0 = 0 < g_1 < ... < g_{S-1} = t_end``; with ``g_{-1} = -1`` (the clean image),

* ``ddim_sample`` runs S steps ``g_i -> g_{i-1}`` for i = S-1 .. 0, evaluating
  ``eps_fn(x_{g_i}, g_i)``;
* ``ddim_invert`` runs S steps ``g_{i-1} -> g_i`` for i = 0 .. S-1, evaluating
  ``eps_fn(x_{g_{i-1}}, g_i)``: the model is asked at the TARGET timestep (as in diffusers'
  DDIMInverseScheduler and null-text inversion), so each inversion step uses the same timestep as
  the sampling step that undoes it and differs only in the input image (x_{g_{i-1}} instead of the
  unknown x_{g_i}). This also makes the first step from the clean image well defined. On the
  round-trip test's eps_fn (tests/test_diffusion.py, 50 steps) it gave a mean round-trip error of
  0.035 against 0.054 for the alternative that asks at the source timestep (0.025 against 0.049
  without the test's UNet term). ``fixed_point_iters=K`` removes most of the
  remaining error by solving each inversion step implicitly (K extra eps_fn calls per step).

Solvers and grids (``Solver``, ``Spacing`` in cdae.config): a DDIM step is the Euler step of the
probability-flow ODE d(x / sqrt(ab)) = eps d(sqrt((1 - ab) / ab)); ``Solver.HEUN`` adds the
second-order correction (:meth:`GaussianDiffusion.heun_step`, two eps calls per step, the last
step to the clean image stays Euler), and ``ddim_invert`` inverts either exactly by fixed-point
iterations. ``Spacing.QUADRATIC`` makes the grid's steps grow linearly away from the clean image.
On the trained default model, Heun on the quadratic grid with 3 iterations at 20 steps matched
250 uniform DDIM steps with 4.3x fewer calls (docs/performance.md).

Clipping: the predicted x0 is clipped to [-1, 1] only on the last decoding step (``t_next == -1``,
where x_next IS x0_pred), controlled by ``ddim_sample(clip_output=True)``. That equals clamping the
returned image and never alters the trajectory; intermediate predictions are never clipped, and
inversion never clips, because clipping makes a DDIM step non-invertible.

All schedule arrays are computed in float64 and stored as float32 tensors; DDIM coefficients are
gathered from precomputed float64-derived square-root tables and cast to the image's dtype, so a
float64 image gets a float64 update.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from enum import Enum

import numpy as np
import torch
from torch import Tensor

from cdae.config import Solver, Spacing

EpsFn = Callable[[Tensor, Tensor], Tensor]
"""``eps_fn(x (B, C, H, W), t (B,) long) -> eps (B, C, H, W)``."""

ProgressFn = Callable[[int], None]
"""``progress(step_index)``, called after each completed step with index 0 .. S-1."""

CLEAN_TIMESTEP = -1
"""The timestep index that stands for the clean image (alpha_bar = 1)."""

LINEAR_BETA_START = 1e-4
LINEAR_BETA_END = 0.02
LINEAR_REFERENCE_STEPS = 1000
COSINE_OFFSET_S = 0.008
COSINE_MAX_BETA = 0.999


class BetaSchedule(str, Enum):
    """The noise schedule beta_t."""

    LINEAR = "linear"
    """Ho et al.: beta linear from 1e-4 to 0.02, both scaled by 1000 / T (improved-diffusion)."""
    COSINE = "cosine"
    """Nichol & Dhariwal: alpha_bar(t) = cos^2(((t/T + s) / (1 + s)) * pi/2), s = 0.008, beta <= 0.999."""


def make_betas(schedule: BetaSchedule, num_timesteps: int) -> np.ndarray:
    """Return beta_t for t = 0 .. T-1 as a float64 array of shape (T,)."""
    schedule = BetaSchedule(schedule)
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
    if schedule is BetaSchedule.LINEAR:
        scale = LINEAR_REFERENCE_STEPS / num_timesteps
        return np.linspace(
            scale * LINEAR_BETA_START, scale * LINEAR_BETA_END, num_timesteps, dtype=np.float64
        )

    def alpha_bar(frac: np.ndarray) -> np.ndarray:
        return np.cos((frac + COSINE_OFFSET_S) / (1.0 + COSINE_OFFSET_S) * math.pi / 2.0) ** 2

    steps = np.arange(num_timesteps, dtype=np.float64)
    ratio = alpha_bar((steps + 1.0) / num_timesteps) / alpha_bar(steps / num_timesteps)
    return np.minimum(1.0 - ratio, COSINE_MAX_BETA)


def _gather(table: Tensor, index: Tensor, like: Tensor) -> Tensor:
    """``table[index]`` as shape (B, 1, ..., 1) broadcastable against ``like`` (B, ...), on its
    device and in its dtype (tables on another device still work, at the cost of a copy)."""
    values = table[index.to(table.device)].to(device=like.device, dtype=like.dtype)
    return values.reshape(index.shape[0], *([1] * (like.dim() - 1)))


class GaussianDiffusion:
    """Schedule tables plus the forward process, the training loss and deterministic DDIM.

    A plain object (not an ``nn.Module``): tables are float32 tensors computed in float64; move them
    with :meth:`to`. Public tables, all of shape (T,): ``betas``, ``alphas_cumprod``,
    ``sqrt_alphas_cumprod``, ``sqrt_one_minus_alphas_cumprod``.
    """

    def __init__(
        self, num_timesteps: int = 1000, schedule: BetaSchedule = BetaSchedule.LINEAR
    ) -> None:
        self.num_timesteps = int(num_timesteps)
        self.schedule = BetaSchedule(schedule)
        betas = make_betas(self.schedule, self.num_timesteps)
        alphas_cumprod = np.cumprod(1.0 - betas)
        sqrt_ab = np.sqrt(alphas_cumprod)
        sqrt_1m_ab = np.sqrt(1.0 - alphas_cumprod)

        def f32(a: np.ndarray) -> Tensor:
            return torch.from_numpy(a.astype(np.float32))

        self.betas = f32(betas)
        self.alphas_cumprod = f32(alphas_cumprod)
        self.sqrt_alphas_cumprod = f32(sqrt_ab)
        self.sqrt_one_minus_alphas_cumprod = f32(sqrt_1m_ab)
        # Index t + 1, so that entry 0 is the clean image (t = -1): sqrt(alpha_bar) = 1, sqrt(1-.) = 0.
        self._sqrt_ab_padded = f32(np.concatenate([[1.0], sqrt_ab]))
        self._sqrt_1m_ab_padded = f32(np.concatenate([[0.0], sqrt_1m_ab]))

    _TABLES = (
        "betas",
        "alphas_cumprod",
        "sqrt_alphas_cumprod",
        "sqrt_one_minus_alphas_cumprod",
        "_sqrt_ab_padded",
        "_sqrt_1m_ab_padded",
    )

    @property
    def device(self) -> torch.device:
        return self.betas.device

    def to(self, device: torch.device | str) -> GaussianDiffusion:
        """Move every table to ``device`` in place; returns ``self``."""
        for name in self._TABLES:
            setattr(self, name, getattr(self, name).to(device))
        return self

    # ------------------------------------------------------------------ training

    def sample_timesteps(
        self, batch_size: int, device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Uniform training timesteps t ~ U{0 .. T-1}: LongTensor (batch_size,)."""
        device = self.device if device is None else device
        return torch.randint(
            0, self.num_timesteps, (batch_size,), device=device, generator=generator
        )

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor | None = None) -> Tensor:
        """Sample x_t ~ q(x_t | x_0) = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise.

        x0: (B, C, H, W); t: LongTensor (B,) in [0, T-1]; noise: like x0 (standard normal if None).
        Returns x_t: (B, C, H, W).
        """
        if noise is None:
            noise = torch.randn_like(x0)
        return (
            _gather(self.sqrt_alphas_cumprod, t, x0) * x0
            + _gather(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise
        )

    def snr(self, t: Tensor) -> Tensor:
        """Signal-to-noise ratio alpha_bar_t / (1 - alpha_bar_t) of timesteps t (B,) long -> (B,)."""
        ab = self.alphas_cumprod.to(t.device)[t]
        return ab / (1.0 - ab)

    def min_snr_weight(self, t: Tensor, gamma: float) -> Tensor:
        """Min-SNR-gamma weight of the epsilon-prediction error (Hang et al. 2023):
        min(SNR_t, gamma) / SNR_t, (B,) in (0, 1]; 1 wherever SNR_t <= gamma (noisy t), falling
        as gamma / SNR_t towards the clean image, where predicting the noise is easy and its
        error says little about x0."""
        snr = self.snr(t)
        return torch.clamp(snr, max=gamma) / snr

    def training_loss(
        self, model_fn: EpsFn, x0: Tensor, t: Tensor, noise: Tensor | None = None
    ) -> Tensor:
        """Per-example epsilon-prediction MSE, averaged over all non-batch dims.

        model_fn(x_t (B, C, H, W), t (B,) long) -> eps (B, C, H, W); x0: (B, C, H, W);
        t: LongTensor (B,); noise: like x0 (standard normal if None). Returns (B,).
        """
        if noise is None:
            noise = torch.randn_like(x0)
        x_t = self.q_sample(x0, t, noise)
        eps = model_fn(x_t, t)
        return (noise - eps).square().flatten(1).mean(dim=1)

    # ------------------------------------------------------------------ DDIM

    def timesteps(self, num_steps: int, t_start: int | None = None,
                  spacing: Spacing = Spacing.UNIFORM) -> Tensor:
        """The respaced DDIM grid: LongTensor (num_steps,), strictly ascending, from 0 to t_end.

        With t_end = ``t_start`` (default T-1), S = ``num_steps`` and d = S - 1, entry i is
        (exact integer arithmetic, round half up)

        * UNIFORM: ``round(i * t_end / d)``; spacings differ by at most one.
          Example: T = 1000, S = 50 -> 0, 20, 41, 61, ..., 979, 999.
        * QUADRATIC: ``max(round(i^2 * t_end / d^2), entry_{i-1} + 1)``: steps grow linearly
          from the clean end (DDIM paper, section D.2), where a uniform grid makes its largest
          jumps in log-SNR. Example: T = 1000, t_end = 699, S = 11 -> 0, 7, 28, 63, ..., 566, 699.
          Never exceeds t_end: t_end - round(r^2 t_end) >= t_end (1 - r) >= d - i for r = i / d.

        S = 1 gives ``[t_end]``. Raises ValueError if S < 1, t_end is outside [0, T-1], or
        S > t_end + 1.
        """
        t_end = self.num_timesteps - 1 if t_start is None else int(t_start)
        if not 0 <= t_end < self.num_timesteps:
            raise ValueError(f"t_start must be in [0, {self.num_timesteps - 1}], got {t_start}")
        if num_steps < 1 or num_steps > t_end + 1:
            raise ValueError(
                f"num_steps must be in [1, {t_end + 1}] for a grid ending at t={t_end}, "
                f"got {num_steps}"
            )
        if num_steps == 1:
            return torch.tensor([t_end], dtype=torch.long)
        d = num_steps - 1
        spacing = Spacing(spacing)
        if spacing is Spacing.UNIFORM:
            grid = [(2 * i * t_end + d) // (2 * d) for i in range(num_steps)]
        else:
            grid = []
            for i in range(num_steps):
                t = (2 * i * i * t_end + d * d) // (2 * d * d)
                grid.append(t if not grid or t > grid[-1] else grid[-1] + 1)
        return torch.tensor(grid, dtype=torch.long)

    def predict_x0(self, x_t: Tensor, eps: Tensor, t: int | Tensor) -> Tensor:
        """x0_pred = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t); t may be -1 (clean)."""
        index = self._padded_index(t, x_t)
        return (x_t - _gather(self._sqrt_1m_ab_padded, index, x_t) * eps) / _gather(
            self._sqrt_ab_padded, index, x_t
        )

    def ddim_step(
        self, x_t: Tensor, eps: Tensor, t: int | Tensor, t_next: int | Tensor,
        clip_x0: bool = False,
    ) -> Tensor:
        """One deterministic DDIM (eta = 0) move from timestep ``t`` to ``t_next``.

        x_t, eps: (B, C, H, W); t, t_next: int or LongTensor (B,), each in [-1, T-1] where -1 is
        the clean image. Works in both directions. ``clip_x0`` clamps x0_pred to [-1, 1]; keep it
        False except on a final decoding step (see the module docstring).
        Returns x_next: (B, C, H, W), in x_t's dtype.
        """
        x0_pred = self.predict_x0(x_t, eps, t)
        if clip_x0:
            x0_pred = x0_pred.clamp(-1.0, 1.0)
        index_next = self._padded_index(t_next, x_t)
        return (
            _gather(self._sqrt_ab_padded, index_next, x_t) * x0_pred
            + _gather(self._sqrt_1m_ab_padded, index_next, x_t) * eps
        )

    def heun_step(self, x_t: Tensor, eps_fn: EpsFn, t: int, t_next: int,
                  eps_t: Tensor | None = None) -> Tensor:
        """One Heun (2nd-order) step of the probability-flow ODE from ``t`` to ``t_next`` >= 0.

        In DDIM's variables xbar = x / sqrt(ab), sigma = sqrt((1 - ab) / ab) the ODE is
        d xbar / d sigma = eps(x, t), and a DDIM step is its Euler step, linear in eps. Heun
        takes the Euler step to ``t_next``, evaluates eps there, and repeats the step from x_t
        with the mean of both: ``ddim_step(x_t, (eps_t + eps(x_euler, t_next)) / 2, t, t_next)``.
        x_t: (B, C, H, W); eps_t: eps_fn(x_t, t) when the caller has it (else computed).
        Costs 2 eps_fn calls (1 with ``eps_t``). Returns x_{t_next}: (B, C, H, W).
        """
        if eps_t is None:
            eps_t = eps_fn(x_t, self._batch_t(t, x_t))
        x_euler = self.ddim_step(x_t, eps_t, t, t_next)
        eps_next = eps_fn(x_euler, self._batch_t(t_next, x_t))
        return self.ddim_step(x_t, 0.5 * (eps_t + eps_next), t, t_next)

    @staticmethod
    def network_evaluations(num_steps: int, solver: Solver = Solver.DDIM,
                            fixed_point_iters: int | None = None) -> int:
        """eps_fn calls of ``ddim_sample`` (``fixed_point_iters`` None) or of ``ddim_invert`` with
        K = ``fixed_point_iters``, for S = ``num_steps`` grid points: DDIM S / S (K + 1); Heun
        2S - 1 / K + 1 + (S - 1)(2K + 1) (the step to the clean image is an Euler step)."""
        if Solver(solver) is Solver.DDIM:
            return num_steps if fixed_point_iters is None else num_steps * (fixed_point_iters + 1)
        if fixed_point_iters is None:
            return 2 * num_steps - 1
        return fixed_point_iters + 1 + (num_steps - 1) * (2 * fixed_point_iters + 1)

    @torch.no_grad()
    def ddim_invert(
        self, x0: Tensor, eps_fn: EpsFn, num_steps: int, t_stop: int | None = None,
        progress: ProgressFn | None = None, fixed_point_iters: int = 0,
        solver: Solver = Solver.DDIM, spacing: Spacing = Spacing.UNIFORM,
    ) -> Tensor:
        """Deterministic inversion of clean images x0 to the grid's last timestep.

        x0: (B, C, H, W) in [-1, 1]; eps_fn(x (B, C, H, W), t (B,) long) -> eps; num_steps: S
        grid points of ``timesteps(S, t_stop, spacing)``; t_stop: last grid timestep (default
        T-1; smaller for partial inversion). Runs under ``torch.no_grad``; never clips.
        Returns x_{t_stop}: (B, C, H, W).

        Each step solves for the x_to whose decoding step (of ``solver``, as ``ddim_sample`` takes
        it) lands on x_from. The first guess is the explicit DDIM step with eps at x_from (DDIM:
        at the target timestep, see the module docstring; Heun: at x_from's own timestep, which
        measured better: null-intervention L1 0.49 against 2.0 with K = 1, 15 quadratic steps);
        ``fixed_point_iters`` = K > 0 refines it by K fixed-point iterations
        ``x_to <- inverse of the decoding step with the eps it evaluates at x_to``, so
        invert-then-sample round-trips to the fixed point's accuracy instead of the plain scheme's
        first-order error. eps_fn calls: :meth:`network_evaluations`.
        """
        if fixed_point_iters < 0:
            raise ValueError(f"fixed_point_iters must be >= 0, got {fixed_point_iters}")
        solver = Solver(solver)
        grid = self.timesteps(num_steps, t_stop, spacing).tolist()
        x = x0
        t_from = CLEAN_TIMESTEP
        for step, t_to in enumerate(grid):
            t_batch = self._batch_t(t_to, x)
            if solver is Solver.DDIM or t_from == CLEAN_TIMESTEP:
                # Decoding t_to -> t_from is one DDIM step with eps(x_to, t_to).
                x_to = self.ddim_step(x, eps_fn(x, t_batch), t_from, t_to)
                for _ in range(fixed_point_iters):
                    x_to = self.ddim_step(x, eps_fn(x_to, t_batch), t_from, t_to)
            else:
                # Decoding t_to -> t_from is heun_step: DDIM with the mean of eps(x_to, t_to)
                # and eps(x_euler, t_from) (x_euler ~ x_from); the same mean inverts it exactly
                # (linear in eps). The guess takes eps(x_from, t_from), that mean's second term.
                from_batch = self._batch_t(t_from, x)
                x_to = self.ddim_step(x, eps_fn(x, from_batch), t_from, t_to)
                for _ in range(fixed_point_iters):
                    eps_to = eps_fn(x_to, t_batch)
                    eps_euler = eps_fn(self.ddim_step(x_to, eps_to, t_to, t_from), from_batch)
                    x_to = self.ddim_step(x, 0.5 * (eps_to + eps_euler), t_from, t_to)
            x, t_from = x_to, t_to
            if progress is not None:
                progress(step)
        return x

    @torch.no_grad()
    def ddim_sample(
        self, x_T: Tensor, eps_fn: EpsFn, num_steps: int, t_start: int | None = None,
        progress: ProgressFn | None = None, clip_output: bool = True,
        solver: Solver = Solver.DDIM, spacing: Spacing = Spacing.UNIFORM,
    ) -> Tensor:
        """Deterministic decoding from the grid's last timestep to the clean image.

        x_T: (B, C, H, W) at timestep ``t_start`` (default T-1); eps_fn as in :meth:`ddim_invert`;
        num_steps: S grid points, the same grid as ``ddim_invert(num_steps, t_stop=t_start,
        spacing=spacing)``. ``solver`` DDIM takes one DDIM step per grid interval, HEUN one
        :meth:`heun_step` (the last step, to the clean image where eps is undefined, is a DDIM
        step). ``clip_output`` clamps only the final x0 prediction to [-1, 1].
        Runs under ``torch.no_grad``. Returns x0: (B, C, H, W).
        """
        solver = Solver(solver)
        grid = self.timesteps(num_steps, t_start, spacing).tolist()
        x = x_T
        for step, i in enumerate(range(len(grid) - 1, -1, -1)):
            t_from = grid[i]
            t_to = grid[i - 1] if i > 0 else CLEAN_TIMESTEP
            eps = eps_fn(x, self._batch_t(t_from, x))
            if solver is Solver.HEUN and t_to != CLEAN_TIMESTEP:
                x = self.heun_step(x, eps_fn, t_from, t_to, eps_t=eps)
            else:
                x = self.ddim_step(
                    x, eps, t_from, t_to, clip_x0=clip_output and t_to == CLEAN_TIMESTEP
                )
            if progress is not None:
                progress(step)
        return x

    # ------------------------------------------------------------------ helpers

    def _padded_index(self, t: int | Tensor, like: Tensor) -> Tensor:
        """Index into the padded tables for timestep(s) ``t`` in [-1, T-1]: LongTensor (B,)."""
        if isinstance(t, Tensor):
            if t.dim() == 0:
                t = t.expand(like.shape[0])
            return t.to(device=self.device, dtype=torch.long) + 1
        if not CLEAN_TIMESTEP <= t < self.num_timesteps:
            raise ValueError(f"timestep must be in [-1, {self.num_timesteps - 1}], got {t}")
        return torch.full((like.shape[0],), t + 1, dtype=torch.long, device=self.device)

    @staticmethod
    def _batch_t(t: int, like: Tensor) -> Tensor:
        """Timestep ``t`` repeated for the batch of ``like``: LongTensor (B,) on like's device."""
        return torch.full((like.shape[0],), t, dtype=torch.long, device=like.device)


def guided_eps_fn(
    model: Callable[[Tensor, Tensor, Tensor], Tensor], cond: Tensor, null_cond: Tensor,
    scale: float,
) -> EpsFn:
    """Classifier-free-guided eps_fn: eps~ = eps(x, t, c) + s * (eps(x, t, c) - eps(x, t, null)).

    model(x (N, C, H, W), t (N,) long, cond (N, D)) -> eps (N, C, H, W); cond: (B, D);
    null_cond: (D,) or (B, D) (a (D,) learned null vector is broadcast over the batch); scale: s.
    For s != 0 the conditional and null branches run as ONE forward on a batch of 2B
    (``[x; x]``, ``[t; t]``, ``[cond; null]``) that is split in halves; for s == 0 a single plain
    conditional forward on B examples. Returns ``eps_fn(x (B, C, H, W), t (B,)) -> (B, C, H, W)``.
    """
    scale = float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"guidance scale must be finite, got {scale}")
    if scale == 0.0:
        def conditional_eps(x: Tensor, t: Tensor) -> Tensor:
            return model(x, t, cond)

        return conditional_eps

    null_batch = null_cond.expand_as(cond).to(dtype=cond.dtype)
    cond_pair = torch.cat([cond, null_batch], dim=0)

    def guided_eps(x: Tensor, t: Tensor) -> Tensor:
        eps_cond, eps_null = model(torch.cat([x, x]), torch.cat([t, t]), cond_pair).chunk(2)
        return eps_cond + scale * (eps_cond - eps_null)

    return guided_eps
