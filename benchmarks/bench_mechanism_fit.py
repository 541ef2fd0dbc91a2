"""How closely the label-only fit of the mechanisms recovers the true counterfactual parents,
by how many train labels each step sees (``train.mechanism_batch``).

Usage (from the repo root, after `cdae prepare-data`):
    python -m benchmarks.bench_mechanism_fit [--batches 0,256,1024] [--seeds 3]

Fits the causal layer alone (mechanisms and monotone prior maps; no images) the way `cdae train`
does: AdamW at ``train.mechanism_lr`` for ``train.steps`` steps, EMA with warm-up at
``train.ema_decay``, each step on ``mechanism_batch`` labels drawn from the whole train split
(0 = a random image batch's ``train.batch_size`` labels, the fit before mechanism_batch). Then
abducts the test split's noise from its labels, sets each root to a value drawn from the train
marginal, and prints the MAE (raw units) between every child's counterfactual value read from
z_cf and the true SCM's (the evaluate stage's ``parent_<v>_mae_labels``), per seed, with the
ratio of each batch's mean to the first's. A few seconds per fit on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch

from cdae import config
from cdae.causal import CausalLayer
from cdae.dataset import Split, read_dataset
from cdae.generators import make_generator
from cdae.training import EMA, mechanism_loss


def fit(layer: CausalLayer, reference: torch.Tensor, tp: config.TrainParams,
        seed: int) -> CausalLayer:
    """The EMA of ``layer`` after ``tp.steps`` label-only steps on ``reference`` (N, K)
    standardised train labels (NaN = missing)."""
    params = [*layer.mechanisms.parameters(), *layer.monotone.parameters()]
    opt = torch.optim.AdamW(params, lr=tp.mechanism_lr, weight_decay=0.0)
    ema = EMA(layer, tp.ema_decay)
    gen = torch.Generator().manual_seed(seed)
    for step in range(tp.steps):
        rows = torch.randint(0, reference.shape[0], (tp.batch_size,), generator=gen)
        y = torch.nan_to_num(reference[rows])
        pick = (torch.randint(0, reference.shape[0], (tp.mechanism_batch,), generator=gen)
                if tp.mechanism_batch else None)
        loss = mechanism_loss(layer, y, torch.isfinite(reference[rows]), pick, reference)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.update(layer, step)
    layer.load_state_dict(ema.shadow)
    return layer


@torch.no_grad()
def parent_errors(layer: CausalLayer, ds, gen, mean: torch.Tensor, std: torch.Tensor,
                  seed: int) -> dict[str, float]:
    """MAE of each child's believed counterfactual value under do(roots drawn from the train
    marginal), test split, abduction from the labels."""
    graph = ds.graph
    test, train = ds.indices(Split.TEST), ds.indices(Split.TRAIN)
    rng = np.random.default_rng(seed)
    roots = [n for n in graph.names if not graph.parents(n)
             and not graph.variable(n).is_categorical and graph.children(n)]
    y = torch.as_tensor(ds.labels[test], dtype=torch.float32)
    z = layer.prior_mean((y - mean) / std)
    u = layer.abduct_noise(z)
    do = {r: rng.choice(ds.labels[train, graph.index(r)], test.size) for r in roots}
    star = y.clone()
    for r, v in do.items():
        star[:, graph.index(r)] = torch.as_tensor(v, dtype=torch.float32)
    z_do = layer.prior_mean((star - mean) / std)
    z_cf = layer.intervene(z, u, {graph.index(r): z_do[:, graph.index(r)] for r in roots})
    believed = (layer.read_labels(z_cf) * std + mean).numpy()
    labels = {n: ds.labels[test, j] for j, n in enumerate(graph.names)}
    noise = ds.noise[test] if ds.noise is not None else None
    truth = gen.counterfactual_labels(labels, noise, do)
    out = {}
    for j, n in enumerate(graph.names):
        if n in truth and n not in do and graph.parents(n):
            out[n] = float(np.nanmean(np.abs(believed[:, j] - truth[n])))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--profile", default=None)
    ap.add_argument("--batches", default="0,256,1024,4096",
                    help="train.mechanism_batch values (0 = the image batch's labels)")
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    params = config.load(args.params, args.profile)
    ds = read_dataset(params.paths.dataset)
    if not ds.scm:
        raise SystemExit(f"{params.paths.dataset} has no SCM: no true counterfactual parents")
    gen = make_generator(config.SCMKind(ds.scm), params.data)
    mean = torch.as_tensor(ds.label_mean, dtype=torch.float32)
    std = torch.as_tensor(ds.label_std, dtype=torch.float32)
    train = ds.indices(Split.TRAIN)
    reference = (torch.as_tensor(ds.labels[train], dtype=torch.float32) - mean) / std
    mp = params.model
    tp0 = params.train
    print(f"label-only mechanism fit, {tp0.steps} steps, lr {tp0.mechanism_lr}, EMA "
          f"{tp0.ema_decay}; parent counterfactual MAE on {ds.indices(Split.TEST).size} test "
          "labels (raw units)")
    first = None
    for batch in (int(b) for b in args.batches.split(",")):
        tp = dataclasses.replace(params.train, mechanism_batch=batch)
        errors: dict[str, list[float]] = {}
        t0 = time.perf_counter()
        for seed in range(args.seeds):
            torch.manual_seed(seed)
            layer = CausalLayer(ds.graph, mp.latent_dim, hidden=mp.mechanism_hidden,
                                mechanism=mp.mechanism, monotone_prior=mp.monotone_prior,
                                knots=mp.monotone_knots)
            fit(layer, reference, tp, seed)
            for n, e in parent_errors(layer, ds, gen, mean, std, seed).items():
                errors.setdefault(n, []).append(e)
        secs = (time.perf_counter() - t0) / args.seeds
        label = f"batch {batch}" if batch else f"image batch ({tp.batch_size})"
        for n, es in errors.items():
            m = float(np.mean(es))
            first = first if first is not None else m
            print(f"{label:>20}  {n}: {m:.3f} (seeds {', '.join(f'{e:.3f}' for e in es)}), "
                  f"ratio to the first {m / first:.2f}, {secs:.0f} s per fit")


if __name__ == "__main__":
    main()
