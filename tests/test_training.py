"""Training: seeded and reproducible, resumable to identical weights, clean non-finite stop."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from cdae import config
from cdae.checkpoint import load_checkpoint
from cdae.dataset import Dataset, normalisation_stats
from cdae.errors import TrainingError
from cdae.training import train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def params() -> config.Params:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    p = config.resolve(raw, "tiny")
    return dataclasses.replace(p, train=dataclasses.replace(p.train, steps=6,
                                                            checkpoint_every=3, threads=1))


@pytest.fixture(scope="module")
def dataset(params: config.Params) -> Dataset:
    rng = np.random.default_rng(0)
    n = 40
    t = 0.5 + rng.gamma(10, 1 / 5, n)
    i = 64 + 191 / (1 + np.exp(-(2 * (t - 2.5) + 0.5 * rng.normal(size=n))))
    labels = np.stack([t, i, rng.integers(0, 10, n)], 1)
    split = (np.arange(n) % 4 == 0).astype(np.uint8)
    mean, std = normalisation_stats(labels, split, params.graph)
    images = rng.integers(0, 255, (n, 1, 28, 28), dtype=np.uint8)
    return Dataset(images, labels, np.ones((n, 3), bool), split, params.graph, mean, std)


def weights(path: Path) -> dict[str, torch.Tensor]:
    ck = load_checkpoint(path)
    return {**{f"ema.{k}": v for k, v in ck["ema"].items()},
            **{f"raw.{k}": v for k, v in ck["model"].items()}}


def test_same_seed_same_weights_and_resume_is_exact(params, dataset, tmp_path: Path) -> None:
    train(params, dataset, tmp_path / "a", show_progress=False)
    train(params, dataset, tmp_path / "b", show_progress=False)
    a, b = weights(tmp_path / "a/model.pt"), weights(tmp_path / "b/model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)

    short = dataclasses.replace(params, train=dataclasses.replace(params.train, steps=4))
    r = train(short, dataset, tmp_path / "c", show_progress=False)
    assert r.step == 4
    r = train(params, dataset, tmp_path / "c", show_progress=False)  # continues 4 -> 6
    assert r.step == 6
    c = weights(tmp_path / "c/model.pt")
    for k in a:
        torch.testing.assert_close(c[k], a[k], rtol=0, atol=0, msg=k)


def test_a_checkpoint_from_before_a_setting_existed_resumes(
        params, dataset, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A model.pt written before model.mechanisms and train.mechanism_fit existed (its params
    and stored hash lack them) continues to the uninterrupted run's weights: the settings added
    since read as the behaviour it was trained with (checkpoint.LEGACY_SETTINGS)."""
    from cdae.checkpoint import LEGACY_SETTINGS, config_hash, save_checkpoint
    from cdae.progress import log

    monkeypatch.setattr(log, "propagate", True)  # caplog listens at the root (see below)
    train(params, dataset, tmp_path / "full", show_progress=False)
    short = dataclasses.replace(params, train=dataclasses.replace(params.train, steps=4))
    train(short, dataset, tmp_path / "old", show_progress=False)
    ck = load_checkpoint(tmp_path / "old/model.pt")
    for section, key in (("model", "mechanisms"), ("train", "mechanism_fit")):
        assert (section, key) in LEGACY_SETTINGS
        del ck["params"][section][key]
    ck["config_hash"] = config_hash(ck["params"])  # what such a checkpoint stored
    save_checkpoint(tmp_path / "old/model.pt", ck)
    (tmp_path / "old/checkpoint.pt").unlink(missing_ok=True)

    with caplog.at_level("INFO", logger="cdae"):
        r = train(params, dataset, tmp_path / "old", show_progress=False)
    assert "resuming from" in caplog.text and "at step 4" in caplog.text, caplog.text
    assert r.step == params.train.steps
    a, b = weights(tmp_path / "full/model.pt"), weights(tmp_path / "old/model.pt")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=k)


def test_time_budget_writes_the_model_and_a_later_run_continues_exactly(
        params, dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """train.max_minutes stops at the first step past the budget and writes model.pt (not only a
    checkpoint); training on without a budget then ends with the uninterrupted run's weights."""
    import cdae.training as training

    train(params, dataset, tmp_path / "full", show_progress=False)
    clock = iter(float(10 * k) for k in range(10_000))  # every reading 10 s after the last
    monkeypatch.setattr(training.time, "perf_counter", lambda: next(clock))
    boxed = dataclasses.replace(params, train=dataclasses.replace(params.train, max_minutes=0.5))
    r = train(boxed, dataset, tmp_path / "boxed", show_progress=False)
    assert r.out_of_time and not r.stopped_by_signal
    assert 1 <= r.step < params.train.steps
    ck = load_checkpoint(tmp_path / "boxed/model.pt")
    assert int(ck["step"]) == r.step and int(ck["total_steps"]) == params.train.steps
    assert not (tmp_path / "boxed/checkpoint.pt").exists()

    monkeypatch.undo()
    r = train(params, dataset, tmp_path / "boxed", show_progress=False)  # continues to 6
    assert r.step == params.train.steps and not r.out_of_time
    a, b = weights(tmp_path / "full/model.pt"), weights(tmp_path / "boxed/model.pt")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=k)


def test_ema_weights_alone_warm_start_training(params, dataset, tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A model.pt with the EMA weights alone (what scripts/gpu_run.sh returns) continues at its
    step: the trained weights start from the EMA weights, the optimizer afresh."""
    from cdae.checkpoint import save_checkpoint
    from cdae.progress import log

    monkeypatch.setattr(log, "propagate", True)  # a CLI test in this process may have set up
    # the "cdae" logger with its own handler and propagate off; caplog listens at the root

    short = dataclasses.replace(params, train=dataclasses.replace(params.train, steps=4))
    train(short, dataset, tmp_path / "d", show_progress=False)
    ck = load_checkpoint(tmp_path / "d/model.pt")
    save_checkpoint(tmp_path / "d/model.pt",
                    {k: v for k, v in ck.items() if k not in ("model", "optimizer")})
    (tmp_path / "d/checkpoint.pt").unlink(missing_ok=True)
    with caplog.at_level("INFO", logger="cdae"):
        r = train(short, dataset, tmp_path / "d", show_progress=False)  # nothing left to train
    assert r.step == 4 and "EMA weights alone" in caplog.text
    again = load_checkpoint(tmp_path / "d/model.pt")
    for k, v in ck["ema"].items():
        torch.testing.assert_close(again["model"][k], v, rtol=0, atol=0, msg=k)
    r = train(params, dataset, tmp_path / "d", show_progress=False)  # 4 -> 6
    assert r.step == 6
    trained = load_checkpoint(tmp_path / "d/model.pt")["ema"]
    assert any(not torch.equal(trained[k], v) for k, v in ck["ema"].items())


def test_other_seed_other_weights(params, dataset, tmp_path: Path) -> None:
    other = dataclasses.replace(params, train=dataclasses.replace(params.train, seed=1))
    train(params, dataset, tmp_path / "a", show_progress=False)
    train(other, dataset, tmp_path / "b", show_progress=False)
    a, b = weights(tmp_path / "a/model.pt"), weights(tmp_path / "b/model.pt")
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("raw.unet"))


def test_non_finite_loss_names_the_step(params, dataset, tmp_path: Path) -> None:
    bad = dataclasses.replace(params, train=dataclasses.replace(params.train, lr=1e30,
                                                                mechanism_lr=1e30, grad_clip=0))
    with pytest.raises(TrainingError, match=r"non-finite loss between steps 1 and \d+"):
        train(bad, dataset, tmp_path / "x", show_progress=False)
    assert not (tmp_path / "x/model.pt").exists()


def test_batch_larger_than_data(params, dataset, tmp_path: Path) -> None:
    from cdae.errors import DataError

    big = dataclasses.replace(params, train=dataclasses.replace(params.train, batch_size=999))
    with pytest.raises(DataError, match="train.batch_size 999 is larger than the train split"):
        train(big, dataset, tmp_path / "y", show_progress=False)


def test_ema_forgets_the_initial_weights_of_a_short_run() -> None:
    """With decay 0.999 a plain EMA keeps 0.999**1700 = 18% of the random initial weights after a
    1,700-step run; the warm-up must leave (almost) none of them."""
    from cdae.training import EMA

    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.fill_(5.0)
        model.bias.fill_(5.0)
    ema = EMA(model, 0.999)
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.bias.fill_(1.0)
    for n in range(1700):
        ema.update(model, n)
    assert abs(float(ema.shadow["weight"].mean()) - 1.0) < 0.01
    assert ema.decay_at(0) == pytest.approx(0.1)
    assert ema.decay_at(10**6) == 0.999


def test_empty_train_split(params, dataset, tmp_path: Path) -> None:
    from cdae.errors import DataError

    only_test = dataclasses.replace(dataset, split=np.ones_like(dataset.split))
    with pytest.raises(DataError, match="the train split is empty"):
        train(params, only_test, tmp_path / "z", show_progress=False)
    assert not (tmp_path / "z/model.pt").exists()


def test_support_quantiles_use_only_the_labels_training_sees(params, dataset,
                                                              tmp_path: Path) -> None:
    """data.labeled_fraction's mask hides labels from training, so the checkpoint's support
    (the out-of-support warnings of do()) must not include them either."""
    train_rows = np.where(dataset.split == 0)[0]
    thick = dataset.labels[train_rows, 0]
    mask = dataset.label_mask.copy()
    mask[train_rows[thick > np.median(thick)], 0] = False  # the thicker half unlabelled
    train(params, dataclasses.replace(dataset, label_mask=mask), tmp_path / "m",
          show_progress=False)
    q = load_checkpoint(tmp_path / "m/model.pt")["label_quantiles"]
    seen = thick[thick <= np.median(thick)]
    assert q[0][0] == pytest.approx(seen.min()) and q[0][-1] == pytest.approx(seen.max())
    assert q[1][-1] == pytest.approx(dataset.labels[train_rows, 1].max())  # intensity: all


def test_block_dropout_replaces_whole_variable_blocks_with_the_null(params, dataset) -> None:
    """train.p_block_drop: each (image, variable) block of the UNet condition is the null
    condition's part or the image's own, never a mix inside a block; at 0 nothing changes."""
    from cdae.training import build_model, compute_loss, make_diffusion

    torch.manual_seed(0)
    model = build_model(params, dataset.image_shape, dataset.label_mean, dataset.label_std)
    diffusion = make_diffusion(params)
    seen: list[torch.Tensor] = []
    plain_eps = model.eps

    def recording_eps(x_t, t, c):
        seen.append(c.detach().clone())
        return plain_eps(x_t, t, c)

    model.eps = recording_eps  # type: ignore[method-assign]
    b, k, d = 32, model.k, model.d
    x0 = torch.rand(b, 1, 28, 28) * 2 - 1
    y = torch.as_tensor(dataset.labels[:b], dtype=torch.float32)
    mask = torch.ones(b, k, dtype=torch.bool)
    null = model.null(b).detach()
    for p in (0.0, 0.5):
        tp = dataclasses.replace(params.train, p_uncond=0.0, p_block_drop=p)
        compute_loss(model, diffusion, x0, y, mask, 0, tp, torch.Generator().manual_seed(0))
    plain, dropped = (c.view(b, k, d) for c in seen)
    is_null = (dropped == null.view(b, k, d)).all(-1)  # (B, K): the whole block is the null's
    is_own = (dropped == plain).all(-1)
    assert (is_null | is_own).all()
    assert 0.3 < is_null.float().mean() < 0.7 and not (plain == null.view(b, k, d)).all(-1).any()


def test_mechanisms_learn_from_the_whole_train_split(params, dataset) -> None:
    """train.mechanism_batch > 0: the mechanisms' likelihood is taken on train labels drawn from
    the reference, so it is the same whatever the image batch's labels are (even none); at 0
    it is the image batch's, which has no labelled pair here and so contributes nothing."""
    from cdae.training import build_model, draw_step, make_diffusion, mechanism_loss

    torch.manual_seed(0)
    model = build_model(params, dataset.image_shape, dataset.label_mean, dataset.label_std)
    diffusion = make_diffusion(params)
    reference = model.normalise(torch.as_tensor(dataset.labels, dtype=torch.float32))
    y = torch.zeros(8, model.k)
    unlabelled = torch.zeros(8, model.k, dtype=torch.bool)
    on = dataclasses.replace(params.train, mechanism_batch=64)
    off = dataclasses.replace(params.train, mechanism_batch=0)
    shape = torch.Size((8, *dataset.image_shape))

    def pick(tp):
        return draw_step(model, diffusion, shape, tp, torch.Generator().manual_seed(0),
                         reference=reference).mech_pick

    assert pick(on).shape == (64,) and pick(off) is None
    assert torch.equal(pick(on), pick(on))  # seeded: the same rows again
    causal = model.causal
    a = mechanism_loss(causal, y, unlabelled, pick(on), reference)
    b = mechanism_loss(causal, y + 5, unlabelled, pick(on), reference)
    assert torch.equal(a, b) and a.abs() > 0  # drawn from the reference, not the batch
    with torch.no_grad():
        whole = model.causal.mechanism_nll(reference, torch.isfinite(reference), reference)
    assert abs(a.item() - whole.item()) < 0.5 * abs(whole.item()) + 0.5  # a sample of it
    assert mechanism_loss(causal, y, unlabelled, pick(off), reference).item() == 0.0


@pytest.mark.parametrize("fit", list(config.MechanismFit))
def test_mechanism_fit_labels_keeps_the_image_terms_off_the_mechanisms(params, dataset,
                                                                        fit) -> None:
    """train.mechanism_fit: labels: the whole loss gives the mechanisms exactly the gradient of
    their label likelihood, while the encoder still learns through the causal layer; joint
    (the paper's): the image terms add to it."""
    from cdae.training import build_model, draw_step, loss_terms, make_diffusion, mechanism_loss

    torch.manual_seed(0)
    model = build_model(params, dataset.image_shape, dataset.label_mean, dataset.label_std)
    diffusion = make_diffusion(params)
    tp = dataclasses.replace(params.train, mechanism_fit=fit, p_uncond=0.0)
    reference = model.normalise(torch.as_tensor(dataset.labels, dtype=torch.float32))
    x0 = torch.as_tensor(dataset.images[:8], dtype=torch.float32) / 127.5 - 1.0
    y = torch.as_tensor(dataset.labels[:8], dtype=torch.float32)
    mask = torch.ones(8, model.k, dtype=torch.bool)
    draws = draw_step(model, diffusion, x0.shape, tp, torch.Generator().manual_seed(1),
                      reference=reference)
    mech_params = list(model.causal.mechanisms.parameters())

    def grads(loss: torch.Tensor, params_: list) -> list[torch.Tensor]:
        out = torch.autograd.grad(loss, params_, allow_unused=True, retain_graph=True)
        return [torch.zeros_like(p) if g is None else g for p, g in zip(params_, out)]

    total = loss_terms(model, diffusion, x0, y, mask, draws, torch.tensor(1.0), tp, reference)[0]
    label_only = tp.mechanism_weight * mechanism_loss(
        model.causal, model.normalise(y), mask, draws.mech_pick, reference)
    same = all(torch.allclose(a, b, atol=1e-6) for a, b in
               zip(grads(total, mech_params), grads(label_only, mech_params)))
    assert same is (fit is config.MechanismFit.LABELS)
    encoder = grads(total, list(model.encoder.parameters()))
    assert sum(float(g.abs().sum()) for g in encoder) > 0


def test_mechanism_fit_labels_needs_the_label_likelihood() -> None:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["train"].update(mechanism_fit="labels", mechanism_weight=0)
    with pytest.raises(config.ConfigError, match="train.mechanism_fit: labels with "
                                                 "train.mechanism_weight 0"):
        config.resolve(raw, "default")


def test_cosine_schedule_runs_from_lr_to_zero_and_reaches_the_optimizer(
        params, dataset, tmp_path: Path) -> None:
    from cdae.training import lr_factor

    tp = dataclasses.replace(params.train, lr_schedule=config.LrSchedule.COSINE)
    assert [lr_factor(s, tp) for s in (0, 3, 6)] == pytest.approx([1.0, 0.5, 0.0], abs=1e-12)
    assert lr_factor(3, params.train) == 1.0  # constant: the default
    cosine = dataclasses.replace(params, train=tp)
    train(cosine, dataset, tmp_path / "cos", show_progress=False)
    groups = load_checkpoint(tmp_path / "cos/model.pt")["optimizer"]["param_groups"]
    last = lr_factor(tp.steps - 1, tp)  # the factor of the last update
    assert [g["lr"] for g in groups] == pytest.approx([tp.lr * last, tp.mechanism_lr * last])
    train(params, dataset, tmp_path / "const", show_progress=False)
    a, b = weights(tmp_path / "cos/model.pt"), weights(tmp_path / "const/model.pt")
    assert not all(torch.equal(a[k], b[k]) for k in a)


def test_bf16_cpu_autocasts_the_unet_and_stays_reproducible(params, dataset, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    seen: list[torch.dtype] = []
    from cdae.unet import UNet

    original = UNet.forward

    def spy(self, x, t, cond):
        out = original(self, x, t, cond)
        seen.append(out.dtype)
        return out

    monkeypatch.setattr(UNet, "forward", spy)
    on = dataclasses.replace(params, train=dataclasses.replace(params.train, bf16_cpu=True))
    train(on, dataset, tmp_path / "a", show_progress=False)
    assert seen and set(seen) == {torch.bfloat16}
    train(on, dataset, tmp_path / "b", show_progress=False)  # same seed, same weights
    a, b = weights(tmp_path / "a/model.pt"), weights(tmp_path / "b/model.pt")
    assert all(torch.equal(a[k], b[k]) and a[k].dtype == torch.float32 for k in a)
    seen.clear()
    train(params, dataset, tmp_path / "c", show_progress=False)  # the default: fp32
    assert set(seen) == {torch.float32}


def test_min_snr_weighting_reweights_only_the_denoising_term(params, dataset) -> None:
    """train.loss_weighting: min_snr multiplies each image's noise error by
    w_t = min(SNR_t, gamma) / SNR_t: same draws, same reported (unweighted) mse, and the total
    falls by exactly mse - mean(w_t * error_t)."""
    from cdae.training import build_model, compute_loss, make_diffusion

    torch.manual_seed(0)
    model = build_model(params, dataset.image_shape, dataset.label_mean, dataset.label_std)
    diffusion = make_diffusion(params)
    seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    plain_eps = model.eps

    def recording_eps(x_t, t, c):
        eps = plain_eps(x_t, t, c)
        seen.append((x_t.clone(), t.clone(), eps.clone()))
        return eps

    model.eps = recording_eps  # type: ignore[method-assign]
    b = 16
    x0 = torch.rand(b, 1, 28, 28) * 2 - 1
    y = torch.as_tensor(dataset.labels[:b], dtype=torch.float32)
    mask = torch.ones(b, model.k, dtype=torch.bool)
    tp = dataclasses.replace(params.train, loss_weighting=config.LossWeighting.MIN_SNR,
                             min_snr_gamma=2.0)
    with torch.no_grad():
        plain = compute_loss(model, diffusion, x0, y, mask, 0, params.train,
                             torch.Generator().manual_seed(0))
        weighted = compute_loss(model, diffusion, x0, y, mask, 0, tp,
                                torch.Generator().manual_seed(0))
    (x_t, t, eps), (x_t2, t2, _) = seen
    assert torch.equal(t, t2) and torch.equal(x_t, x_t2)
    assert float(plain.mse) == float(weighted.mse)
    w = diffusion.min_snr_weight(t, 2.0)
    assert (w < 1).any() and (w == 1).any()  # both regimes drawn
    sa = diffusion.sqrt_alphas_cumprod[t].view(-1, 1, 1, 1)
    s1 = diffusion.sqrt_one_minus_alphas_cumprod[t].view(-1, 1, 1, 1)
    noise = (x_t - sa * x0) / s1
    error = (eps - noise).square().flatten(1).mean(1)
    expected_drop = float(error.mean() - (w * error).mean())
    assert expected_drop > 0
    assert float(plain.total) - float(weighted.total) == pytest.approx(expected_drop, rel=1e-3)


def test_v_prediction_turns_v_into_eps_and_trains_on_the_v_error(params, dataset) -> None:
    """diffusion.prediction v: a UNet that outputs the exact v = sqrt(ab) eps - sqrt(1 - ab) x0
    makes model.eps the exact noise (loss 0); one that is off by 0.1 in v costs exactly 0.01 of
    denoising loss (the v error), while the reported eps-space mse is 0.01 * mean(ab_t)."""
    from cdae.training import build_model, compute_loss, make_diffusion

    p = dataclasses.replace(params, diffusion=dataclasses.replace(
        params.diffusion, prediction=config.Prediction.V))
    torch.manual_seed(0)
    model = build_model(p, dataset.image_shape, dataset.label_mean, dataset.label_std)
    diffusion = make_diffusion(p)
    assert not any("sqrt_ab" in k for k in model.state_dict())  # derived, not stored
    b = 16
    x0 = torch.rand(b, 1, 28, 28) * 2 - 1
    y = torch.as_tensor(dataset.labels[:b], dtype=torch.float32)
    mask = torch.ones(b, model.k, dtype=torch.bool)
    tp = dataclasses.replace(p.train, mechanism_weight=0.0, p_uncond=0.0)  # step 0: beta 0
    seen_t: list[torch.Tensor] = []
    for offset in (0.0, 0.1):
        def oracle_v(x_t, t, c, offset=offset):
            seen_t.append(t)
            a = diffusion.sqrt_alphas_cumprod[t].view(-1, 1, 1, 1)
            s = diffusion.sqrt_one_minus_alphas_cumprod[t].view(-1, 1, 1, 1)
            return (a * x_t - x0) / s + offset  # v, from x_t = a x0 + s eps

        model.unet.forward = oracle_v  # type: ignore[method-assign]
        with torch.no_grad():
            parts = compute_loss(model, diffusion, x0, y, mask, 0, tp,
                                 torch.Generator().manual_seed(0))
        if offset == 0.0:
            assert float(parts.total) < 1e-6 and float(parts.mse) < 1e-6
        else:
            ab = diffusion.alphas_cumprod[seen_t[-1]]
            assert float(parts.total) == pytest.approx(0.01, rel=1e-3)
            assert float(parts.mse) == pytest.approx(0.01 * float(ab.mean()), rel=1e-3)


def test_compiled_loss_trains_like_the_eager_one(params, dataset, tmp_path: Path) -> None:
    """train.compile runs the whole loss as one compiled graph: the same loss and
    gradients as the eager function up to float rounding, the same loss log through `train`
    (in either compile mode), and checkpoint keys of the plain modules."""
    from cdae.training import build_model, compute_loss, loss_terms, make_diffusion

    torch.manual_seed(0)
    model = build_model(params, dataset.image_shape, dataset.label_mean, dataset.label_std)
    diffusion = make_diffusion(params)
    x0 = torch.as_tensor(dataset.images[:8], dtype=torch.float32) / 127.5 - 1.0
    y = torch.as_tensor(dataset.labels[:8], dtype=torch.float32)
    mask = torch.ones(8, model.k, dtype=torch.bool)
    grads = []
    reference = model.normalise(torch.as_tensor(dataset.labels, dtype=torch.float32))
    for fn in (loss_terms, torch.compile(loss_terms, dynamic=False)):
        model.zero_grad(set_to_none=True)
        parts = compute_loss(model, diffusion, x0, y, mask, 3, params.train,
                             torch.Generator().manual_seed(0), reference=reference, terms_fn=fn)
        parts.total.backward()
        grads.append((float(parts.total.detach()), torch.cat([q.grad.flatten() for q in
                                                     model.parameters() if q.grad is not None])))
    (loss_a, g_a), (loss_b, g_b) = grads
    assert loss_b == pytest.approx(loss_a, rel=1e-5) and g_a.shape == g_b.shape
    assert float((g_a - g_b).norm()) < 1e-4 * float(g_a.norm())

    # reduce-overhead adds CUDA graphs on a GPU; on the CPU it must train like default
    compiled = dataclasses.replace(params, train=dataclasses.replace(
        params.train, compile=True, compile_mode=config.CompileMode.REDUCE_OVERHEAD))
    eager = train(params, dataset, tmp_path / "eager", show_progress=False)
    fast = train(compiled, dataset, tmp_path / "compiled", show_progress=False)
    for a, b in zip(eager.log_rows, fast.log_rows, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert b[k] == pytest.approx(a[k], rel=1e-3, abs=1e-4), k
    ema_a = load_checkpoint(tmp_path / "eager/model.pt")["ema"]
    assert ema_a.keys() == load_checkpoint(tmp_path / "compiled/model.pt")["ema"].keys()


def test_batches_are_epoch_permutations_and_resume_exactly() -> None:
    """Each epoch visits every example at most once (n // batch steps of a permutation); the
    next epoch is another permutation; an instance created at step k (a resumed run) returns
    what the uninterrupted one does."""
    from cdae.training import BatchIndices

    cpu = torch.device("cpu")
    run = BatchIndices(10, 3, seed=0, device=cpu)
    epoch0 = torch.cat([run(s) for s in range(3)])
    assert epoch0.shape == (9,) and len(set(epoch0.tolist())) == 9 and int(epoch0.max()) < 10
    epoch1 = torch.cat([run(s) for s in range(3, 6)])
    assert len(set(epoch1.tolist())) == 9 and not torch.equal(epoch0, epoch1)
    assert torch.equal(BatchIndices(10, 3, seed=0, device=cpu)(4), run(4))
    assert not torch.equal(BatchIndices(10, 3, seed=1, device=cpu)(4), run(4))
    assert BatchIndices(2, 3, seed=0, device=cpu)(5).shape == (2,)  # n < batch: all of them


def test_label_condition_space_trains_and_decodes_in_label_coordinates(
        params, dataset, tmp_path: Path) -> None:
    """model.condition_space: label trains (other weights than latent, same seed) and the
    engine decodes with the label coordinates: a counterfactual's condition puts the set
    intensity's standardised value, not g of it, in the intensity block."""
    from cdae.counterfactual import CounterfactualEngine

    label, latent = (dataclasses.replace(params, model=dataclasses.replace(
        params.model, condition_space=space))
        for space in (config.ConditionSpace.LABEL, config.ConditionSpace.LATENT))
    train(latent, dataset, tmp_path / "latent", show_progress=False)
    train(label, dataset, tmp_path / "label", show_progress=False)
    a, b = weights(tmp_path / "latent/model.pt"), weights(tmp_path / "label/model.pt")
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("raw.unet"))
    engine = CounterfactualEngine.load(tmp_path / "label/model.pt")
    model = engine.model
    assert model.params.condition_space is config.ConditionSpace.LABEL
    y = torch.tensor([[2.0, 200.0, 3.0]])
    with torch.no_grad():
        z = model.prior_mean(y)
        c = model.condition(z, None).view(1, 3, -1)
        y_norm = model.normalise(y)
    torch.testing.assert_close(c[0, 1], y_norm[0, 1].expand(model.d), atol=1e-4, rtol=0)
    assert not torch.allclose(z[0, 1], c[0, 1])  # g is not the identity after training
    images = dataset.images[:2]
    out = engine.counterfactual(images, {"intensity": 200.0}, steps=3)
    assert out.images.shape == images.shape


@pytest.mark.parametrize("kind", ["free", "normalised"])
def test_train_json_reports_class_separation_and_warns_on_a_collapsed_table(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
        kind: str) -> None:
    """train.json's class_separation: two classes' prior means in prior sigmas (under the
    checkpoint's own class_embedding); a collapsed free table is flagged in the log."""
    from cdae.checkpoint import save_checkpoint
    from cdae.graph import CausalGraph
    from cdae.progress import log
    from stages.train import _class_check

    monkeypatch.setattr(log, "propagate", True)
    graph = CausalGraph.from_dict({"variables": [
        {"name": "t"}, {"name": "k", "type": "categorical", "classes": 3}], "edges": []})
    table = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0]]) * 0.01  # 2 dims, shrunk
    save_checkpoint(tmp_path / "model.pt", {
        "graph": graph.to_json(), "ema": {"causal.embeddings.k.weight": table},
        "params": {"model": {"prior_sigma": 0.1, "class_embedding": kind}},
        "image_shape": [1, 8, 8], "label_mean": [0.0, 0.0], "label_std": [1.0, 1.0]})
    with caplog.at_level("WARNING", logger="cdae"):
        sep = _class_check(tmp_path / "model.pt")["class_separation"]
    scale = 1.0 if kind == "free" else 2 ** 0.5 / 0.01  # normalised rows: norm sqrt(2)
    assert list(sep) == ["k"]
    assert sep["k"]["min"] == pytest.approx(round(0.01 * scale * 2 ** 0.5 / 0.1, 2))
    assert sep["k"]["mean"] == pytest.approx(
        round(0.01 * scale * (2 * 2 ** 0.5 + 2 * 2 ** 0.5 + 2 * 2) / 6 / 0.1, 2))
    assert ("barely tells them apart" in caplog.text) is (kind == "free"), caplog.text
