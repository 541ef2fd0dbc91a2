"""Every profile of params.yaml builds its model, trains and answers a do-query on a CPU.

The `gpu` and `paper` profiles are meant for a CUDA machine and have seldom (`paper`: never)
been lent one; these tests run their exact architectures and samplers for three optimiser steps
on a few random images, so a profile that cannot build, leaves a module without gradient or
breaks its sampler fails here rather than on a GPU job.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from cdae import config
from cdae.counterfactual import CounterfactualEngine
from cdae.training import build_model, compute_loss, make_diffusion

ROOT = Path(__file__).resolve().parents[1]
RAW = yaml.safe_load((ROOT / "params.yaml").read_text())

# parameters of the whole model per profile (UNet, encoder, causal layer): the sizes the README
# and docs/results.md quote; a change of architecture must update them knowingly
PARAMETERS = {"default": 936_341, "gpu": 8_116_453, "paper": 39_835_301, "pendulum": 816_891}


def _image_shape(p: config.Params) -> tuple[int, int, int]:
    if p.data.source is config.DataSource.SCENES:
        size = p.data.pendulum.image_size
        return (3, size, size)
    return (1, 28, 28)


def _labels(p: config.Params, n: int, gen: torch.Generator) -> torch.Tensor:
    """(n, K) raw labels: continuous ones standard normal, categorical ones cycling classes."""
    y = torch.randn(n, len(p.graph.names), generator=gen)
    for j, name in enumerate(p.graph.names):
        var = p.graph.variable(name)
        if var.is_categorical:
            y[:, j] = torch.arange(n) % var.classes
    return y


@pytest.mark.parametrize("profile", ["default", "gpu", "paper", "pendulum"])
def test_profile_trains_and_answers_a_do_query(profile: str) -> None:
    p = config.resolve(RAW, profile)
    shape = _image_shape(p)
    k = len(p.graph.names)
    torch.manual_seed(0)
    model = build_model(p, shape, np.zeros(k), np.ones(k))
    assert sum(q.numel() for q in model.parameters()) == PARAMETERS[profile]
    diffusion = make_diffusion(p)

    gen = torch.Generator().manual_seed(0)
    b = 2
    x = torch.rand(b, *shape, generator=gen) * 2 - 1
    y = _labels(p, b, gen)
    mask = torch.ones(b, k, dtype=torch.bool)
    opt = torch.optim.AdamW(model.parameters(), lr=p.train.lr)
    # the UNet's output conv and the last conv of each block start at zero (it outputs zero):
    # step 1 moves the output conv, step 2 the blocks' last convs, step 3 reaches every module
    for step in range(3):
        opt.zero_grad()
        loss = compute_loss(model, diffusion, x, y, mask, step, p.train, gen,
                            reference=model.normalise(y)).total
        assert torch.isfinite(loss)
        loss.backward()
        opt.step()
    # the learned null condition gets a gradient only from batches that draw it (p_uncond)
    dead = [n for n, q in model.named_parameters()
            if n != "null_cond" and (q.grad is None or not bool(q.grad.abs().sum() > 0))]
    assert dead == []

    engine = CounterfactualEngine(model, diffusion, intervene=p.intervene, sampling=p.diffusion)
    images = ((x + 1) * 127.5).round().to(torch.uint8).numpy()
    root = p.graph.topological_order()[0]
    value = 1.5 if not p.graph.variable(root).is_categorical else 3.0
    result = engine.counterfactual(images, {root: value}, labels=y.numpy(), steps=3)
    assert result.images.shape == images.shape and result.images.dtype == np.uint8
    np.testing.assert_allclose(result.parents_cf[:, p.graph.index(root)], value)
    downstream = set(p.graph.descendants([root]))
    for j, name in enumerate(p.graph.names):
        moved = np.abs(result.parents_cf[:, j] - result.parents_factual[:, j])
        if name in downstream:  # follows the root through the (untrained) mechanisms
            assert np.all(moved > 0), name
        elif name != root:  # neither set nor a descendant: kept
            np.testing.assert_allclose(moved, 0.0, atol=1e-5)
