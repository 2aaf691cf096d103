"""The activations against their piecewise definitions and autograd (float64)."""

from __future__ import annotations

import pytest
import torch

from implicit_bias.models import ModelSpec, activate, activation_grad, activation_grad2

ACTS = ["linear", "relu", "leaky_relu", "smooth_leaky_relu", "tanh", "elu", "gelu", "softplus"]


def _points(h: float) -> torch.Tensor:
    """Random points plus the kinks ±1/H, 0 and their float64 neighbours."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(500, generator=g, dtype=torch.float64) * 2 / h
    kinks = torch.tensor([-1 / h, 0.0, 1 / h], dtype=torch.float64)
    eps = 1e-12 / h
    return torch.cat([z, kinks, kinks + eps, kinks - eps, torch.tensor([-50.0, 50.0])])


def _piecewise(z: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    """φ written case by case (Frei et al. 2023 eq. 2 for the smoothed one)."""
    g, h = spec.leak, spec.smoothing
    if spec.activation == "linear":
        return z
    if spec.activation == "relu":
        return torch.where(z > 0, z, 0.0)
    if spec.activation == "leaky_relu":
        return torch.where(z > 0, z, g * z)
    if spec.activation == "tanh":
        return (1 - torch.exp(-2 * z)) / (1 + torch.exp(-2 * z))
    if spec.activation == "elu":
        return torch.where(z > 0, z, torch.expm1(z))
    if spec.activation == "gelu":
        return z * 0.5 * torch.erfc(-z / 2**0.5)
    if spec.activation == "softplus":
        return torch.where(z > 0, z + torch.log1p(torch.exp(-z)), torch.log1p(torch.exp(z)))
    out = (1 - g) * h * z * z / 4 + (1 + g) * z / 2
    out = torch.where(z >= 1 / h, z - (1 - g) / (4 * h), out)
    return torch.where(z <= -1 / h, g * z - (1 - g) / (4 * h), out)


@pytest.mark.parametrize("kind", ACTS)
@pytest.mark.parametrize("h", [1.0, 0.5, 4.0])
def test_activation_matches_its_definition(kind, h):
    spec = ModelSpec(d=3, activation=kind, leak=0.1, smoothing=h)
    z = _points(h)
    torch.testing.assert_close(activate(z, spec), _piecewise(z, spec), rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("kind", ACTS)
@pytest.mark.parametrize("h", [1.0, 0.5])
def test_activation_derivatives_match_autograd(kind, h):
    """φ' and φ'' equal autograd's (kinks: relu'(0) = 0, leaky'(0) = γ, φ'' = 0 at ±1/H)."""
    spec = ModelSpec(d=3, activation=kind, leak=0.1, smoothing=h)
    z = _points(h)
    d1 = torch.vmap(torch.func.grad(lambda t: activate(t, spec)))(z)
    d2 = torch.vmap(torch.func.grad(torch.func.grad(lambda t: activate(t, spec))))(z)
    ours1 = activation_grad(z, spec)
    ours1 = torch.ones_like(z) if ours1 is None else ours1
    torch.testing.assert_close(ours1, d1, rtol=1e-13, atol=1e-14)
    ours2 = activation_grad2(z, spec)
    if ours2 is None:  # piecewise linear
        assert (d2 == 0).all()
        return
    # clamp's autograd passes the gradient at the boundary itself; φ'' there is 0 by our
    # (open-interval) convention — a measure-zero set, compared off it
    off = (z.abs() - 1 / h).abs() > 1e-9
    torch.testing.assert_close(ours2[off], d2[off], rtol=1e-13, atol=1e-14)
    if kind == "smooth_leaky_relu":
        assert (ours2[~off & (z.abs() >= 1 / h)] == 0).all()
