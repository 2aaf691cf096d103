"""Ji & Telgarsky's separable / non-separable split and the curvature restricted to it."""

from __future__ import annotations

import numpy as np
import torch

from implicit_bias.nonseparable import (
    first_layer_subspace_curvature,
    nonseparable_basis,
    separable_part,
)


def _mixed(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Coordinate 0 separable (sign = label), coordinate 1 degenerate non-separable (±e₂)."""
    sep = np.zeros((4, 3))
    sep[:, 0] = [1.0, 2.0, -1.5, -0.5]
    sep[:, 2] = rng.standard_normal(4) * 0.1  # a third direction, also in the separable part
    ysep = np.sign(sep[:, 0])
    non = np.zeros((4, 3))
    non[:, 1] = [1.0, -2.0, 0.5, -1.0]
    ynon = np.array([1.0, 1.0, -1.0, -1.0])  # both labels on both sides: not separable
    return np.vstack([sep, non]), np.r_[ysep, ynon]


def test_split_finds_the_separable_part():
    X, y = _mixed(np.random.default_rng(0))
    assert separable_part(X, y).tolist() == [True] * 4 + [False] * 4
    P = nonseparable_basis(X, y)
    assert P.shape == (3, 1) and abs(abs(P[1, 0]) - 1) < 1e-12
    # separable data: no non-separable subspace; degenerate noisy data: all of it
    assert separable_part(X[:4], y[:4]).all() and nonseparable_basis(X[:4], y[:4]).shape == (3, 0)
    assert not separable_part(X[4:], y[4:]).any()


def test_restricted_curvature_matches_the_dense_hessian():
    """The closed form against the float64 Hessian of the loss in W₁ (autograd), projected."""
    rng = np.random.default_rng(1)
    X, y = _mixed(rng)
    m, d = 5, X.shape[1]
    W1, W2 = rng.standard_normal((m, d)), rng.standard_normal((1, m))
    c1, c2 = 1 / np.sqrt(d), 1 / np.sqrt(m)
    Xt, yt, W2t = torch.tensor(X), torch.tensor(y), torch.tensor(W2)

    def loss(w1: torch.Tensor) -> torch.Tensor:
        f = c2 * (W2t @ (c1 * (w1.reshape(m, d) @ Xt.T))).ravel()
        return torch.nn.functional.softplus(-yt * f).mean()

    H = torch.autograd.functional.hessian(loss, torch.tensor(W1).ravel()).numpy()
    for P in (nonseparable_basis(X, y), np.eye(d), np.linalg.qr(rng.standard_normal((d, 2)))[0]):
        # the perturbations δW₁ = M Pᵀ: vec(e_a p_kᵀ) for every row a and basis column k
        Q = np.stack(
            [np.outer(np.eye(m)[a], P[:, k]).ravel() for a in range(m) for k in range(P.shape[1])],
            1,
        )
        dense = np.linalg.eigvalsh(Q.T @ H @ Q)[-1]
        closed = first_layer_subspace_curvature(W1, W2, X, y, P, c1, c2)
        assert abs(closed - dense) <= 1e-12 * max(1.0, abs(dense)), (closed, dense)
    assert first_layer_subspace_curvature(W1, W2, X, y, np.zeros((d, 0)), c1, c2) == 0.0
