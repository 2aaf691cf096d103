"""The separable / non-separable split of a data set and the curvature in its non-separable part.

Ji & Telgarsky 2019 (COLT, "The implicit bias of gradient descent on
nonseparable data", arXiv 1803.07300, §2): the indices split uniquely into a
separable part I_s and the rest I_c, such that some ū has yᵢ⟨ū, xᵢ⟩ > 0 on
I_s and = 0 on I_c; on S = span{xᵢ : i ∈ I_c} the logistic loss is strongly
convex. GD's projection onto S converges to the unique minimiser there, the
component orthogonal to S grows along the max-margin direction of I_s.

Liu et al. 2023 say large rates end "flatter in the space spanned by
non-separable data"; SPEC §1.1 reads that as the curvature restricted to S.
For a two-layer linear net f(x) = c₂W₂(c₁W₁x) (c_l the layer multipliers,
1/√fan_in under ``ntk``) f is linear in W₁, so the loss's Hessian in W₁ is
exactly its Gauss–Newton term; restricted to the perturbations δW₁ = M Pᵀ whose rows lie in S (P ``(d, k)`` an orthonormal
basis of S):

    max_{‖M‖_F = 1} (1/n) Σᵢ ℓ''(yᵢfᵢ) (c₁c₂ W₂ M Pᵀxᵢ)²
        = c₁²c₂² ‖W₂‖² · λ_max(Pᵀ H_x P),   H_x = (1/n) Σᵢ ℓ''(yᵢfᵢ) xᵢxᵢᵀ,

attained at M = W₂ᵀvᵀ/‖W₂‖ (v the top eigenvector). ℓ''(z) = σ(z)σ(−z) for
the logistic loss. The reading of Liu's sentence as this number is ours
(derived).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linprog


def separable_part(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Mask ``(n,)`` of I_s, the separable part of Ji & Telgarsky 2019's split.

    One LP (HiGHS): maximise Σ tᵢ over u and 0 ≤ t ≤ 1 subject to
    yᵢ⟨u, xᵢ⟩/‖xᵢ‖ ≥ tᵢ. The directions that separate some points weakly and
    the rest strictly form a convex cone closed under addition and scaling, so
    at the optimum t = 1 exactly on I_s and 0 on I_c.

    Args:
        X: ``(n, d)`` inputs.
        y: ``(n,)`` labels ±1.
    """
    X, y = np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n, d = X.shape
    norms = np.linalg.norm(X, axis=1)
    Z = y[:, None] * X / np.where(norms > 0, norms, 1.0)[:, None]
    # −Z u + t ≤ 0; minimise −Σt
    A = np.hstack([-Z, np.eye(n)])
    bounds = [(None, None)] * d + [(0.0, 0.0 if nz == 0 else 1.0) for nz in norms]
    res = linprog(
        np.r_[np.zeros(d), -np.ones(n)], A_ub=A, b_ub=np.zeros(n), bounds=bounds, method="highs"
    )
    if res.status != 0:
        raise RuntimeError(f"separable_part: LP failed ({res.message})")
    return np.asarray(res.x[d:] > 0.5)


def nonseparable_basis(X: np.ndarray, y: np.ndarray, rank_tol: float = 1e-8) -> np.ndarray:
    """Orthonormal basis ``(d, k)`` of S = span{xᵢ : i ∈ I_c} (k = 0 if separable).

    Args:
        X: ``(n, d)`` inputs.
        y: ``(n,)`` labels ±1.
        rank_tol: singular values ≤ rank_tol·σ₁ are dropped.
    """
    X = np.asarray(X, dtype=np.float64)
    Xc = X[~separable_part(X, y)]
    if not len(Xc):
        return np.zeros((X.shape[1], 0))
    _, s, Vt = np.linalg.svd(Xc, full_matrices=False)
    return Vt[s > rank_tol * s[0]].T


def logistic_curvature_matrix(X: np.ndarray, y: np.ndarray, f: np.ndarray) -> np.ndarray:
    """H_x = (1/n) Σᵢ σ(yᵢfᵢ)σ(−yᵢfᵢ) xᵢxᵢᵀ ``(d, d)``: the logistic loss's Hessian in f, pulled back.

    Args:
        X: ``(n, d)`` inputs; y: ``(n,)`` labels; f: ``(n,)`` outputs.
    """
    z = np.asarray(y, dtype=np.float64) * np.asarray(f, dtype=np.float64)
    e = np.exp(-np.abs(z))
    w = e / (1 + e) ** 2  # σ(z)σ(−z), written so that no exponent overflows
    X = np.asarray(X, dtype=np.float64)
    return (X * w[:, None]).T @ X / len(z)


def first_layer_subspace_curvature(
    W1: np.ndarray,
    W2: np.ndarray,
    X: np.ndarray,
    y: np.ndarray,
    basis: np.ndarray,
    c1: float,
    c2: float,
) -> float:
    """Top eigenvalue of the logistic loss's Hessian in W₁, restricted to rows in span(basis).

    For f(x) = c₂W₂(c₁W₁x): c₁²c₂²‖W₂‖²·λ_max(Pᵀ H_x P) (module docstring).

    Args:
        W1: ``(m, d)`` first layer; W2: ``(1, m)`` second layer.
        X: ``(n, d)`` inputs; y: ``(n,)`` labels ±1.
        basis: ``(d, k)`` orthonormal columns P (k = 0 gives 0).
        c1, c2: the layer multipliers.
    """
    if basis.shape[1] == 0:
        return 0.0
    W1, W2 = np.asarray(W1, dtype=np.float64), np.asarray(W2, dtype=np.float64)
    f = c2 * (W2 @ (c1 * (W1 @ np.asarray(X, dtype=np.float64).T))).ravel()
    H = basis.T @ logistic_curvature_matrix(X, y, f) @ basis
    return float(c1**2 * c2**2 * np.sum(W2**2) * np.linalg.eigvalsh(H)[-1])
