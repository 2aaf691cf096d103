"""Losses, averaged over the batch, computed stably.

Binary data: one output f per sample, labels y ∈ {−1, +1} (logistic,
exponential, mse). Multiclass data (``outputs`` K ≥ 2): K outputs f_k per
sample, labels y ∈ {0, …, K−1} (held as floats like the binary ones):
``cross_entropy`` −log softmax(f)_y and ``mse`` on one-hot targets with Cohen
et al.'s normalisation ½ Σ_k (f_k − 1[k = y])² (2021, arXiv 2103.00065; the
sharpness threshold 2/η depends on it).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

LossName = Literal["logistic", "exponential", "mse", "cross_entropy"]
#: losses defined on K ≥ 2 outputs
MULTICLASS_LOSSES = ("cross_entropy", "mse")


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


def one_hot(y: Tensor, K: int, dtype: torch.dtype) -> Tensor:
    """``(…, n, K)`` one-hot rows of labels ``(…, n)`` in 0…K−1 (a comparison, so
    it batches under ``vmap``)."""
    return (y.unsqueeze(-1) == torch.arange(K, device=y.device, dtype=y.dtype)).to(dtype)


def per_sample_multiclass(f: Tensor, y: Tensor, kind: LossName) -> Tensor:
    """ℓ(f, y) per sample for K outputs ``f (…, n, K)`` and labels ``y (…, n)``:
    ``cross_entropy`` logsumexp(f) − f_y, ``mse`` ½ Σ_k (f_k − 1[k = y])²."""
    target = one_hot(y, f.shape[-1], f.dtype)
    if kind == "cross_entropy":
        return torch.logsumexp(f, dim=-1) - (f * target).sum(-1)
    if kind == "mse":
        return 0.5 * (f - target).square().sum(-1)
    raise ValueError(f"loss {kind} is not defined for K outputs")


def mean_loss(f: Tensor, y: Tensor, kind: LossName, outputs: int = 1) -> Tensor:
    """Mean over samples of :func:`per_sample` (one output) or of
    :func:`per_sample_multiclass` (``outputs`` K ≥ 2, f ``(…, n, K)``)."""
    if outputs > 1:
        return per_sample_multiclass(f, y, kind).mean(-1)
    return per_sample(f, y, kind).mean(-1)


def accuracy(f: Tensor, y: Tensor, outputs: int = 1) -> Tensor:
    """Fraction of samples classified right.

    One output: sign f = y; f = 0 is a tie and counts as half right (SPEC §3: a
    sparse ReLU net with f ≡ 0 on some points is at chance there, not below it).
    K outputs: argmax_k f_k = y.
    """
    if outputs > 1:
        return (f.argmax(-1).to(y.dtype) == y).to(f.dtype).mean(-1)
    yf = f * y
    return ((yf > 0).to(f.dtype) + 0.5 * (yf == 0).to(f.dtype)).mean(-1)


def multiclass_margins(f: Tensor, y: Tensor) -> Tensor:
    """f_y − max_{j≠y} f_j per sample, ``(…, n)`` from f ``(…, n, K)``."""
    target = one_hot(y, f.shape[-1], f.dtype)
    f_y = (f * target).sum(-1)
    others = torch.where(target > 0, torch.finfo(f.dtype).min, f)
    return f_y - others.amax(-1)
