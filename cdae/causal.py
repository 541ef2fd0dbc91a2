"""Structural equations on latents: the label-alignment prior and the recursive causal layer.

Notation (METHOD.md): K variables, one block of d dims each. Exogenous noise u (B, K, d);
endogenous latents z (B, K, d). For a non-root variable i with parents pa(i)::

    z_i = f_i(concat_{j in pa(i)} z_j) * 1_d + exp(s_i(z_pa)) * u_i      (roots: z_i = u_i)

f_i is a small MLP with a scalar output; s_i = 0 for the additive mechanism. Abduction is exact:
u_i = (z_i - f_i(z_pa)) / exp(s_i(z_pa)).

Label-alignment prior p(z_i | y_i) = N(mu_i(y_i) * 1_d, sigma^2 I). For a continuous root,
mu_i(y) is the standardised label. For a continuous variable with parents, mu_i is a learned
strictly monotone map g_i of the standardised label (``monotone_prior``): then the additive
mechanism in z is exact for any mechanism of the form y_i = h(a(pa) + b * noise) with h monotone
(DeepSCM's intensity is one), because g_i can learn h^-1. g_i and f_i are fitted on the labels by
a flow likelihood: eps_i = (g_i(y_i) - f_i(mu(y_pa))) / sigma_i(pa) ~ N(0, 1), with the
change-of-variables term log g_i'(y_i). For a categorical variable mu_i is a learned class
embedding e_i[y] (B, d).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn
from torch.nn import functional as F

from cdae.config import ClassEmbedding, MechanismKind, ModelParams
from cdae.graph import CausalGraph


class MonotoneMap(nn.Module):
    """A strictly increasing scalar map g(x) = a x + b + sum_k w_k tanh((x - c_k) / h_k).

    a = softplus(.) + 1e-3 and w_k = softplus(.) keep g' > 0 everywhere; initialised close to
    the identity. ``inverse`` solves g(x) = y by bisection (exact to float precision).
    """

    def __init__(self, knots: int = 16, span: float = 4.0) -> None:
        super().__init__()
        self.raw_a = nn.Parameter(torch.tensor(math.log(math.e - 1.0)))  # softplus -> 1
        self.b = nn.Parameter(torch.zeros(()))
        self.raw_w = nn.Parameter(torch.full((knots,), -6.0))
        self.centers = nn.Parameter(torch.linspace(-span, span, knots))
        self.raw_h = nn.Parameter(torch.zeros(knots))

    def _terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a = F.softplus(self.raw_a) + 1e-3
        w = F.softplus(self.raw_w)
        h = F.softplus(self.raw_h) + 0.05
        arg = (x.unsqueeze(-1) - self.centers) / h
        return a, w * torch.tanh(arg), (w / h) * (1.0 - torch.tanh(arg) ** 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (...,) standardised label -> g(x) (...,)."""
        a, t, _ = self._terms(x)
        return a * x + self.b + t.sum(-1)

    def log_derivative(self, x: torch.Tensor) -> torch.Tensor:
        """log g'(x) (...,)."""
        a, _, d = self._terms(x)
        return torch.log(a + d.sum(-1))

    @torch.no_grad()
    def inverse(self, y: torch.Tensor, lo: float = -50.0, hi: float = 50.0,
                iters: int = 80) -> torch.Tensor:
        """Solve g(x) = y for x by bisection; y (...,)."""
        lo_t = torch.full_like(y, lo)
        hi_t = torch.full_like(y, hi)
        for _ in range(iters):
            mid = 0.5 * (lo_t + hi_t)
            above = self.forward(mid) > y
            hi_t = torch.where(above, mid, hi_t)
            lo_t = torch.where(above, lo_t, mid)
        return 0.5 * (lo_t + hi_t)


class Mechanism(nn.Module):
    """f_i (and s_i for location-scale) from the concatenated parent blocks (B, P*d) -> (B,)."""

    def __init__(self, in_dim: int, hidden: int, kind: MechanismKind) -> None:
        super().__init__()
        self.kind = kind
        out = 2 if kind is MechanismKind.LOCATION_SCALE else 1
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.SiLU(),
                                 nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, out))
        self.log_sigma = nn.Parameter(torch.zeros(()))  # homoscedastic label noise scale

    def forward(self, z_pa: torch.Tensor, frozen: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (loc (B,), log_scale (B,)); log_scale is 0 for the additive mechanism.
        ``frozen``: the same values with the weights detached, so the result still carries
        gradients to ``z_pa`` but none to the mechanism's own parameters."""
        if frozen:
            out = z_pa
            for layer in self.net:
                out = (F.linear(out, layer.weight.detach(), layer.bias.detach())
                       if isinstance(layer, nn.Linear) else layer(out))
        else:
            out = self.net(z_pa)
        if self.kind is MechanismKind.LOCATION_SCALE:
            return out[:, 0], out[:, 1].clamp(-5.0, 5.0)
        return out[:, 0], torch.zeros_like(out[:, 0])


def scaled_class_table(weight: torch.Tensor, kind: ClassEmbedding) -> torch.Tensor:
    """A class-embedding weight (classes, d) as prior means: as it is (``free``), or each row
    rescaled to norm sqrt(d) (``normalised``)."""
    if ClassEmbedding(kind) is ClassEmbedding.FREE:
        return weight
    return weight * (weight.shape[1] ** 0.5 / weight.norm(dim=1, keepdim=True).clamp_min(1e-12))


def class_separation(table: torch.Tensor) -> tuple[float, float]:
    """Smallest and mean distance between two rows of a class table (classes, d): how far
    apart the prior means of two classes lie (compare with ``model.prior_sigma``)."""
    table = table.detach().float()
    dist = torch.cdist(table, table)
    off = dist[~torch.eye(table.shape[0], dtype=torch.bool)]
    return float(off.min()), float(off.mean())


SEPARATION_WARN = 2.0
"""Class prior means closer than this many prior sigmas are flagged (train.json, the log)."""


def checkpoint_class_separations(ck: dict) -> dict[str, tuple[float, float]]:
    """A checkpoint dict's (:func:`cdae.checkpoint.load_checkpoint`) categorical variables
    -> (smallest, mean) distance between two of their class prior means (EMA weights), in
    prior sigmas."""
    model = ck["params"].get("model") or {}
    kind = ClassEmbedding(model.get("class_embedding", ClassEmbedding.FREE.value))
    sigma = float(model.get("prior_sigma", ModelParams.prior_sigma))
    out = {}
    for v in CausalGraph.from_json(ck["graph"]).variables:
        weight = ck["ema"].get(f"causal.embeddings.{v.name}.weight")
        if v.is_categorical and weight is not None:
            low, mean = class_separation(scaled_class_table(weight, kind))
            out[v.name] = (low / sigma, mean / sigma)
    return out


class CausalLayer(nn.Module):
    """Prior means, mechanisms and the recursive structural equations over latent blocks."""

    def __init__(self, graph: CausalGraph, latent_dim: int, *, hidden: int = 64,
                 mechanism: MechanismKind = MechanismKind.ADDITIVE,
                 mechanisms: Mapping[str, MechanismKind] | None = None,
                 monotone_prior: bool = True, knots: int = 16,
                 class_embedding: ClassEmbedding = ClassEmbedding.FREE) -> None:
        """``mechanism``: the kind of every f_i; ``mechanisms``: per-variable kinds over it;
        ``class_embedding``: the scale of categorical prior means (:meth:`class_table`)."""
        super().__init__()
        self.graph = graph
        self.class_embedding = ClassEmbedding(class_embedding)
        self.d = latent_dim
        self.names = graph.names
        self.order = [graph.index(n) for n in graph.topological_order()]
        self.parents = {graph.index(n): [graph.index(p) for p in graph.parents(n)]
                        for n in graph.names}
        self.mechanisms = nn.ModuleDict()
        self.monotone = nn.ModuleDict()
        self.embeddings = nn.ModuleDict()
        for v in graph.variables:
            pa = graph.parents(v.name)
            if pa:
                kind = (mechanisms or {}).get(v.name, mechanism)
                self.mechanisms[v.name] = Mechanism(len(pa) * latent_dim, hidden, kind)
            if v.is_categorical:
                emb = nn.Embedding(v.classes, latent_dim)
                nn.init.normal_(emb.weight, std=1.0)
                self.embeddings[v.name] = emb
            elif pa and monotone_prior:
                self.monotone[v.name] = MonotoneMap(knots)

    # ------------------------------------------------------------------ prior mean mu(y)
    def class_table(self, name: str) -> torch.Tensor:
        """Categorical variable ``name``'s prior means e[y], (classes, d): the learned table,
        or with ``class_embedding: normalised`` each row rescaled to norm sqrt(d) (RMS 1 per
        dimension, a standardised label's scale), so that the table learns directions only.
        A free table shrinks: the N(0, I) KL on u pulls a root block's encoder means, and the
        alignment term pulls the rows after them, towards 0."""
        return scaled_class_table(self.embeddings[name].weight, self.class_embedding)

    def prior_mean(self, y_norm: torch.Tensor) -> torch.Tensor:
        """Standardised labels (B, K) (categorical: class index; NaN allowed, gives 0) ->
        prior means (B, K, d)."""
        blocks = []
        y = torch.nan_to_num(y_norm, nan=0.0)
        for k, v in enumerate(self.graph.variables):
            if v.is_categorical:
                idx = y[:, k].round().long().clamp(0, v.classes - 1)
                blocks.append(self.class_table(v.name)[idx])
            else:
                g = self.monotone[v.name](y[:, k]) if v.name in self.monotone else y[:, k]
                blocks.append(g.unsqueeze(-1).expand(-1, self.d))
        return torch.stack(blocks, 1)

    def read_labels(self, z: torch.Tensor) -> torch.Tensor:
        """Inverse of the prior mean: latents (B, K, d) -> standardised labels (B, K)
        (continuous: g^-1 of the block mean; categorical: nearest class embedding)."""
        out = []
        for k, v in enumerate(self.graph.variables):
            block = z[:, k]
            if v.is_categorical:
                dist = torch.cdist(block, self.class_table(v.name))
                out.append(dist.argmin(-1).to(z.dtype))
            else:
                m = block.mean(-1)
                out.append(self.monotone[v.name].inverse(m) if v.name in self.monotone else m)
        return torch.stack(out, 1)

    def label_coordinates(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, K, d) -> the same blocks with each monotone-mapped block's mean m replaced by
        g^-1(m), the standardised label it stands for (the residual z - m stays): the
        condition's coordinates are then linear in the label, so a value in the label's tail
        is not stretched far out as g (logit-like for a sigmoid mechanism) stretches it.
        Differentiable in z (d g^-1(m) / dm = 1 / g'(g^-1(m))); g itself gets no gradient here
        (it is fitted by the mechanisms' likelihood)."""
        blocks = []
        for k, v in enumerate(self.graph.variables):
            block = z[:, k]
            if v.name in self.monotone:
                g = self.monotone[v.name]
                m = block.mean(-1)
                x = g.inverse(m.detach())
                slope = g.log_derivative(x).exp().detach()
                x = x + (m - m.detach()) / slope  # value x, gradient 1 / g'(x) in m
                block = block + (x - m).unsqueeze(-1)
            blocks.append(block)
        return torch.stack(blocks, 1)

    # ------------------------------------------------------------------ structural equations
    def _parent_input(self, z: torch.Tensor, k: int) -> torch.Tensor:
        return torch.cat([z[:, j] for j in self.parents[k]], dim=-1)

    def _equation(self, z: list[torch.Tensor | None], u: torch.Tensor, k: int,
                  frozen: bool = False) -> torch.Tensor:
        """Block k's structural equation (B, d) from its parents' blocks in ``z`` and u_k."""
        if not self.parents[k]:
            return u[:, k]
        stacked = torch.stack([z[j] for j in self.parents[k]], 1)  # type: ignore[misc]
        loc, log_scale = self.mechanisms[self.names[k]](stacked.flatten(1), frozen=frozen)
        return loc.unsqueeze(-1) + torch.exp(log_scale).unsqueeze(-1) * u[:, k]

    def causal_layer(self, u: torch.Tensor, frozen_mechanisms: bool = False) -> torch.Tensor:
        """u (B, K, d) -> z (B, K, d), recursively in topological order.
        ``frozen_mechanisms``: no gradient reaches the mechanisms' parameters from z (u still
        gets its gradient): ``train.mechanism_fit: labels``."""
        z: list[torch.Tensor | None] = [None] * u.shape[1]
        for k in self.order:
            z[k] = self._equation(z, u, k, frozen_mechanisms)
        return torch.stack(z, 1)  # type: ignore[arg-type]

    def complete(self, u: torch.Tensor, z_known: torch.Tensor,
                 known: torch.Tensor) -> torch.Tensor:
        """Factual latents from partly known blocks: z (B, K, d) with z_k = z_known_k where
        ``known`` (B, K) bool, else the structural equation with the exogenous ``u_k`` and the
        parents' FINAL z, in topological order. A known block is kept exactly, even when an
        unknown block lies between it and a known ancestor (a -> b -> c, b unknown)."""
        z: list[torch.Tensor | None] = [None] * u.shape[1]
        for k in self.order:
            z[k] = torch.where(known[:, k].unsqueeze(-1), z_known[:, k], self._equation(z, u, k))
        return torch.stack(z, 1)  # type: ignore[arg-type]

    def abduct_noise(self, z: torch.Tensor) -> torch.Tensor:
        """Exact inverse of causal_layer: z (B, K, d) -> u (B, K, d)."""
        u = z.clone()
        for k in self.order:
            if self.parents[k]:
                loc, log_scale = self.mechanisms[self.names[k]](self._parent_input(z, k))
                u[:, k] = (z[:, k] - loc.unsqueeze(-1)) / torch.exp(log_scale).unsqueeze(-1)
        return u

    def intervene(self, z: torch.Tensor, u: torch.Tensor,
                  do: dict[int, torch.Tensor]) -> torch.Tensor:
        """Action step. z, u (B, K, d); do maps variable index -> new block (B, d).

        Intervened blocks are set; ONLY their descendants are recomputed in topological order
        with the same u; every other block is returned exactly as it was.
        """
        z_cf = z.clone()
        for k, block in do.items():
            z_cf[:, k] = block
        desc = {self.graph.index(n) for n in
                self.graph.descendants([self.names[k] for k in do])}
        for k in self.order:
            if k in desc and k not in do:
                loc, log_scale = self.mechanisms[self.names[k]](self._parent_input(z_cf, k))
                z_cf[:, k] = loc.unsqueeze(-1) + torch.exp(log_scale).unsqueeze(-1) * u[:, k]
        return z_cf

    # ------------------------------------------------------------------ training signal
    def mechanism_nll(self, y_norm: torch.Tensor, mask: torch.Tensor,
                      reference: torch.Tensor | None = None) -> torch.Tensor:
        """Flow negative log-likelihood of each non-root label given its parents' labels,
        averaged over examples where the child and all its parents are labelled; plus a
        standardisation penalty that fixes the scale of each monotone g_i. Scalar.

        y_norm (B, K) standardised labels; mask (B, K) bool. ``reference`` (M, K) standardised
        labels (NaN = missing), e.g. the whole train split: the penalty asks g_i of THOSE values
        to have mean 0 and variance 1, so it does not depend on how a batch is split over
        data-parallel processes (without it, the batch's own values are used).
        Rows are weighted by the mask rather than selected, so the shapes never depend on the
        data: no host read-back, and ``torch.compile`` takes it whole. A mechanism with no
        labelled example in the batch contributes exactly 0."""
        total = y_norm.new_zeros(())
        mu = self.prior_mean(y_norm).detach()
        for k in self.order:
            pa = self.parents[k]
            if not pa:
                continue
            name = self.names[k]
            if self.graph.variables[k].is_categorical:
                raise NotImplementedError  # guarded by the model constructor
            ok = mask[:, k] & mask[:, pa].all(1)  # (B,)
            count = ok.sum()
            loc, log_scale = self.mechanisms[name](self._parent_input(mu, k))
            log_sigma = self.mechanisms[name].log_sigma + log_scale
            x = torch.where(ok, y_norm[:, k], torch.zeros_like(y_norm[:, k]))
            if name in self.monotone:
                gmap = self.monotone[name]
                g = gmap(x)
                log_det = gmap.log_derivative(x)
                if reference is not None:
                    col = reference[:, k]
                    fin = torch.isfinite(col)
                    g_ref = gmap(torch.where(fin, col, torch.zeros_like(col)))
                else:
                    g_ref, fin = g, ok
                n_ref = fin.sum()
                w_ref = fin.to(g.dtype) / n_ref.clamp(min=1)
                mean = (g_ref * w_ref).sum()
                var = ((g_ref - mean).square() * w_ref).sum()
                standardise = torch.where(n_ref > 1, mean ** 2 + (var - 1.0) ** 2,
                                          torch.zeros_like(mean))
            else:
                g, log_det, standardise = x, torch.zeros_like(x), x.new_zeros(())
            eps = (g - loc) / torch.exp(log_sigma)
            nll = 0.5 * eps ** 2 + log_sigma - log_det
            nll_mean = torch.where(ok, nll, torch.zeros_like(nll)).sum() / count.clamp(min=1)
            total = total + torch.where(count > 0, nll_mean + standardise,
                                        torch.zeros_like(nll_mean))
        return total
