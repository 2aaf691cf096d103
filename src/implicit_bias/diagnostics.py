"""Implicit-bias measurements of SPEC §3, batched over runs (Hessian/NTK: ``curvature``).

Conventions. ``params`` is a tuple of trained weight tensors, each ``(R, out, in)``
(the layers of :attr:`models.ModelSpec.trained_shapes`, run dimension first);
``a`` is the fixed last layer ``(1, width)`` of a ``fixed_sign`` net or ``None``.
Data ``X`` is shared ``(n, d)`` or per run ``(R, n, d)``; labels ``y`` ∈ {−1, +1}
are ``(n,)`` or ``(R, n)``. ``x_in_dim`` follows ``torch.func.vmap``: ``None``
for shared data, ``0`` per run; the default ``"auto"`` reads it from ``X.ndim``.

Batched quantities are computed with tensor ops / ``vmap``; the only loops over
runs or data sets wrap scipy solvers (NNLS), which have no batched form.

The hard-margin SVM through the origin (our nets have no bias) is solved
exactly as a least-distance program by the Lawson–Hanson NNLS algorithm
(Lawson & Hanson 1974, *Solving Least Squares Problems*, ch. 23), which also
decides separability; see :func:`svm_direction`.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import numpy as np
import torch
from scipy.optimize import linprog, nnls
from torch import Tensor
from torch.func import jacrev, vmap

from . import _linalg, models
from .models import ModelSpec

XDim = int | None | Literal["auto"]


def _x_dim(X: Tensor, x_in_dim: XDim) -> int | None:
    if x_in_dim == "auto":
        return None if X.ndim == 2 else 0
    return x_in_dim


def _outputs(params, X: Tensor, spec: ModelSpec, a: Tensor | None, x_in_dim: XDim) -> Tensor:
    """f(x_i) for every run, ``(R, n)``."""

    def f(p, x):
        return models.forward(p, x, spec, a)

    return vmap(f, in_dims=(0, _x_dim(X, x_in_dim)))(params, X)


def _flat(params) -> Tensor:
    """All trained parameters of each run as one vector θ, ``(R, P)``."""
    return torch.cat([p.reshape(p.shape[0], -1) for p in params], dim=1)


def _inner(v: Tensor, X: Tensor) -> Tensor:
    """⟨v_r, x_i⟩ for v ``(R, d)`` and X ``(n, d)`` or ``(R, n, d)`` → ``(R, n)``."""
    return v @ X.T if X.ndim == 2 else torch.einsum("rd,rnd->rn", v, X)


# ---------------------------------------------------------------- weight spectra
def singular_values(W: Tensor) -> Tensor:
    """Singular values of each run's matrix, descending.

    Args:
        W: ``(R, out, in)``.

    Returns:
        ``(R, min(out, in))``.
    """
    return _linalg.svdvals(W, "singular values linalg.svdvals")[0]


def stable_rank(W: Tensor) -> Tensor:
    """Stable rank ‖W‖_F² / ‖W‖₂² = Σσ_k² / σ_1² per run (as in Frei et al. 2023).

    Args:
        W: ``(R, out, in)``.

    Returns:
        ``(R,)``, in [1, min(out, in)]; NaN for a zero matrix.
    """
    s2 = _gram_eigenvalues(W)
    return (s2.sum(-1) / s2[..., 0]).to(W.dtype)


def _gram_eigenvalues(W: Tensor) -> Tensor:
    """σ_k² of W, descending, from the eigenvalues of the smaller Gram matrix in
    float64 — much faster than an SVD of a wide W (d = 4000 in Frei et al.);
    accurate to ≈ eps·σ_1², i.e. σ_k down to ≈ 1e-8·σ_1."""
    W = W.double()
    G = W @ W.mT if W.shape[-2] <= W.shape[-1] else W.mT @ W
    return _linalg.eigvalsh(G, "weight Gram linalg.eigvalsh")[0].flip(-1).clamp_min(0)


def numerical_rank(W: Tensor, tol: float | None = None) -> Tensor:
    """Number of singular values above ``tol`` · σ_max per run.

    Args:
        W: ``(R, out, in)``.
        tol: relative tolerance; ``None`` uses max(out, in)·eps(dtype) as
            ``torch.linalg.matrix_rank`` does.

    Returns:
        ``(R,)`` int64.
    """
    if tol is None:
        tol = max(W.shape[-2:]) * torch.finfo(W.dtype).eps
    if tol >= 1e-6:  # the Gram route resolves σ down to ≈ 1e-8 σ_1
        s = _gram_eigenvalues(W).sqrt()
    else:
        s = _linalg.svdvals(W, "numerical rank linalg.svdvals")[0]
    return (s > tol * s[..., :1]).sum(-1)


# ---------------------------------------------------------------- margins
def margins(
    params, X: Tensor, y: Tensor, spec: ModelSpec, a: Tensor | None = None, x_in_dim: XDim = "auto"
) -> dict[str, Tensor]:
    """Output margin and normalized margin (Lyu & Li 2020, arXiv 1906.05890).

    margin = min_i y_i f(x_i; θ);  normalized_margin = margin / ‖θ‖^L, with ‖θ‖
    the Euclidean norm of all trained parameters and L = ``spec.homogeneity``
    (so it is scale-invariant for L-homogeneous nets).

    Returns:
        ``{"margin": (R,), "normalized_margin": (R,)}``.
    """
    m = (y * _outputs(params, X, spec, a, x_in_dim)).min(-1).values
    norm = _flat(params).norm(dim=1)
    return {"margin": m, "normalized_margin": m / norm**spec.homogeneity}


def linear_predictor_batched(params, spec: ModelSpec, a: Tensor | None = None) -> Tensor | None:
    """End-to-end linear predictor v of each run, ``(R, d)``, or ``None``.

    ``vmap`` of :func:`models.linear_predictor`: v = c_L W_L ⋯ c_1 W_1 for deep
    linear nets (f(x) = ⟨v, x⟩), v = W₁ᵀa for fixed-sign two-layer nets (Frei et
    al. 2023, Thm 3.1: sign f(x) = sign⟨v, x⟩ at the KKT point).
    """
    first = tuple(p[0] for p in params)
    if models.linear_predictor(first, spec, a) is None:  # decided by the spec alone
        return None
    return vmap(lambda p: models.linear_predictor(p, spec, a))(params)


def geometric_margin(v: Tensor, X: Tensor, y: Tensor) -> Tensor:
    """Geometric margin min_i y_i⟨v, x_i⟩ / ‖v‖ of linear predictors.

    Args:
        v: ``(R, d)``.
        X: ``(n, d)`` or ``(R, n, d)``.
        y: ``(n,)`` or ``(R, n)``.

    Returns:
        ``(R,)``; NaN where v = 0.
    """
    norm = v.norm(dim=-1)
    m = (y * _inner(v, X)).min(-1).values / norm
    return torch.where(norm > 0, m, torch.nan)


# ---------------------------------------------------------------- hard-margin SVM
class SVMResult(NamedTuple):
    """Hard-margin SVM through the origin of one data set.

    Attributes:
        separable: whether some w has y_i⟨w, x_i⟩ > 0 for all i.
        w: unit max-margin direction ``(d,)``; NaN if not separable.
        margin: its geometric margin max_{‖w‖=1} min_i y_i⟨w, x_i⟩; NaN if not separable.
    """

    separable: bool
    w: np.ndarray
    margin: float


def _as_np(A) -> np.ndarray:
    if isinstance(A, Tensor):
        A = A.detach().cpu().numpy()
    return np.asarray(A, dtype=np.float64)


def _eps(dtype) -> float:
    """Machine epsilon of a torch or numpy float dtype (float64's for anything else)."""
    try:
        return float(
            torch.finfo(dtype).eps if isinstance(dtype, torch.dtype) else np.finfo(dtype).eps
        )
    except (TypeError, ValueError):  # integer dtypes
        return float(np.finfo(np.float64).eps)


def _gram_root(K: Tensor) -> Tensor:
    """W with W Wᵀ = K for symmetric PSD K ``(..., m, m)`` (eigh; negative round-off clipped).

    The rows of W are coordinates of the vectors whose Gram matrix K is, in an
    orthonormal basis of their span: least-squares problems that only involve
    their inner products shrink from the ambient dimension to m. Built from a
    matrix product and an m × m eigh, which is several times faster than a
    Householder QR of the tall matrix on CPU.
    """
    s, V, _ = _linalg.eigh(K, "KKT Gram linalg.eigh")  # NaN for a matrix it fails on
    return V * s.clamp_min(0).sqrt().unsqueeze(-2)


def _reduce_rows(Z: np.ndarray) -> np.ndarray:
    """Z_r ``(n, min(n, d))`` with Z_r Z_rᵀ = Z Zᵀ.

    The LP and the SVM dual only see Z through Z Zᵀ (the optimal w lies in the
    row space), so for d > n they shrink from d to n unknowns (Frei-type data
    has d ≫ n).
    """
    n, d = Z.shape
    if d <= n:
        return Z
    Zt = torch.from_numpy(Z)
    return _gram_root(Zt @ Zt.T).numpy()


def svm_direction(X, y, sep_tol: float = 1e-10) -> SVMResult:
    """Hard-margin SVM without bias: min ½‖w‖² s.t. y_i⟨w, x_i⟩ ≥ 1.

    Method (exact, finite): with z_i = y_i x_i this is the least-distance
    program min ‖w‖ s.t. Z w ≥ 1, solved through Lawson & Hanson (1974, ch. 23,
    Alg. LDP): NNLS  min_{u ≥ 0} ‖E u − e‖ with E = [Zᵀ; 1ᵀ] ((d+1) × n) and
    e = (0, …, 0, 1). The residual r = E u − e is zero iff the constraints are
    infeasible, i.e. the data is not separable through the origin; otherwise
    w = −Zᵀu / r_{d+1} is the SVM solution and u its dual variables, up to
    scale (this *is* the n-dimensional dual QP min ½αᵀZZᵀα − 1ᵀα, α ≥ 0).
    NNLS is scipy's Lawson–Hanson active-set solver. The objective only
    involves Z Zᵀ, so for d > n Zᵀ is replaced by an n × n root of the Gram
    matrix (:func:`_reduce_rows`); Z is scaled to max‖z_i‖ = 1 for
    conditioning. Separability is decided by the returned w itself — a
    certificate: the data is separable iff min_i ⟨w, z_i⟩ > sep_tol · max‖z_i‖
    (for non-separable data *every* w has min_i ⟨w, z_i⟩ ≤ 0). The LP of
    :func:`separable_lp` gives the same answer away from the boundary but is
    10–100× slower and reports numerical trouble near it. n = 1000, d = 4000
    takes about a second.

    Args:
        X: ``(n, d)`` array or tensor.
        y: ``(n,)`` labels in {−1, +1}.
        sep_tol: relative margin below which data counts as not separable.

    Returns:
        :class:`SVMResult` with unit w and margin = min_i y_i⟨w, x_i⟩.
    """
    X, y = _as_np(X), _as_np(y)
    n, d = X.shape
    Z = y[:, None] * X
    scale = np.linalg.norm(Z, axis=1).max(initial=0.0)
    nan = SVMResult(False, np.full(d, np.nan), float("nan"))
    if not scale > 0:
        return nan
    Zs = Z / scale
    E = np.vstack([_reduce_rows(Zs).T, np.ones((1, n))])
    e = np.zeros(E.shape[0])
    e[-1] = 1.0
    u, _ = nnls(E, e, maxiter=50 * max(n, 10))
    slack = u.sum() - 1.0  # last entry of the residual E u − e
    w = Zs.T @ u  # = −slack · w_svm: zero when the residual is (numerically) zero
    norm = np.linalg.norm(w)
    if not (slack < 0 and norm > 0):  # residual 0: infeasible, not separable
        return nan
    w /= norm
    margin = float((Z @ w).min())
    if not margin > sep_tol * scale:
        return nan
    return SVMResult(True, w, margin)


def separable_lp(X, y) -> bool:
    """Linear separability through the origin by LP feasibility (HiGHS).

    Finds w with y_i⟨w, x_i⟩/‖x_i‖ ≥ 1 (rows normalised for conditioning).
    An independent check of :func:`svm_direction`; slower, and HiGHS may
    report numerical difficulties (treated as not separable) near the
    separability threshold.
    """
    X, y = _as_np(X), _as_np(y)
    norms = np.linalg.norm(X, axis=1)
    if np.any(norms == 0):  # a point at the origin is never strictly classified
        return False
    Zr = _reduce_rows(y[:, None] * X / norms[:, None])
    res = linprog(
        np.zeros(Zr.shape[1]), A_ub=-Zr, b_ub=-np.ones(len(y)), bounds=(None, None), method="highs"
    )
    return res.status == 0


def svm_metrics(v: Tensor, svm, X: Tensor, y: Tensor) -> dict[str, Tensor]:
    """Compare linear predictors with the hard-margin SVM (Soudry et al. 2018; Frei et al. 2023).

    Args:
        v: ``(R, d)`` linear predictors.
        svm: one :class:`SVMResult` for shared data, or a sequence of R (per-run data).
        X: ``(n, d)`` or ``(R, n, d)``, the data the SVM was fitted on.
        y: ``(n,)`` or ``(R, n)``.

    Returns:
        ``svm_cosine`` (R,) = ⟨v, w_svm⟩/‖v‖ and ``margin_ratio`` (R,) =
        geometric margin of v / SVM margin (1 at the max-margin direction);
        NaN where the data is not separable.
    """
    svms = [svm] if isinstance(svm, SVMResult) else list(svm)
    w = torch.as_tensor(np.stack([s.w for s in svms]), dtype=v.dtype, device=v.device)
    gm = torch.as_tensor([s.margin for s in svms], dtype=v.dtype, device=v.device)
    cos = (v * w).sum(-1) / v.norm(dim=-1)
    return {"svm_cosine": cos, "margin_ratio": geometric_margin(v, X, y) / gm}


def boundary_agreement(
    params,
    v: Tensor,
    X_test: Tensor,
    spec: ModelSpec,
    a: Tensor | None = None,
    x_in_dim: XDim = "auto",
) -> Tensor:
    """Fraction of test points with sign f(x) = sign⟨v, x⟩ (Frei et al. 2023, Thm 3.1).

    Args:
        params: ``(R, out, in)`` each.
        v: ``(R, d)``.
        X_test: ``(n, d)`` or ``(R, n, d)``.

    Returns:
        ``(R,)`` in [0, 1].
    """
    f = _outputs(params, X_test, spec, a, x_in_dim)
    return (torch.sign(f) == torch.sign(_inner(v, X_test))).to(v.dtype).mean(-1)


# ---------------------------------------------------------------- KKT
def per_sample_gradients(
    params, X: Tensor, spec: ModelSpec, a: Tensor | None = None, x_in_dim: XDim = "auto"
) -> Tensor:
    """Per-sample gradients ∇_θ f(x_i; θ), flattened in ``params`` order.

    ``vmap`` over runs of ``jacrev`` over parameters. Memory R·n·P.

    Returns:
        ``(R, n, P)``.
    """

    def f(p, x):
        return models.forward(p, x, spec, a)

    jac = vmap(jacrev(f), in_dims=(0, _x_dim(X, x_in_dim)))(params, X)
    return torch.cat([j.reshape(j.shape[0], j.shape[1], -1) for j in jac], dim=2)


_KKT_TIE_BREAK = 1e-3


def kkt_residuals(
    params,
    X: Tensor,
    y: Tensor,
    spec: ModelSpec,
    a: Tensor | None = None,
    x_in_dim: XDim = "auto",
    max_elements: int = 2**26,
) -> dict[str, Tensor]:
    """How far θ is from a KKT point of min ½‖θ‖² s.t. y_i f(x_i; θ) ≥ 1.

    Gradient flow/descent on exponentially-tailed losses converges in direction
    to such points for L-homogeneous nets (Lyu & Li 2020, arXiv 1906.05890;
    Ji & Telgarsky 2020, arXiv 2006.06657; Frei et al. 2023, Thm 3.1). Rescale
    θ̃ = θ / margin^{1/L} so min_i y_i f(x_i; θ̃) = 1, form G_i = y_i ∇_θ f(x_i; θ̃)
    and take the best multipliers λ = argmin_{λ ≥ 0} ‖θ̃ − Σ_i λ_i G_i‖ (NNLS);
    then

        kkt_stationarity = ‖θ̃ − Σ_i λ_i G_i‖ / ‖θ̃‖,
        kkt_slackness    = Σ_i λ_i (y_i f(x_i; θ̃) − 1) / Σ_i λ_i.

    Both are 0 at a KKT point. The minimiser λ is not unique when the G_i are
    linearly dependent (deep linear nets: they span at most depth·d
    directions; n > P), and slackness would then depend on which one NNLS
    returns. Ties are broken towards complementary slackness by appending the
    rows ε·w_i·‖G_i‖, w_i = |s_i|/(1 + |s_i|), s_i = y_i f(x_i; θ̃) − 1,
    ε = 1e-3, to the NNLS system: if some minimiser has zero slackness it is
    returned exactly (same stationarity); otherwise stationarity moves by
    O(ε) at most. NaN for runs with margin ≤ 0 or non-finite
    weights (no rescaling exists), and slackness NaN when λ = 0.

    The smoothed leaky ReLU is only approximately homogeneous (its quadratic
    piece |z| < 1/H and offsets (1−γ)/(4H) break f(cθ) = c^L f(θ)). For such
    near-homogeneous nets GD converges in direction to a KKT point of the
    margin problem of the *homogenization* f̄(θ) = lim_{c→∞} f(cθ)/c^L (Cai et
    al. 2025, arXiv 2502.16075), here the leaky-ReLU net with the
    same γ (:attr:`ModelSpec.homogenized`); so the residuals are those of f̄ at
    the trained θ: margin, rescaling, gradients and slackness all use f̄.
    Measured on Frei et al.'s setting (n = 30, d = 4000, ω = 1e-6, lr 0.01,
    H = 1, float64): stationarity 0.558 (step 1) → 0.444 (20) → 0.368 (100) →
    0.326 (300) → 0.265 (3000), monotone. Evaluating the smoothed net itself
    instead (rescaled to margin ≈ 1, where every pre-activation sits in the
    quadratic piece) gives 0.149 → 0.007 (20) → 0.156 (300) → 0.227 (3000):
    it measures closeness to a problem GD is not biased towards.

    Linear algebra in float64, batched: the NNLS runs on coordinates of
    G_1..G_n, θ̃ taken from their (n+1) × (n+1) Gram matrix (so n+1 rows instead
    of P), and the Gram matrix itself is formed layer-wise
    (:func:`batched.jacobian_gram`) without the (n, P) Jacobian. Working from
    the Gram matrix limits the attainable stationarity to ≈ √eps ≈ 1e-8.

    Args:
        max_elements: runs are processed in chunks of at most this many
            entries of G (R·n·P float64; default 2²⁶, 512 MiB).

    Returns:
        ``{"kkt_stationarity": (R,), "kkt_slackness": (R,)}`` in the dtype of θ.
    """
    xd, spec = _x_dim(X, x_in_dim), spec.homogenized
    R, step = (
        params[0].shape[0],
        max(1, max_elements // max(1, X.shape[-2] * (X.shape[-2] + spec.width))),
    )
    if step >= R:
        return _kkt_chunk(params, X, y, spec, a, xd)
    parts = [  # chunks of runs bound the R·n·P memory of the gradients
        _kkt_chunk(
            tuple(p[i : i + step] for p in params),
            X if xd is None else X[i : i + step],
            y if y.ndim == 1 else y[i : i + step],
            spec,
            a,
            xd,
        )
        for i in range(0, R, step)
    ]
    return {k: torch.cat([part[k] for part in parts]) for k in parts[0]}


def _kkt_chunk(params, X, y, spec, a, xd) -> dict[str, Tensor]:
    R, L = params[0].shape[0], spec.homogeneity
    margin = (y * _outputs(params, X, spec, a, xd)).min(-1).values
    ok = (margin > 0) & torch.isfinite(_flat(params)).all(1)
    scale = torch.where(ok, margin, 1.0) ** (-1.0 / L)
    # runs without a rescaling get θ̃ = 0 (masked to NaN below) so no NaN reaches the eigh
    params_t = tuple(torch.where(ok.view(-1, 1, 1), p * scale.view(-1, 1, 1), 0.0) for p in params)

    from .batched import jacobian_gram

    # Everything the NNLS needs is in the Gram matrix of G_1..G_n, θ̃ (formed
    # layer-wise, never the (n, P) Jacobian): K = G Gᵀ, c = G θ̃.
    Kf, dots, f = jacobian_gram(params_t, X, spec, a)
    yf = (y * f).double()
    yy = y.double()
    K = yy[..., :, None] * Kf.double() * yy[..., None, :]
    c = yy * dots.double()
    theta_sq = _flat(params_t).double().square().sum(1)
    n = K.shape[1]
    M = torch.cat(
        [torch.cat([K, c[:, :, None]], 2), torch.cat([c, theta_sq[:, None]], 1)[:, None]],
        1,
    )
    coords = _gram_root(M)  # (R, n+1, n+1), row i = coordinates of G_i, row n = of θ̃
    # tie-break rows ε·w(s_i)·‖G_i‖ (see docstring)
    slack_w = (yf - 1).abs() / (1 + (yf - 1).abs())
    tie = torch.diag_embed(_KKT_TIE_BREAK * slack_w * K.diagonal(dim1=1, dim2=2).sqrt())
    A_np = torch.cat([coords[:, :n].transpose(1, 2), tie], dim=1).cpu().numpy()
    b_np = torch.cat([coords[:, n], torch.zeros_like(yf)], dim=1).cpu().numpy()
    lam = torch.zeros(R, n, dtype=torch.float64)
    for r in range(R):  # scipy NNLS has no batched form
        if ok[r]:
            try:
                lam[r] = torch.from_numpy(nnls(A_np[r], b_np[r], maxiter=50 * max(n, 10))[0])
            except RuntimeError:  # iteration limit: report NaN rather than crash a sweep
                ok[r] = False
    lam = lam.to(K.device)
    # ‖θ̃ − Gᵀλ‖² = ‖θ̃‖² − 2λᵀc + λᵀKλ (floor ≈ √eps relative)
    res_sq = theta_sq - 2 * (lam * c).sum(1) + torch.einsum("ri,rij,rj->r", lam, K, lam)
    stat = res_sq.clamp_min(0).sqrt() / theta_sq.sqrt()
    tot = lam.sum(1)
    slack = (lam * (yf - 1)).sum(1) / tot
    slack = torch.where(tot > 0, slack, torch.nan)
    out_dtype = params[0].dtype
    return {
        "kkt_stationarity": torch.where(ok, stat, torch.nan).to(out_dtype),
        "kkt_slackness": torch.where(ok, slack, torch.nan).to(out_dtype),
    }


# ---------------------------------------------------------------- data geometry
def data_geometry(X, y, svm: SVMResult | None = None, rank_tol: float | None = None) -> dict:
    """Geometry of one data set (SPEC §3 data diagnostics), JSON-able values.

    - ``separable`` / ``svm_margin``: from :func:`svm_direction` (or ``svm`` if given).
    - ``near_orthogonality``: min_i ‖x_i‖² / (n · max_{k≠i} |⟨x_i, x_k⟩|), the
      largest C in the condition ‖x_i‖² ≥ C n max_{k≠i}|⟨x_i, x_k⟩| of Frei et
      al. 2023 (their theory needs C above a constant); ``inf`` for exactly
      orthogonal data or n < 2.
    - ``rank``: number of singular values of X above rank_tol · σ_max
      (default max(n, d) · eps of X's dtype); ``degenerate``: rank == 1 (all
      points on one line, Liu et al. 2023).
    - ``class_overlap``: the lowest training error (y_i⟨w, x_i⟩ ≤ 0 counts as an
      error) among three linear classifiers through the origin — the SVM
      direction (error 0, if separable), least squares w = X⁺y, and the class
      mean difference w = Σ_i y_i x_i, each also with its sign flipped. An
      upper bound on the minimum 0-1 error of any linear classifier through
      the origin (NP-hard in general); 0 iff separable; exact for degenerate
      data x_i = s_i u (every classifier is ±u there).

    Args:
        X: ``(n, d)``.
        y: ``(n,)`` in {−1, +1}.
        svm: a precomputed :func:`svm_direction` result.
        rank_tol: relative tolerance for the rank.
    """
    src_dtype = X.dtype if isinstance(X, Tensor | np.ndarray) else np.float64
    eps = _eps(src_dtype)
    X, y = _as_np(X), _as_np(y)
    n, d = X.shape
    svm = svm_direction(X, y) if svm is None else svm
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)

    gram = Xt @ Xt.T
    sq = gram.diagonal().clone()
    off = (gram - torch.diag(sq)).abs().amax(1) if n > 1 else torch.zeros(n, dtype=Xt.dtype)
    ratio = torch.where(off > 0, sq / (n * off), torch.inf)
    near_orth = float(ratio.min()) if n > 0 else float("inf")

    s = torch.linalg.svdvals(Xt)  # accurate small singular values (a Gram eigh is not)
    tol = (max(n, d) * eps) if rank_tol is None else rank_tol
    rank = int((s > tol * s[0]).sum()) if s.numel() and s[0] > 0 else 0

    # least-squares predictions X X⁺y: projection of y on the top-`rank` left
    # singular vectors, via an eigh of the smaller Gram matrix
    if n <= d:
        U = torch.linalg.eigh(gram)[1][:, n - rank :]
        ls = U @ (U.T @ yt)
    else:
        ev, V = torch.linalg.eigh(Xt.T @ Xt)
        ev, V = ev[d - rank :], V[:, d - rank :]
        ls = Xt @ (V @ ((V.T @ (Xt.T @ yt)) / ev))
    errors = [0.0] if svm.separable else []
    for f in (ls, Xt @ (Xt.T @ yt)):  # least squares, class-mean difference
        yf = yt * f
        tie = 0.5 * (yf == 0).double()  # f = 0 is half wrong, as in losses.accuracy
        errors += [float(((yf < 0) + tie).mean()), float(((yf > 0) + tie).mean())]  # w and −w
    return {
        "separable": bool(svm.separable),
        "svm_margin": float(svm.margin),
        "near_orthogonality": near_orth,
        "rank": rank,
        "degenerate": rank == 1,
        "class_overlap": min(errors),
    }
