"""Generator and discriminator networks (imported lazily: this module imports torch)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

import torch
from torch import nn
from torch.nn import functional as F

from synthehr.tools.engines.dpgan.encoding import TableEncoder


class Generator(nn.Module):
    """z + condition one-hot -> raw output vector (activations applied per block by `activate`)."""

    def __init__(self, noise_dim: int, cond_dim: int, data_dim: int, hidden_dim: int, layers: int = 2):
        super().__init__()
        dims = [noise_dim + cond_dim] + [hidden_dim] * layers
        body: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            body += [nn.Linear(a, b), nn.LayerNorm(b), nn.ReLU()]
        self.body = nn.Sequential(*body)
        # The head also sees the condition directly: feature-label relations are easy to express.
        self.head = nn.Linear(hidden_dim + cond_dim, data_dim)  # data_dim: the encoder's raw_dim
        self.noise_dim = noise_dim

    def forward(self, z: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.body(torch.cat([z, cond], dim=1))
        return self.head(torch.cat([h, cond], dim=1))


class Discriminator(nn.Module):
    """Small MLP critic, no BatchNorm (Opacus per-sample gradients); LeakyReLU."""

    def __init__(self, in_dim: int, hidden_dim: int = 128, layers: int = 2):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * layers
        body: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            body += [nn.Linear(a, b), nn.LeakyReLU(0.2)]
        self.body = nn.Sequential(*body)
        self.out = nn.Linear(hidden_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x)).squeeze(1)


def activate(raw: torch.Tensor, enc: TableEncoder, tau: float = 0.2, hard: bool = True) -> torch.Tensor:
    """Training-time map from the generator's raw output to the encoded data layout.

    Numeric: either tanh of one value, or (numeric_bins > 0) a straight-through Gumbel-softmax
    choice of an equal-width bin plus a sigmoid offset inside it, giving a value in [-1, 1].
    One-hots (categories, missingness): straight-through Gumbel-softmax. A numeric value is
    multiplied by its 'present' indicator, matching how real missing values are encoded (0).
    """
    parts: list[torch.Tensor] = []
    for b in enc.blocks:
        r = raw[:, b.raw_start : b.raw_start + b.raw_width]
        if b.kind == "numeric":
            if b.bins:
                oh = F.gumbel_softmax(r[:, : b.bins], tau=tau, hard=hard)
                idx = oh @ torch.arange(b.bins, dtype=raw.dtype)
                off = torch.sigmoid(r[:, b.bins])
                v = (-1.0 + 2.0 * (idx + off) / b.bins).unsqueeze(1)
                rest = r[:, b.bins + 1 :]
            else:
                v = torch.tanh(r[:, :1])
                rest = r[:, 1:]
            if b.has_missing:
                ind = F.gumbel_softmax(rest[:, :2], tau=tau, hard=hard)
                parts += [v * ind[:, :1], ind]
            else:
                parts.append(v)
        else:
            parts.append(F.gumbel_softmax(r, tau=tau, hard=hard))
    return torch.cat(parts, dim=1) if parts else raw[:, :0]


def cell_probs(raw: torch.Tensor, enc: TableEncoder) -> list[torch.Tensor]:
    """Per record and block, the generator's probabilities over the block's marginal cells (differentiable)."""
    out = []
    for b in enc.blocks:
        r = raw[:, b.raw_start : b.raw_start + b.raw_width]
        if b.kind == "numeric":
            k = b.bins or 1
            p = torch.softmax(r[:, : b.bins], dim=1) if b.bins else torch.ones(r.shape[0], 1, dtype=raw.dtype)
            if b.has_missing:
                pm = torch.softmax(r[:, k + 1 if b.bins else 1 :][:, :2], dim=1)
                p = torch.cat([p * pm[:, :1], pm[:, 1:2]], dim=1)
            out.append(p)
        else:
            out.append(torch.softmax(r, dim=1))
    return out


def numeric_value(raw: torch.Tensor, b: Any) -> torch.Tensor:
    """Expected scaled value in [-1, 1] of a numeric block (differentiable; bins: softmax-weighted)."""
    r = raw[:, b.raw_start : b.raw_start + b.raw_width]
    if b.bins:
        p = torch.softmax(r[:, : b.bins], dim=1)
        idx = p @ torch.arange(b.bins, dtype=raw.dtype)
        return -1.0 + 2.0 * (idx + torch.sigmoid(r[:, b.bins])) / b.bins
    return torch.tanh(r[:, 0])


def sample_parts(raw: torch.Tensor, enc: TableEncoder, gen: torch.Generator,
                 coupled: dict[str, torch.Tensor] | None = None) -> tuple[dict, dict, dict]:
    """Sampling-time decoding of raw generator output: (numeric values in [-1, 1], missing masks, discrete codes).

    coupled: column -> the uniforms of its bin draw (`coupling.uniforms`); the position inside the chosen
    bin is then where the uniform falls in the bin's CDF interval. Other columns draw independently."""
    numeric, missing, discrete = {}, {}, {}
    coupled = coupled or {}
    for b in enc.blocks:
        r = raw[:, b.raw_start : b.raw_start + b.raw_width]
        if b.kind == "numeric":
            if b.bins and b.name in coupled:
                idx, inside = bin_indices(raw, b, coupled[b.name], with_position=True)
                numeric[b.name] = _within_bin(idx.to(torch.float64), b, inside)
                rest = r[:, b.bins + 1 :]
            elif b.bins:
                idx = _categorical(r[:, : b.bins], gen).to(torch.float64)
                numeric[b.name] = _within_bin(idx, b, torch.rand(idx.shape, generator=gen, dtype=torch.float64))
                rest = r[:, b.bins + 1 :]
            else:
                numeric[b.name] = torch.tanh(r[:, 0]).numpy()
                rest = r[:, 1:]
            if b.has_missing:
                missing[b.name] = (_categorical(rest[:, :2], gen) == 1).numpy()
        else:
            discrete[b.name] = _categorical(r, gen).numpy()
    return numeric, missing, discrete


def _within_bin(idx: torch.Tensor, b: Any, u: torch.Tensor) -> np.ndarray:
    """A value inside each chosen bin, uniform there (scaled to [-1, 1]).

    The generator's learnt offset inside a bin collapsed to one point per bin (a cohort of 5,000 had 57
    distinct BMI values and 28 % of its systolic pressures at 123 mmHg), so sampling draws the position
    in the bin uniformly from the user's seeded stream. Integer columns draw among the integers that lie
    in the bin, so rounding never moves a value into the next bin (the top bin of age, 78-80 with the
    top-coded 80s, used to round down to 78)."""
    lo, hi, k = float(b.lower), float(b.upper), int(b.bins)
    width = (hi - lo) / k
    if b.integer:
        left = lo + idx * width
        first = torch.ceil(left - 1e-9)
        last = torch.where(idx >= k - 1, torch.full_like(idx, math.floor(hi)), torch.ceil(left + width - 1e-9) - 1)
        count = last - first + 1
        v = torch.where(count >= 1, first + torch.floor(u * count.clamp(min=1)), torch.round(left + u * width))
        v = v.clamp(math.ceil(lo), math.floor(hi))
        return ((v - lo) / (hi - lo) * 2.0 - 1.0).numpy()
    return (-1.0 + 2.0 * (idx + u) / k).numpy()


def bin_indices(raw: torch.Tensor, b: Any, u: torch.Tensor, with_position: bool = False) -> Any:
    """A numeric block's bin per row by inverse CDF of its softmax at the given uniforms u (float64);
    with_position: also where u lies inside the chosen bin's CDF interval, in [0, 1)."""
    p = torch.softmax(raw[:, b.raw_start : b.raw_start + b.bins].to(torch.float64), dim=1)
    idx, cdf, uu = _inverse_cdf(p, u.to(torch.float64).unsqueeze(1))
    if not with_position:
        return idx
    hi = cdf.gather(1, idx.unsqueeze(1)).squeeze(1)
    width = p.gather(1, idx.unsqueeze(1)).squeeze(1)
    inside = ((uu.squeeze(1) - (hi - width)) / width.clamp(min=1e-300)).clamp(0.0, 1.0 - 1e-12)
    return idx, inside


def _inverse_cdf(p: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Index per row of the cell whose CDF interval holds u (rows x 1, in [0, 1)) scaled to the row's
    total; returns (index, cdf, scaled u)."""
    cdf = torch.cumsum(p, dim=1)
    uu = u * cdf[:, -1:]
    return (cdf < uu).sum(dim=1).clamp_(max=p.shape[1] - 1), cdf, uu


def _categorical(logits: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One index per row drawn from softmax(logits): inverse-CDF with one uniform per row (seeded generator)."""
    p = torch.softmax(logits, dim=1)
    return _inverse_cdf(p, torch.rand((logits.shape[0], 1), generator=gen, dtype=p.dtype))[0]
