"""The denoising UNet eps_theta(x_t, t, c) and the image encoder q(u | x).

UNet layout (improved-diffusion style, resolution-agnostic):

* input 3x3 conv to ``base_channels``;
* per level ``l`` with multiplier ``m_l`` (``channel_mult``): ``num_res_blocks`` residual blocks to
  ``m_l * base_channels`` channels (each optionally followed by self-attention), then, except at the
  last level, a stride-2 3x3 conv (28 -> 14 -> 7; odd sizes round up: 7 -> 4);
* middle: residual block, self-attention (only if ``attention_resolutions`` is non-empty),
  residual block;
* up path mirroring the down path with ``num_res_blocks + 1`` blocks per level, each taking the
  concatenation with one skip activation; levels are joined by nearest-neighbour upsampling to the
  next skip's exact spatial size followed by a 3x3 conv (so odd sizes need no special case);
* output GroupNorm, SiLU and a zero-initialised 3x3 conv back to ``in_channels``.

Conditioning (DiffAE-style AdaGN) in every residual block::

    h = GroupNorm(h) * (1 + scale_t) + shift_t      # (scale_t, shift_t) = Linear(emb_t)
    h = h * (1 + scale_c) + shift_c                 # (scale_c, shift_c) = Linear(cond)

emb_t is the time MLP's output (sinusoid -> Linear -> SiLU -> Linear), projected as it is: the
condition and the timestep meet only in the product above. Adding an MLP of the condition to
emb_t and projecting SiLU(emb_t), as class-conditional ADM does, measured no better
(docs/results.md, the condition in the time embedding).

The two per-channel affine maps are folded into one (B, C) scale and shift before touching the
feature map, so the cost is a single fused multiply-add. The norm before AdaGN has no affine
parameters of its own (the time projection's bias already provides them). The cond projection keeps
PyTorch's default (non-zero) initialisation so cond influences the output as soon as the
zero-initialised convs move; the last conv of each residual block, each attention output projection
and the output conv start at zero, so the whole UNet outputs exactly zero at initialisation.

``attention_resolutions`` lists DOWNSAMPLING FACTORS, not pixel sizes (the model does not know the
image size): 1 is the input resolution, 2 half of it, 4 a quarter, ... For 28x28 inputs with
``channel_mult=(1, 2, 2)``, ``(2, 4)`` puts attention at 14x14 and 7x7.

``channels_last``: call ``model.to(memory_format=torch.channels_last)`` (and convert inputs) to run
in NHWC; every op used here supports it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

TIME_EMBED_MULT = 4
"""Width of the time-embedding MLP as a multiple of ``base_channels``."""
MAX_PERIOD = 10000.0
"""Longest period of the sinusoidal timestep embedding."""
ENCODER_MAX_MULT = 4
"""Encoder channels double per stride-2 conv up to this multiple of ``base_channels``."""


def _zero_(module: nn.Module) -> nn.Module:
    """Set every parameter of ``module`` to zero in place; returns it."""
    for param in module.parameters():
        nn.init.zeros_(param)
    return module


class SinusoidalTimestepEmbedding(nn.Module):
    """t (B,) long -> [cos(t * f_k), sin(t * f_k)] (B, dim), f_k = MAX_PERIOD^(-k / (dim/2))."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"timestep embedding dim must be even, got {dim}")
        half = dim // 2
        freqs = torch.exp(-math.log(MAX_PERIOD) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: Tensor) -> Tensor:
        args = t.to(self.freqs.dtype)[:, None] * self.freqs[None, :]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class ResBlock(nn.Module):
    """Residual block with AdaGN time and cond modulation.

    forward(x (B, in_ch, H, W), emb (B, emb_dim), cond (B, cond_dim)) -> (B, out_ch, H, W).
    """

    def __init__(
        self, in_channels: int, out_channels: int, emb_dim: int, cond_dim: int, dropout: float,
        num_groups: int,
    ) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.norm_in = nn.GroupNorm(num_groups, in_channels)
        self.conv_in = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_proj = nn.Linear(emb_dim, 2 * out_channels)
        self.cond_proj = nn.Linear(cond_dim, 2 * out_channels)
        self.norm_out = nn.GroupNorm(num_groups, out_channels, affine=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv_out = _zero_(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = (
            nn.Identity() if in_channels == out_channels
            else nn.Conv2d(in_channels, out_channels, 1)
        )

    def forward(self, x: Tensor, emb: Tensor, cond: Tensor) -> Tensor:
        h = self.conv_in(F.silu(self.norm_in(x)))
        scale_t, shift_t = self.time_proj(emb).chunk(2, dim=1)
        scale_c, shift_c = self.cond_proj(cond).chunk(2, dim=1)
        # (h * (1 + s_t) + b_t) * (1 + s_c) + b_c  ==  h * scale + shift, folded on (B, C) first.
        gain_c = 1.0 + scale_c
        scale = ((1.0 + scale_t) * gain_c)[:, :, None, None]
        shift = (shift_t * gain_c + shift_c)[:, :, None, None]
        h = torch.addcmul(shift, self.norm_out(h), scale)
        h = self.conv_out(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over spatial positions with a zero-initialised output projection.

    forward(x (B, C, H, W)) -> (B, C, H, W).
    """

    def __init__(self, channels: int, num_heads: int, num_groups: int) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"{channels} channels do not split into {num_heads} heads")
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(num_groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = _zero_(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        batch, channels, height, width = x.shape
        qkv = self.qkv(self.norm(x)).reshape(batch, 3, self.num_heads, channels // self.num_heads,
                                             height * width)
        q, k, v = (qkv[:, i].transpose(-1, -2) for i in range(3))  # (B, heads, HW, head_dim)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(-1, -2).reshape(batch, channels, height, width)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Stride-2 3x3 conv: (B, C, H, W) -> (B, C, ceil(H/2), ceil(W/2))."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour resize to ``size`` then a 3x3 conv: (B, C, h, w) -> (B, C, *size)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor, size: Sequence[int]) -> Tensor:
        return self.conv(F.interpolate(x, size=tuple(size), mode="nearest"))


class _Level(nn.Module):
    """Residual block with optional attention: forward(x, emb, cond) -> (B, out_ch, H, W)."""

    def __init__(self, res: ResBlock, attn: AttentionBlock | None) -> None:
        super().__init__()
        self.res = res
        self.attn = attn

    def forward(self, x: Tensor, emb: Tensor, cond: Tensor) -> Tensor:
        h = self.res(x, emb, cond)
        return h if self.attn is None else self.attn(h)


class UNet(nn.Module):
    """Epsilon-predicting UNet conditioned on timestep and a cond vector (see module docstring).

    forward(x (B, C, H, W) in [-1, 1], t (B,) long, cond (B, cond_dim) float) -> eps (B, C, H, W).
    Any H, W >= 1 works (e.g. 28, 32, 64, 96); down-sampling rounds odd sizes up.
    """

    def __init__(
        self,
        in_channels: int = 1,
        base_channels: int = 32,
        channel_mult: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 1,
        cond_dim: int = 48,
        attention_resolutions: Sequence[int] = (),
        dropout: float = 0.0,
        num_groups: int = 8,
        attention_heads: int = 4,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.cond_dim = cond_dim
        attention_at = set(attention_resolutions)
        emb_dim = TIME_EMBED_MULT * base_channels

        self.time_embed = nn.Sequential(
            SinusoidalTimestepEmbedding(base_channels),
            nn.Linear(base_channels, emb_dim),
            nn.SiLU(),
            nn.Linear(emb_dim, emb_dim),
        )

        def level(in_ch: int, out_ch: int, ds: int) -> _Level:
            attn = (AttentionBlock(out_ch, attention_heads, num_groups)
                    if ds in attention_at else None)
            return _Level(ResBlock(in_ch, out_ch, emb_dim, cond_dim, dropout, num_groups), attn)

        self.input_conv = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        skip_channels = [base_channels]
        ch, ds = base_channels, 1
        self.down_blocks = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        for index, mult in enumerate(channel_mult):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(level(ch, mult * base_channels, ds))
                ch = mult * base_channels
                skip_channels.append(ch)
            self.down_blocks.append(blocks)
            if index < len(channel_mult) - 1:
                self.downsamples.append(Downsample(ch))
                skip_channels.append(ch)
                ds *= 2

        self.middle_in = ResBlock(ch, ch, emb_dim, cond_dim, dropout, num_groups)
        self.middle_attn = (AttentionBlock(ch, attention_heads, num_groups)
                            if attention_at else None)
        self.middle_out = ResBlock(ch, ch, emb_dim, cond_dim, dropout, num_groups)

        self.up_blocks = nn.ModuleList()
        self.upsamples = nn.ModuleList()
        for index, mult in reversed(list(enumerate(channel_mult))):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                blocks.append(level(ch + skip_channels.pop(), mult * base_channels, ds))
                ch = mult * base_channels
            self.up_blocks.append(blocks)
            if index > 0:
                self.upsamples.append(Upsample(ch))
                ds //= 2

        self.out_norm = nn.GroupNorm(num_groups, ch)
        self.out_conv = _zero_(nn.Conv2d(ch, in_channels, 3, padding=1))

    def forward(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        emb = self.time_embed(t)
        cond = cond.to(emb.dtype)
        h = self.input_conv(x)
        skips = [h]
        for index, blocks in enumerate(self.down_blocks):
            for block in blocks:
                h = block(h, emb, cond)
                skips.append(h)
            if index < len(self.downsamples):
                h = self.downsamples[index](h)
                skips.append(h)

        h = self.middle_in(h, emb, cond)
        if self.middle_attn is not None:
            h = self.middle_attn(h)
        h = self.middle_out(h, emb, cond)

        for index, blocks in enumerate(self.up_blocks):
            for block in blocks:
                h = block(torch.cat([h, skips.pop()], dim=1), emb, cond)
            if index < len(self.upsamples):
                h = self.upsamples[index](h, skips[-1].shape[-2:])
        return self.out_conv(F.silu(self.out_norm(h)))


class Encoder(nn.Module):
    """Resolution-agnostic conv encoder: x (B, C, H, W) -> (B, out_dim).

    3x3 stem conv to ``base_channels`` with GroupNorm + SiLU, then ``num_down`` stride-2 3x3 convs
    (channels double each time, capped at ``ENCODER_MAX_MULT * base_channels``) each followed by
    GroupNorm + SiLU, global average pooling and a Linear layer. The caller splits the output, e.g.
    into mean and log-variance halves.
    """

    def __init__(
        self, in_channels: int = 1, base_channels: int = 32, num_down: int = 3,
        out_dim: int = 48 * 2, num_groups: int = 8,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, base_channels, 3, padding=1),
            nn.GroupNorm(num_groups, base_channels),
            nn.SiLU(),
        ]
        ch = base_channels
        for index in range(num_down):
            out_ch = base_channels * min(2 ** (index + 1), ENCODER_MAX_MULT)
            layers += [
                nn.Conv2d(ch, out_ch, 3, stride=2, padding=1),
                nn.GroupNorm(num_groups, out_ch),
                nn.SiLU(),
            ]
            ch = out_ch
        layers.append(nn.AdaptiveAvgPool2d(1))
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(ch, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).flatten(1))
