"""The Causal Diffusion Autoencoder: encoder q(u|x), causal layer, label prior, conditional UNet.

Shapes: x (B, C, H, W) in [-1, 1]; labels y (B, K) in RAW units (NaN = missing); u, z (B, K, d);
the UNet condition c = flatten(z) (B, K*d) (+ style block (B, style_dim) when configured).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cdae.causal import CausalLayer
from cdae.config import ConditionSpace, ModelParams, Prediction
from cdae.errors import ConfigError
from cdae.graph import CausalGraph
from cdae.unet import Encoder, UNet


@dataclass
class Abducted:
    """Result of abduction for a batch: exogenous u, factual z (B, K, d), style (B, S) or None,
    and which factual parents came from labels (B, K) bool."""

    u: torch.Tensor
    z: torch.Tensor
    style: torch.Tensor | None
    from_labels: torch.Tensor


class CausalDiffAE(nn.Module):
    def __init__(self, graph: CausalGraph, params: ModelParams, image_shape: tuple[int, int, int],
                 label_mean: torch.Tensor, label_std: torch.Tensor,
                 prediction: Prediction = Prediction.EPS,
                 schedule: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        """``prediction`` is what the UNet outputs; for V, ``schedule`` is the diffusion's
        (sqrt(alpha_bar), sqrt(1 - alpha_bar)) tables, each (T,), which :meth:`eps` needs to turn
        v into eps."""
        super().__init__()
        for v in graph.variables:
            if v.is_categorical and graph.parents(v.name):
                raise ConfigError(f"graph: categorical variable '{v.name}' has parents",
                                  hint="categorical variables must be roots in this version")
        self.graph = graph
        self.params = params
        self.image_shape = tuple(image_shape)
        self.k = len(graph.variables)
        self.d = params.latent_dim
        self.style_dim = params.style_dim
        c, h, _w = image_shape
        self.encoder = Encoder(in_channels=c, base_channels=params.encoder_channels,
                               num_down=3, out_dim=2 * (self.k * self.d + self.style_dim))
        self.causal = CausalLayer(graph, self.d, hidden=params.mechanism_hidden,
                                  mechanism=params.mechanism,
                                  mechanisms=params.mechanisms,
                                  monotone_prior=params.monotone_prior,
                                  knots=params.monotone_knots,
                                  class_embedding=params.class_embedding)
        self.cond_dim = self.k * self.d + self.style_dim
        self.unet = UNet(in_channels=c, base_channels=params.unet_channels,
                         channel_mult=tuple(params.channel_mult),
                         num_res_blocks=params.num_res_blocks, cond_dim=self.cond_dim,
                         attention_resolutions=tuple(params.attention_resolutions),
                         dropout=params.dropout)
        self.null_cond = nn.Parameter(torch.randn(self.cond_dim) * 0.5)
        self.register_buffer("label_mean", label_mean.clone().float())
        self.register_buffer("label_std", label_std.clone().float())
        # which variables are categorical, (K,) bool; derived from the graph, not saved
        self.register_buffer("is_categorical", torch.tensor([v.is_categorical for v in
                                                             graph.variables]), persistent=False)
        self.prediction = Prediction(prediction)
        if self.prediction is Prediction.V:
            if schedule is None:
                raise ValueError("prediction v needs the diffusion's schedule tables")
            # the diffusion's own tables, not learned: kept out of the state dict
            self.register_buffer("sqrt_ab", schedule[0].clone(), persistent=False)
            self.register_buffer("sqrt_1m_ab", schedule[1].clone(), persistent=False)

    # ------------------------------------------------------------------ labels
    def normalise(self, y: torch.Tensor) -> torch.Tensor:
        """Raw labels (B, K) -> standardised (categorical columns are passed through)."""
        return (y - self.label_mean) / self.label_std

    def denormalise(self, y_norm: torch.Tensor) -> torch.Tensor:
        return y_norm * self.label_std + self.label_mean

    def prior_mean(self, y: torch.Tensor) -> torch.Tensor:
        """Raw labels (B, K) -> prior means mu(y) (B, K, d): the map used for do(var=value)."""
        return self.causal.prior_mean(self.normalise(y))

    def read_labels(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (B, K, d) -> raw label values the model believes (B, K)."""
        return self.denormalise(self.causal.read_labels(z))

    # ------------------------------------------------------------------ encoder
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, H, W) -> posterior mean and log-variance of (u, style), each (B, K*d+S)."""
        out = self.encoder(x)
        mean, logvar = out.chunk(2, dim=1)
        return mean, logvar.clamp(-10.0, 10.0)

    def split_latent(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        u = flat[:, : self.k * self.d].view(-1, self.k, self.d)
        style = flat[:, self.k * self.d:] if self.style_dim else None
        return u, style

    def condition(self, z: torch.Tensor, style: torch.Tensor | None) -> torch.Tensor:
        """z (B, K, d) (+ style (B, S)) -> UNet condition c (B, K*d+S); with
        ``model.condition_space: label`` the monotone-mapped blocks in label coordinates
        (:meth:`CausalLayer.label_coordinates`)."""
        if self.params.condition_space is ConditionSpace.LABEL:
            z = self.causal.label_coordinates(z)
        c = z.flatten(1)
        return torch.cat([c, style], 1) if style is not None else c

    def null(self, batch: int) -> torch.Tensor:
        """The learned null condition, (B, cond_dim)."""
        return self.null_cond.unsqueeze(0).expand(batch, -1)

    def eps(self, x_t: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """eps_theta(x_t, t, c): (B, C, H, W), whatever the UNet predicts. x_t (B, C, H, W),
        t (B,) long in [0, T-1]. For V: eps = sqrt(1 - ab_t) x_t + sqrt(ab_t) v (in float32)."""
        out = self.unet(x_t, t, c)
        if self.prediction is Prediction.EPS:
            return out
        a = self.sqrt_ab[t].view(-1, 1, 1, 1)
        s = self.sqrt_1m_ab[t].view(-1, 1, 1, 1)
        return s * x_t.float() + a * out.float()

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """The UNet's raw output (eps or v, see ``prediction``)."""
        return self.unet(x_t, t, c)

    # ------------------------------------------------------------------ abduction of u
    @torch.no_grad()
    def abduct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> Abducted:
        """Abduct exogenous noise for factual images.

        Encoder mean gives u for every variable; then, where labels ``y`` (B, K, raw units, NaN =
        missing) are given, z is replaced by the label's prior mean and u is recomputed exactly
        from the mechanisms: u = abduct_noise(z). Variables without labels keep the encoder's
        reading (propagated through the causal layer).
        """
        mean, _ = self.encode(x)
        u_enc, style = self.split_latent(mean)
        z = self.causal.causal_layer(u_enc)
        from_labels = torch.zeros(x.shape[0], self.k, dtype=torch.bool, device=x.device)
        if y is not None:
            present = torch.isfinite(y)
            from_labels = present
            # labelled blocks are their label's prior mean, exactly; unlabelled ones follow
            # their mechanisms from the final parents with the encoder's u
            z = self.causal.complete(u_enc, self.prior_mean(y), present)
        u = self.causal.abduct_noise(z)
        return Abducted(u=u, z=z, style=style, from_labels=from_labels)
