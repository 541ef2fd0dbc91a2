"""Causal layer: exact abduction, propagation only to descendants, a mechanism that learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cdae.causal import CausalLayer, MonotoneMap
from cdae.config import ClassEmbedding
from cdae.graph import CausalGraph

CHAIN = CausalGraph.from_dict({
    "variables": [{"name": "a"}, {"name": "b"}, {"name": "c"}, {"name": "d"},
                  {"name": "k", "type": "categorical", "classes": 3}],
    "edges": [["a", "b"], ["b", "c"], ["d", "c"]]})


@pytest.fixture()
def layer() -> CausalLayer:
    torch.manual_seed(0)
    return CausalLayer(CHAIN, latent_dim=4, hidden=8)


def test_causal_layer_is_recursive_and_abduction_exact(layer) -> None:
    u = torch.randn(5, 5, 4)
    z = layer.causal_layer(u)
    # depth-2 variable c depends on a through b's ENDOGENOUS value
    u2 = u.clone()
    u2[:, 0] += 1.0
    z2 = layer.causal_layer(u2)
    assert not torch.allclose(z2[:, 2], z[:, 2])
    torch.testing.assert_close(layer.abduct_noise(z), u, atol=1e-5, rtol=1e-5)


def test_intervention_changes_only_descendants(layer) -> None:
    u = torch.randn(6, 5, 4)
    z = layer.causal_layer(u)
    z_cf = layer.intervene(z, u, {1: torch.full((6, 4), 2.0)})  # do(b)
    assert torch.equal(z_cf[:, 0], z[:, 0])  # parent a untouched
    assert torch.equal(z_cf[:, 3], z[:, 3])  # unrelated root d untouched
    assert torch.equal(z_cf[:, 4], z[:, 4])  # categorical root untouched
    assert torch.equal(z_cf[:, 1], torch.full((6, 4), 2.0))
    assert not torch.allclose(z_cf[:, 2], z[:, 2])  # child c recomputed
    # c is recomputed with the same abducted noise
    u_cf = layer.abduct_noise(z_cf)
    torch.testing.assert_close(u_cf[:, 2], u[:, 2], atol=1e-5, rtol=1e-5)
    # a null intervention is the identity
    assert torch.equal(layer.intervene(z, u, {}), z)


def test_frozen_mechanisms_give_the_same_z_and_gradients_only_to_u(layer) -> None:
    """causal_layer(u, frozen_mechanisms=True) (train.mechanism_fit: labels): the same values,
    the gradient to u unchanged, none to the mechanisms' parameters."""
    u = torch.randn(5, 5, 4, requires_grad=True)
    weights = torch.randn(5, 5, 4)
    z = layer.causal_layer(u)
    z_frozen = layer.causal_layer(u, frozen_mechanisms=True)
    assert torch.equal(z, z_frozen)
    (grad_u,) = torch.autograd.grad((z * weights).sum(), u, retain_graph=True)
    mech = list(layer.mechanisms.parameters())
    out = torch.autograd.grad((z_frozen * weights).sum(), [u, *mech], allow_unused=True)
    torch.testing.assert_close(out[0], grad_u)
    assert all(g is None for g in out[1:])
    assert any(g is not None and g.abs().sum() > 0 for g in
               torch.autograd.grad((z * weights).sum(), mech, allow_unused=True))


def test_monotone_map_inverse_and_derivative() -> None:
    torch.manual_seed(1)
    g = MonotoneMap(knots=6)
    with torch.no_grad():
        g.raw_w.normal_()
        g.raw_h.normal_()
    x = torch.linspace(-4, 4, 101)
    y = g(x)
    assert (y[1:] > y[:-1]).all()
    torch.testing.assert_close(g.inverse(y), x, atol=1e-4, rtol=0)
    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(g(xr).sum(), xr)
    torch.testing.assert_close(g.log_derivative(x), grad.log(), atol=1e-4, rtol=1e-4)


def test_label_coordinates_undo_the_monotone_map_and_keep_the_residual(layer) -> None:
    """Blocks b and c (monotone maps: non-root continuous) become g^-1(mean) + residual, with
    gradient 1 / g'(x) in the block mean; roots and the categorical block pass unchanged."""
    torch.manual_seed(2)
    with torch.no_grad():
        for g in layer.monotone.values():
            g.raw_w.normal_()
            g.raw_h.normal_()
    assert set(layer.monotone) == {"b", "c"}
    x = torch.linspace(-3, 3, 7)
    residual = 0.1 * torch.randn(7, 5, 4)
    residual -= residual.mean(-1, keepdim=True)
    means = torch.stack([layer.monotone["b"](x) if n == "b" else layer.monotone["c"](-x)
                         if n == "c" else x for n in CHAIN.names], 1)  # (7, 5)
    z = (means.unsqueeze(-1) + residual).detach().requires_grad_(True)
    c = layer.label_coordinates(z)
    torch.testing.assert_close(c[:, 1].mean(-1), x, atol=1e-4, rtol=0)
    torch.testing.assert_close(c[:, 2].mean(-1), -x, atol=1e-4, rtol=0)
    torch.testing.assert_close(c[:, 1:3] - c[:, 1:3].mean(-1, keepdim=True), residual[:, 1:3],
                               atol=1e-5, rtol=0)
    for k in (0, 3, 4):
        assert torch.equal(c[:, k], z[:, k])
    (grad,) = torch.autograd.grad(c[:, 1].mean(-1).sum(), z)
    slope = layer.monotone["b"].log_derivative(x).exp()
    torch.testing.assert_close(grad[:, 1].sum(-1), 1.0 / slope, atol=1e-4, rtol=1e-4)
    assert torch.equal(grad[:, 0], torch.zeros_like(grad[:, 0]))
    assert all(p.grad is None for p in layer.monotone.parameters())  # g is not trained here


@pytest.fixture()
def one_thread():
    """Tiny tensors: threads only add overhead. The count is restored even when a test fails."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_mechanism_learns_deepscm_counterfactual_intensity(one_thread) -> None:
    """Fitted on labels alone, the monotone prior + additive mechanism must beat the best
    ADDITIVE-noise mechanism's floor (4.7) on the true counterfactual intensity under do(t)."""
    torch.manual_seed(0)
    g = CausalGraph.from_dict({"variables": [{"name": "thickness"}, {"name": "intensity"}],
                               "edges": [["thickness", "intensity"]]})
    rng = np.random.default_rng(0)
    n = 3000
    sig = lambda a: 1 / (1 + np.exp(-a))  # noqa: E731
    t = 0.5 + rng.gamma(10, 1 / 5, n)
    e = rng.normal(size=n)
    i = 64 + 191 * sig(2 * (t - 2.5) + 0.5 * e)
    y = np.stack([t, i], 1)
    mean, std = y.mean(0), y.std(0)
    yn = torch.tensor((y - mean) / std, dtype=torch.float32)
    mask = torch.ones(n, 2, dtype=torch.bool)
    layer = CausalLayer(g, latent_dim=4, hidden=32)
    opt = torch.optim.Adam(layer.parameters(), 1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(1500):
        idx = torch.randint(0, n, (256,), generator=gen)
        loss = layer.mechanism_nll(yn[idx], mask[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    m = 400
    t_star = rng.choice(t, m)
    i_true = 64 + 191 * sig(2 * (t_star - 2.5) + 0.5 * e[:m])
    with torch.no_grad():
        z = layer.prior_mean(yn[:m])
        u = layer.abduct_noise(z)
        block = layer.prior_mean(torch.tensor((np.stack([t_star, i[:m]], 1) - mean) / std,
                                              dtype=torch.float32))[:, 0]
        z_cf = layer.intervene(z, u, {0: block})
        i_model = layer.read_labels(z_cf)[:, 1].numpy() * std[1] + mean[1]
    err = np.abs(i_model - i_true).mean()
    assert err < 3.0, err
    assert np.abs(i[:m] - i_true).mean() > 30  # do-nothing is far worse


def test_mechanism_likelihood_ignores_unlabelled_rows_even_nan() -> None:
    """Rows are masked by weight, not selected: the loss over a batch with unlabelled rows (NaN
    labels among them) equals the loss over its labelled rows alone, and the gradients stay
    finite; with a reference the penalty ignores its NaN rows the same way."""
    torch.manual_seed(0)
    g = CausalGraph.from_dict({"variables": [{"name": "thickness"}, {"name": "intensity"}],
                               "edges": [["thickness", "intensity"]]})
    layer = CausalLayer(g, latent_dim=2, hidden=8)
    y = torch.randn(12, 2)
    mask = torch.ones(12, 2, dtype=torch.bool)
    mask[8:, 1] = False  # the child unlabelled
    mask[6:8, 0] = False  # a parent unlabelled
    noisy = y.clone()
    noisy[8:, 1] = float("nan")
    noisy[6:8, 0] = float("nan")
    reference = torch.cat([y, torch.full((3, 2), float("nan"))])
    for ref, ref_alone in ((None, None), (reference, y)):
        layer.zero_grad()
        loss = layer.mechanism_nll(noisy, mask, ref)
        loss.backward()
        grads = [p.grad for p in layer.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(q).all() for q in grads)
        alone = layer.mechanism_nll(y[:6], torch.ones(6, 2, dtype=torch.bool), ref_alone)
        torch.testing.assert_close(loss, alone, rtol=1e-5, atol=1e-6)
    none = layer.mechanism_nll(noisy, torch.zeros_like(mask), reference)
    assert none.item() == 0.0  # no labelled pair: nothing, not even the penalty


def test_label_abduction_keeps_every_labelled_block_with_an_unlabelled_middle() -> None:
    """METHOD.md abduction from labels: a labelled variable's z is its label's prior mean even
    when an unlabelled variable sits between it and a labelled ancestor (a -> b -> c with b
    unknown); unlabelled blocks keep the encoder's u and follow their mechanisms."""
    from cdae.config import ModelParams
    from cdae.model import CausalDiffAE

    torch.manual_seed(0)
    params = ModelParams(latent_dim=4, encoder_channels=8, unet_channels=8, channel_mult=(1,),
                         mechanism_hidden=8)
    model = CausalDiffAE(CHAIN, params, (1, 16, 16), torch.zeros(5), torch.ones(5)).eval()
    for mech in model.causal.mechanisms.values():
        torch.nn.init.normal_(mech.net[-1].weight, std=2.0)
    x = torch.rand(3, 1, 16, 16) * 2 - 1
    nan = float("nan")
    y = torch.tensor([[0.3, nan, -0.7, 1.2, 2.0],
                      [0.3, 0.5, nan, nan, 1.0],
                      [nan, nan, 0.4, 0.1, 0.0]])
    ab = model.abduct(x, y)
    mu = model.prior_mean(torch.nan_to_num(y))
    present = torch.isfinite(y)
    assert torch.equal(ab.z[present], mu[present])
    u_enc, _ = model.split_latent(model.encode(x)[0])
    torch.testing.assert_close(ab.u[~present], u_enc[~present], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.causal.causal_layer(ab.u), ab.z, atol=1e-5, rtol=1e-5)


def test_mechanism_kind_per_variable() -> None:
    """`mechanisms` sets one variable's kind over the shared one: c's f_c is location-scale
    (a scale that depends on its parents), b's stays additive, and abduction stays exact."""
    from cdae.config import MechanismKind

    torch.manual_seed(0)
    layer = CausalLayer(CHAIN, latent_dim=4, hidden=8,
                        mechanisms={"c": MechanismKind.LOCATION_SCALE})
    kinds = {name: m.kind for name, m in layer.mechanisms.items()}
    assert kinds == {"b": MechanismKind.ADDITIVE, "c": MechanismKind.LOCATION_SCALE}
    z_pa = torch.randn(6, 8)
    assert layer.mechanisms["c"](z_pa)[1].abs().sum() > 0  # a learned log-scale
    assert torch.equal(layer.mechanisms["b"](z_pa[:, :4])[1], torch.zeros(6))
    u = torch.randn(5, 5, 4)
    torch.testing.assert_close(layer.abduct_noise(layer.causal_layer(u)), u, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", list(ClassEmbedding))
def test_class_embedding_scale_under_a_pull_towards_zero(kind: ClassEmbedding) -> None:
    """What the alignment term does to the class table when the encoder's means drift to 0
    (the N(0, I) KL on u): a free table follows them and shrinks; a normalised one keeps
    every class's prior mean at norm sqrt(d), and read_labels still inverts prior_mean."""
    torch.manual_seed(0)
    layer = CausalLayer(CHAIN, latent_dim=4, hidden=8, class_embedding=kind)
    y = torch.tensor([[0.0, 0.0, 0.0, 0.0, float(c)] for c in range(3)])
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    for _ in range(50):
        opt.zero_grad()
        layer.prior_mean(y)[:, 4].square().sum().backward()  # align to encoder means at 0
        opt.step()
    norms = layer.prior_mean(y)[:, 4].norm(dim=-1).detach()
    if kind is ClassEmbedding.FREE:
        assert norms.max() < 0.1  # collapsed: the digit block no longer tells classes apart
    else:
        torch.testing.assert_close(norms, torch.full((3,), 2.0))  # sqrt(4)
    torch.testing.assert_close(layer.read_labels(layer.prior_mean(y))[:, 4], y[:, 4])
