"""Losses on labels y ∈ {−1, +1}, averaged over the batch, computed stably."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

LossName = Literal["logistic", "exponential", "mse"]


def per_sample(f: Tensor, y: Tensor, kind: LossName) -> Tensor:
    """ℓ(f, y) per sample: logistic log(1+e^{−yf}) (as softplus), exponential
    e^{−yf}, mse ½(f−y)²."""
    if kind == "logistic":
        return F.softplus(-y * f)
    if kind == "exponential":
        return torch.exp(-y * f)
    if kind == "mse":
        return 0.5 * (f - y) ** 2
    raise ValueError(f"unknown loss {kind}")


def loss_grad(f: Tensor, y: Tensor, kind: LossName) -> Tensor:
    """∂ℓ/∂f per sample: −y·σ(−yf), −y·e^{−yf}, f − y."""
    if kind == "logistic":
        return -y * torch.sigmoid(-y * f)
    if kind == "exponential":
        return -y * torch.exp(-y * f)
    if kind == "mse":
        return f - y
    raise ValueError(f"unknown loss {kind}")


def loss_hess(f: Tensor, y: Tensor, kind: LossName) -> Tensor:
    """∂²ℓ/∂f² per sample (y² = 1): σ(yf)σ(−yf), e^{−yf}, 1."""
    if kind == "logistic":
        return torch.sigmoid(y * f) * torch.sigmoid(-y * f)
    if kind == "exponential":
        return torch.exp(-y * f)
    if kind == "mse":
        return torch.ones_like(f)
    raise ValueError(f"unknown loss {kind}")


def mean_loss(f: Tensor, y: Tensor, kind: LossName) -> Tensor:
    """Mean of :func:`per_sample` over the last dimension."""
    return per_sample(f, y, kind).mean(-1)


def accuracy(f: Tensor, y: Tensor) -> Tensor:
    """Fraction of samples with sign f = y; f = 0 is a tie and counts as half right
    (SPEC §3: a sparse ReLU net with f ≡ 0 on some points is at chance there, not
    below it)."""
    yf = f * y
    return ((yf > 0).to(f.dtype) + 0.5 * (yf == 0).to(f.dtype)).mean(-1)
