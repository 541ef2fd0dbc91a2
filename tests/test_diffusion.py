"""Tests for cdae.diffusion (schedules, q_sample, DDIM, guidance) and cdae.unet (UNet, Encoder).

CPU-only, deterministic, fast. Tiny UNets get their parameters set from a seeded generator
(``_randomize``) so that results do not depend on PyTorch's default initialisers and so that the
zero-initialised layers do not make the network trivially output zero.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from cdae.config import Solver, Spacing
from cdae.diffusion import BetaSchedule, GaussianDiffusion, guided_eps_fn
from cdae.unet import Encoder, UNet

COND_DIM = 4


def _randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Overwrite every parameter from a seeded generator (weights ~ N(0, 1/fan_in),
    norm gains ~ 1 + N(0, 0.01), biases ~ N(0, 0.01)); returns the model."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen, dtype=torch.float64).to(param.dtype)
            if param.dim() > 1:
                param.copy_(noise / math.sqrt(param[0].numel()))
            elif name.endswith("weight"):
                param.copy_(1.0 + 0.1 * noise)
            else:
                param.copy_(0.1 * noise)
    return model


def _tiny_unet(**overrides) -> UNet:
    kwargs = dict(in_channels=1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                  cond_dim=COND_DIM, num_groups=4)
    kwargs.update(overrides)
    return UNet(**kwargs)


def _randn(*shape: int, seed: int, dtype: torch.dtype = torch.float64) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    """The tensors here are tiny: one intra-op thread is faster and immune to a busy machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def diffusion() -> GaussianDiffusion:
    return GaussianDiffusion(num_timesteps=1000, schedule=BetaSchedule.LINEAR)


# --------------------------------------------------------------------------- schedules, q_sample


def test_linear_schedule_endpoints(diffusion: GaussianDiffusion) -> None:
    assert diffusion.betas.shape == diffusion.alphas_cumprod.shape == (1000,)
    assert diffusion.betas.dtype == torch.float32
    assert diffusion.betas[0].item() == pytest.approx(1e-4, rel=1e-6)
    assert diffusion.betas[-1].item() == pytest.approx(0.02, rel=1e-6)
    assert diffusion.alphas_cumprod[0].item() == pytest.approx(1 - 1e-4, abs=1e-7)
    assert 1e-5 < diffusion.alphas_cumprod[-1].item() < 1e-4  # 4.04e-5 for T = 1000
    assert torch.all(diffusion.alphas_cumprod[1:] < diffusion.alphas_cumprod[:-1])


def test_linear_schedule_scales_with_num_timesteps() -> None:
    short = GaussianDiffusion(num_timesteps=100)
    assert short.betas[0].item() == pytest.approx(1e-3, rel=1e-6)
    assert short.betas[-1].item() == pytest.approx(0.2, rel=1e-6)


def test_cosine_schedule() -> None:
    cosine = GaussianDiffusion(1000, BetaSchedule("cosine"))
    ab = cosine.alphas_cumprod
    assert torch.all(ab[1:] < ab[:-1])
    assert ab[0].item() > 0.9999
    assert ab[-1].item() < 1e-6
    assert cosine.betas.max().item() <= 0.999 + 1e-7
    # alpha_bar(t) follows cos^2(((t+1)/T + s)/(1 + s) * pi/2) / cos^2(s/(1 + s) * pi/2).
    f = lambda frac: math.cos((frac + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert ab[499].item() == pytest.approx(f(0.5) / f(0.0), rel=1e-5)


def test_q_sample_exact_and_statistics(diffusion: GaussianDiffusion) -> None:
    x0 = torch.full((20000, 1, 2, 2), 0.7)
    t = torch.full((20000,), 500, dtype=torch.long)
    noise = _randn(20000, 1, 2, 2, seed=0, dtype=torch.float32)
    ab = diffusion.alphas_cumprod[500].item()
    x_t = diffusion.q_sample(x0, t, noise)
    torch.testing.assert_close(x_t, math.sqrt(ab) * x0 + math.sqrt(1 - ab) * noise)
    # Statistics of q(x_t | x0): 80k samples, tolerances ~5 standard errors.
    assert x_t.mean().item() == pytest.approx(math.sqrt(ab) * 0.7, abs=0.02)
    assert x_t.std().item() == pytest.approx(math.sqrt(1 - ab), rel=0.02)
    # Per-example timesteps broadcast per example; t = 0 is almost clean.
    mixed = diffusion.q_sample(x0[:2], torch.tensor([0, 999]), noise[:2])
    assert (mixed[0] - x0[0]).abs().max().item() < 0.05
    assert (mixed[1] - noise[1]).abs().max().item() < 0.01


def test_training_loss_per_example(diffusion: GaussianDiffusion) -> None:
    x0 = _randn(3, 1, 4, 4, seed=1, dtype=torch.float32)
    noise = _randn(3, 1, 4, 4, seed=2, dtype=torch.float32)
    t = torch.tensor([0, 10, 999])
    loss_zero = diffusion.training_loss(lambda x, tt: torch.zeros_like(x), x0, t, noise)
    assert loss_zero.shape == (3,)
    torch.testing.assert_close(loss_zero, noise.square().mean(dim=(1, 2, 3)))
    perfect = diffusion.training_loss(lambda x, tt: noise, x0, t, noise)
    assert torch.all(perfect == 0)
    assert diffusion.sample_timesteps(7).shape == (7,)


def test_min_snr_weight(diffusion: GaussianDiffusion) -> None:
    """min(SNR_t, gamma) / SNR_t: 1 on the noisy side, gamma / SNR_t near the clean image."""
    t = torch.arange(diffusion.num_timesteps)
    w = diffusion.min_snr_weight(t, 5.0)
    snr = diffusion.snr(t)
    assert ((w > 0) & (w <= 1)).all() and bool((w[1:] >= w[:-1]).all())  # rises with t
    assert bool((w[snr <= 5.0] == 1).all()) and bool((w[snr > 5.0] < 1).all())
    # linear schedule, beta_0 = 1e-4: alpha_bar_0 = 0.9999, SNR_0 = 9999 -> w_0 = 5 / 9999
    assert float(w[0]) == pytest.approx(5.0 / 9999.0, rel=1e-3)
    assert 0 < int((snr > 5.0).sum()) < diffusion.num_timesteps


# --------------------------------------------------------------------------- DDIM grid


def test_timesteps_grid(diffusion: GaussianDiffusion) -> None:
    grid = diffusion.timesteps(50)
    assert grid.dtype == torch.long and grid.shape == (50,)
    assert grid[0].item() == 0 and grid[-1].item() == 999
    assert grid[:4].tolist() == [0, 20, 41, 61] and grid[-2].item() == 979
    assert set(torch.diff(grid).tolist()) <= {20, 21}
    expected = [math.floor(i * 999 / 49 + 0.5) for i in range(50)]
    assert grid.tolist() == expected
    partial = diffusion.timesteps(35, t_start=700)
    assert partial[0].item() == 0 and partial[-1].item() == 700 and len(partial) == 35
    assert torch.all(torch.diff(partial) > 0)
    assert diffusion.timesteps(1000).tolist() == list(range(1000))
    assert diffusion.timesteps(1).tolist() == [999]
    for bad in [dict(num_steps=0), dict(num_steps=1001), dict(num_steps=10, t_start=5),
                dict(num_steps=10, t_start=1000), dict(num_steps=10, t_start=-1)]:
        with pytest.raises(ValueError):
            diffusion.timesteps(**bad)


def test_quadratic_grid(diffusion: GaussianDiffusion) -> None:
    q = Spacing.QUADRATIC
    assert diffusion.timesteps(11, 699, q).tolist() == [0, 7, 28, 63, 112, 175, 252, 343, 447,
                                                        566, 699]
    assert diffusion.timesteps(2, 699, q).tolist() == [0, 699]
    assert diffusion.timesteps(1, 699, q).tolist() == [699]
    assert diffusion.timesteps(50, None, q).tolist()[:6] == [0, 1, 2, 4, 7, 10]  # collisions bumped
    for steps, t_end in [(3, 2), (35, 699), (50, 49), (100, 150), (250, 999), (1000, 999)]:
        grid = diffusion.timesteps(steps, t_end, q)
        assert grid[0] == 0 and grid[-1] == t_end and len(grid) == steps
        assert bool((grid[1:] > grid[:-1]).all())
    gaps = diffusion.timesteps(20, 999, q).diff()
    assert bool((gaps[1:] >= gaps[:-1]).all())  # steps grow away from the clean image


# --------------------------------------------------------------------------- DDIM step: analytic


def test_ddim_step_moves_along_the_noise_line(diffusion: GaussianDiffusion) -> None:
    """With the true eps of x_t = q_sample(x0, t, n), a step lands exactly on q_sample(x0, t', n)."""
    x0 = _randn(2, 1, 5, 5, seed=3)
    noise = _randn(2, 1, 5, 5, seed=4)

    def at(t: int) -> Tensor:
        return x0 if t == -1 else diffusion.q_sample(x0, torch.full((2,), t), noise)

    for t, t_next in [(999, 0), (0, 999), (500, 480), (480, 500), (10, -1), (-1, 10), (999, -1),
                      (-1, 999), (300, 300)]:
        torch.testing.assert_close(diffusion.ddim_step(at(t), noise, t, t_next), at(t_next),
                                   rtol=0, atol=1e-9)
    # Per-example tensor timesteps give the same result as per-example scalar calls.
    both = diffusion.ddim_step(diffusion.q_sample(x0, torch.tensor([700, 5]), noise), noise,
                               torch.tensor([700, 5]), torch.tensor([-1, 900]))
    torch.testing.assert_close(both[0], x0[0], rtol=0, atol=1e-9)
    torch.testing.assert_close(both[1], at(900)[1], rtol=0, atol=1e-9)


def _exact_eps_for_point(diffusion: GaussianDiffusion, x_star: Tensor):
    """eps(x, t) = (x - sqrt(ab_t) x*) / sqrt(1 - ab_t), from the diffusion's own sqrt tables."""
    sqrt_ab = diffusion.sqrt_alphas_cumprod.double()
    sqrt_1m_ab = diffusion.sqrt_one_minus_alphas_cumprod.double()

    def exact_eps(x: Tensor, t: Tensor) -> Tensor:
        return (x - sqrt_ab[t].reshape(-1, 1, 1, 1) * x_star) / sqrt_1m_ab[t].reshape(-1, 1, 1, 1)

    return exact_eps


def test_ddim_sample_with_exact_denoiser_recovers_the_data_point(
        diffusion: GaussianDiffusion) -> None:
    """Data = one known point x*: eps(x, t) = (x - sqrt(ab_t) x*) / sqrt(1 - ab_t) is the exact
    eps, and DDIM recovers x* exactly from ANY x_T (every x0 prediction equals x*)."""
    x_star = _randn(2, 1, 6, 6, seed=5).clamp(-1, 1)
    exact_eps = _exact_eps_for_point(diffusion, x_star)

    steps: list[int] = []
    out = diffusion.ddim_sample(_randn(2, 1, 6, 6, seed=6), exact_eps, 50, progress=steps.append)
    torch.testing.assert_close(out, x_star, rtol=0, atol=1e-9)
    assert steps == list(range(50))
    partial = diffusion.ddim_sample(diffusion.q_sample(x_star, torch.full((2,), 700),
                                                       _randn(2, 1, 6, 6, seed=7)),
                                    exact_eps, 20, t_start=700)
    torch.testing.assert_close(partial, x_star, rtol=0, atol=1e-9)


def test_ddim_sample_clips_only_the_final_prediction(diffusion: GaussianDiffusion) -> None:
    x_star = torch.full((1, 1, 2, 2), 1.5, dtype=torch.float64)
    exact_eps = _exact_eps_for_point(diffusion, x_star)

    x_T = _randn(1, 1, 2, 2, seed=8)
    clipped = diffusion.ddim_sample(x_T, exact_eps, 10)
    unclipped = diffusion.ddim_sample(x_T, exact_eps, 10, clip_output=False)
    assert torch.all(clipped == 1.0)
    torch.testing.assert_close(unclipped, x_star, rtol=0, atol=1e-9)


def test_ddim_invert_with_constant_eps_is_q_sample(diffusion: GaussianDiffusion) -> None:
    """If eps_fn always returns n, inversion follows the line sqrt(ab) x0 + sqrt(1 - ab) n, so
    it must end exactly at q_sample(x0, t_stop, n) (no clipping even outside [-1, 1])."""
    x0 = 1.5 * _randn(2, 1, 4, 4, seed=9)
    noise = _randn(2, 1, 4, 4, seed=10)
    calls: list[int] = []

    def const_eps(x: Tensor, t: Tensor) -> Tensor:
        calls.append(int(t[0]))
        return noise

    x_T = diffusion.ddim_invert(x0, const_eps, 50)
    torch.testing.assert_close(x_T, diffusion.q_sample(x0, torch.full((2,), 999), noise),
                               rtol=0, atol=1e-9)
    assert calls == diffusion.timesteps(50).tolist()  # eps asked at each step's target timestep
    x_700 = diffusion.ddim_invert(x0, const_eps, 20, t_stop=700, fixed_point_iters=2)
    torch.testing.assert_close(x_700, diffusion.q_sample(x0, torch.full((2,), 700), noise),
                               rtol=0, atol=1e-9)
    back = diffusion.ddim_sample(x_T, const_eps, 50, clip_output=False)
    torch.testing.assert_close(back, x0, rtol=0, atol=1e-9)


# --------------------------------------------------------------------------- DDIM round trip


@pytest.fixture(scope="module")
def roundtrip_setup(diffusion: GaussianDiffusion):
    """A nonlinear, denoiser-like eps_fn: the exact eps for Gaussian data N(0, 0.5^2 I) plus
    0.1 x a randomly initialised tiny UNet (float64). A purely random UNet is not a usable test:
    it is no denoiser, so the sampler amplifies any inversion error by 1/sqrt(ab_T / ab_0) ~ 157."""
    torch.manual_seed(0)
    net = _randomize(_tiny_unet().double(), seed=0).eval()
    x0 = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(1),
                    dtype=torch.float64) * 1.8 - 0.9
    cond = _randn(4, COND_DIM, seed=2)
    ab = diffusion.alphas_cumprod.double()
    data_var = 0.5 ** 2

    def eps_fn(x: Tensor, t: Tensor) -> Tensor:
        a = ab[t].reshape(-1, 1, 1, 1)
        return (1 - a).sqrt() * x / (a * data_var + 1 - a) + 0.1 * net(x, t, cond)

    return x0, eps_fn


def test_ddim_invert_then_sample_round_trips(diffusion: GaussianDiffusion, roundtrip_setup) -> None:
    x0, eps_fn = roundtrip_setup
    with torch.no_grad():
        x_T = diffusion.ddim_invert(x0, eps_fn, 50)
        recon = diffusion.ddim_sample(x_T, eps_fn, 50)
    err = (recon - x0).abs()
    # Measured: max 0.135, mean 0.0345 (plain DDIM inversion is first order in the step size).
    assert err.max().item() < 0.2 and err.mean().item() < 0.05
    assert x_T.std().item() > 0.8  # x_T really is at the noise end, not a copy of x0


def test_fixed_point_inversion_round_trips_tightly(diffusion: GaussianDiffusion,
                                                  roundtrip_setup) -> None:
    x0, eps_fn = roundtrip_setup
    with torch.no_grad():
        x_T = diffusion.ddim_invert(x0, eps_fn, 50, fixed_point_iters=2)
        recon = diffusion.ddim_sample(x_T, eps_fn, 50)
    err = (recon - x0).abs()
    # Measured: max 1.97e-3, mean 4.8e-4 (about 70x better than without the iterations).
    assert err.max().item() < 4e-3 and err.mean().item() < 1e-3


# --------------------------------------------------------------------------- Heun


def _gaussian_data_eps(diffusion: GaussianDiffusion, data_var: float):
    """The exact eps for data ~ N(0, v I): eps(x, t) = sqrt(1 - ab) x / (ab v + 1 - ab). In DDIM's
    variables xbar = x / sqrt(ab), sigma^2 = (1 - ab) / ab its ODE d xbar / d sigma = sigma xbar /
    (v + sigma^2) has the solution xbar(sigma) = xbar(s0) sqrt((v + sigma^2) / (v + s0^2))."""
    ab = diffusion.alphas_cumprod.double()

    def eps_fn(x: Tensor, t: Tensor) -> Tensor:
        a = ab[t].reshape(-1, 1, 1, 1)
        return (1 - a).sqrt() * x / (a * data_var + 1 - a)

    def exact_decode(x_t: Tensor, t: int) -> Tensor:
        a = float(ab[t])
        return x_t / math.sqrt(a) * math.sqrt(data_var / (data_var + (1 - a) / a))

    return eps_fn, exact_decode


@pytest.mark.parametrize("spacing", list(Spacing))
def test_heun_is_second_order_on_the_exact_ode(diffusion: GaussianDiffusion,
                                               spacing: Spacing) -> None:
    """Against the closed-form ODE solution: DDIM (Euler) halves its error when the steps double,
    Heun cuts it at least 4-fold (second order), and Heun at S steps beats DDIM at 4S."""
    eps_fn, exact_decode = _gaussian_data_eps(diffusion, 0.25)
    x_t = _randn(2, 1, 4, 4, seed=30)
    truth = exact_decode(x_t, 700)

    def err(solver: Solver, steps: int) -> float:
        out = diffusion.ddim_sample(x_t, eps_fn, steps, t_start=700, clip_output=False,
                                    solver=solver, spacing=spacing)
        return (out - truth).abs().max().item()

    ddim = [err(Solver.DDIM, s) for s in (20, 40, 80)]
    heun = [err(Solver.HEUN, s) for s in (20, 40, 80)]
    # Measured, max error at 20 / 40 / 80 steps: uniform DDIM 1.27e-1 / 6.35e-2 / 3.19e-2 (ratios
    # 2.0, 2.0), Heun 1.22e-2 / 2.72e-3 / 4.77e-4 (4.5, 5.7); quadratic DDIM ratios 2.0, 2.0,
    # Heun 1.19e-2 / 2.53e-3 / 4.16e-4 (4.7, 6.1).
    for e in (ddim, heun):
        assert e[0] > e[1] > e[2] > 0
    assert all(1.6 < a / b < 2.4 for a, b in zip(ddim, ddim[1:]))
    assert all(3.5 < a / b < 8.0 for a, b in zip(heun, heun[1:]))
    assert heun[0] < ddim[2]


def test_heun_fixed_point_inversion_round_trips(diffusion: GaussianDiffusion,
                                                roundtrip_setup) -> None:
    x0, eps_fn = roundtrip_setup
    with torch.no_grad():
        errs = []
        for iters in (0, 1, 3):
            x_t0 = diffusion.ddim_invert(x0, eps_fn, 15, t_stop=699, fixed_point_iters=iters,
                                         solver=Solver.HEUN, spacing=Spacing.QUADRATIC)
            recon = diffusion.ddim_sample(x_t0, eps_fn, 15, t_start=699, solver=Solver.HEUN,
                                          spacing=Spacing.QUADRATIC)
            errs.append((recon - x0).abs().mean().item())
    # Measured mean round-trip error with 0 / 1 / 3 iterations: 3.57e-2 / 5.04e-3 / 2.85e-4
    # (15 grid points to t = 699; a uniform grid: 5.40e-2 / 6.53e-3 / 1.62e-4).
    assert errs[0] > 4 * errs[1] > 16 * errs[2]
    assert errs[2] < 1e-3


@pytest.mark.parametrize("solver", list(Solver))
def test_network_evaluations_are_counted(diffusion: GaussianDiffusion, solver: Solver) -> None:
    """``network_evaluations`` equals the eps_fn calls; guidance stays one doubled-batch forward
    per evaluation."""
    counting = _CountingModel(_randomize(_tiny_unet(), seed=4).eval())
    cond = _randn(2, COND_DIM, seed=14, dtype=torch.float32)
    eps_fn = guided_eps_fn(counting, cond, torch.zeros(COND_DIM), 2.0)
    x = _randn(2, 1, 8, 8, seed=40, dtype=torch.float32)
    diffusion.ddim_sample(x, eps_fn, 5, solver=solver)
    assert counting.batch_sizes == [4] * GaussianDiffusion.network_evaluations(5, solver)
    for iters in (0, 2):
        counting.batch_sizes.clear()
        diffusion.ddim_invert(x, eps_fn, 5, t_stop=500, fixed_point_iters=iters, solver=solver)
        assert len(counting.batch_sizes) == GaussianDiffusion.network_evaluations(5, solver, iters)
    assert GaussianDiffusion.network_evaluations(5, Solver.HEUN) == 9
    assert GaussianDiffusion.network_evaluations(5, Solver.HEUN, 2) == 3 + 4 * 5


# --------------------------------------------------------------------------- guidance


class _CountingModel:
    """Wraps a model(x, t, cond) and records the batch size of every call."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.batch_sizes: list[int] = []

    def __call__(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        assert x.shape[0] == t.shape[0] == cond.shape[0]
        self.batch_sizes.append(x.shape[0])
        return self.model(x, t, cond)


@pytest.mark.parametrize("null_shape", ["vector", "batch"])
def test_guided_eps_fn_one_batched_forward(null_shape: str) -> None:
    net = _randomize(_tiny_unet().double(), seed=3).eval()
    x = _randn(3, 1, 8, 8, seed=11)
    t = torch.tensor([5, 500, 900])
    cond = _randn(3, COND_DIM, seed=12)
    null = _randn(COND_DIM, seed=13)
    null_arg = null if null_shape == "vector" else null.expand(3, COND_DIM)
    scale = 1.5
    counting = _CountingModel(net)
    with torch.no_grad():
        guided = guided_eps_fn(counting, cond, null_arg, scale)(x, t)
        eps_c = net(x, t, cond)
        eps_null = net(x, t, null.expand(3, COND_DIM))
    assert counting.batch_sizes == [6]
    torch.testing.assert_close(guided, eps_c + scale * (eps_c - eps_null), rtol=0, atol=1e-10)

    counting.batch_sizes.clear()
    with torch.no_grad():
        plain = guided_eps_fn(counting, cond, null_arg, 0.0)(x, t)
    assert counting.batch_sizes == [3]
    torch.testing.assert_close(plain, eps_c, rtol=0, atol=1e-12)


def test_guided_sampling_calls_model_once_per_step(diffusion: GaussianDiffusion) -> None:
    counting = _CountingModel(_randomize(_tiny_unet(), seed=4).eval())
    cond = _randn(2, COND_DIM, seed=14, dtype=torch.float32)
    eps_fn = guided_eps_fn(counting, cond, torch.zeros(COND_DIM), 2.0)
    diffusion.ddim_sample(_randn(2, 1, 8, 8, seed=41, dtype=torch.float32), eps_fn, 5)
    assert counting.batch_sizes == [4] * 5


# --------------------------------------------------------------------------- UNet, Encoder


@pytest.mark.parametrize("size,channels", [(28, 1), (32, 1), (64, 1), (28, 3), (25, 1)])
def test_unet_shapes_and_zero_output_at_init(size: int, channels: int) -> None:
    torch.manual_seed(0)
    net = UNet(in_channels=channels, base_channels=16, cond_dim=COND_DIM)
    x = torch.randn(2, channels, size, size)
    out = net(x, torch.tensor([0, 999]), torch.randn(2, COND_DIM))
    assert out.shape == x.shape
    assert torch.all(out == 0)  # zero-initialised output conv


def test_unet_with_attention_and_channels_last() -> None:
    net = _randomize(_tiny_unet(channel_mult=(1, 2, 2), attention_resolutions=(2, 4),
                                attention_heads=2), seed=5).eval()
    x = _randn(2, 1, 28, 28, seed=42, dtype=torch.float32)
    t = torch.tensor([3, 600])
    cond = _randn(2, COND_DIM, seed=43, dtype=torch.float32)
    with torch.no_grad():
        ref = net(x, t, cond)
        net_cl = net.to(memory_format=torch.channels_last)
        out = net_cl(x.contiguous(memory_format=torch.channels_last), t, cond)
    assert out.shape == (2, 1, 28, 28)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_unet_uses_cond_and_time_and_every_parameter() -> None:
    net = _randomize(_tiny_unet(attention_resolutions=(1,), attention_heads=2), seed=6)
    x = _randn(2, 1, 12, 12, seed=44, dtype=torch.float32)
    t = torch.tensor([100, 100])
    cond = _randn(2, COND_DIM, seed=45, dtype=torch.float32).requires_grad_(True)
    out = net(x, t, cond)
    other_cond = net(x, t, cond.detach() + 1.0)
    other_time = net(x, t + 400, cond.detach())
    scale = out.abs().mean().item()
    assert (other_cond - out).abs().mean().item() > 0.05 * scale
    assert (other_time - out).abs().mean().item() > 0.05 * scale
    out.square().mean().backward()
    assert cond.grad is not None and cond.grad.abs().sum().item() > 0
    dead = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.any()]
    assert dead == []


def test_unet_learns_to_use_cond_from_default_init() -> None:
    """From the zero-initialised start, a few Adam steps must make eps depend on cond: the target
    is 1 for cond a and 0 for cond b at identical (x, t). (The targets must not average to zero:
    with identical features the zero-initialised output conv would then get exactly cancelling
    gradients and never move - a symmetric saddle of the test, not of real training.)"""
    torch.manual_seed(0)
    net = _tiny_unet()
    x = torch.randn(1, 1, 8, 8).expand(2, 1, 8, 8)
    t = torch.tensor([250, 250])
    cond = torch.stack([torch.ones(COND_DIM), -torch.ones(COND_DIM)])
    target = torch.tensor([1.0, 0.0]).reshape(2, 1, 1, 1).expand(2, 1, 8, 8)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(20):
        opt.zero_grad()
        (net(x, t, cond) - target).square().mean().backward()
        opt.step()
    with torch.no_grad():
        out = net(x, t, cond)
    gap = (out[0] - out[1]).mean().item()
    assert gap > 0.5  # measured 0.94; would be 0 for a UNet that ignores cond (identical x and t)


def test_unet_golden_output() -> None:
    """Checksum of a fixed tiny UNet (params from a seeded generator, float64) on a fixed input.
    A change here means the architecture or its numerics changed: update deliberately."""
    net = _randomize(UNet(in_channels=2, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                          cond_dim=COND_DIM, num_groups=4, attention_resolutions=(2,),
                          attention_heads=2).double(), seed=1234).eval()
    assert sum(p.numel() for p in net.parameters()) == 49378
    gen = torch.Generator().manual_seed(99)
    x = torch.rand(3, 2, 12, 10, generator=gen, dtype=torch.float64) * 2 - 1
    cond = torch.randn(3, COND_DIM, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        out = net(x, torch.tensor([0, 371, 999]), cond)
    assert out.sum().item() == pytest.approx(-13.113316055002217, rel=1e-6)
    assert out.abs().sum().item() == pytest.approx(337.8660354686248, rel=1e-6)
    assert out.square().sum().item() == pytest.approx(271.4903325273574, rel=1e-6)
    assert out[1, 0, 5, 4].item() == pytest.approx(1.2652222937922852, rel=1e-6)


@pytest.mark.parametrize("size,channels", [(28, 1), (64, 1), (28, 3)])
def test_encoder_shapes(size: int, channels: int) -> None:
    torch.manual_seed(0)
    enc = Encoder(in_channels=channels, base_channels=8, num_down=3, out_dim=2 * 48, num_groups=4)
    x = torch.randn(3, channels, size, size)
    out = enc(x)
    assert out.shape == (3, 96)
    assert torch.isfinite(out).all()
    assert (out[0] - out[1]).abs().max().item() > 0  # depends on the input
