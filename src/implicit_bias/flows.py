"""Central flows beside gradient descent, batched over runs.

At the edge of stability GD oscillates along the top Hessian eigenvector(s)
while its sharpness S hovers at 2/η (Cohen et al. 2021, arXiv 2103.00065).
The *central flow* of Cohen, Damian, Talwalkar, Kolter & Lee 2024 ("Understanding
Optimization in Deep Learning with Central Flows", arXiv 2410.24206, ICLR 2025;
companion pages centralflows.github.io) is the ODE that GD's time-averaged
trajectory follows; its one-direction form is the self-stabilisation picture of
Damian, Nichani & Lee 2022 (arXiv 2209.15594)::

    dw/dt = −η [∇L(w) + ½ ∇_w ⟨H(w), Σ⟩],   Σ ⪰ 0 on the eigenspace at 2/η,

with Σ the covariance of GD's oscillation. With one unstable direction u
(S = uᵀHu, ∇S = ∇_w(uᵀH(w)u) at fixed u) Σ = σ² uuᵀ and

    σ² = max(0, 2⟨−∇L, ∇S⟩ / ‖∇S‖²)   when S has reached 2/η,

the value that keeps dS/dt = 0 (S pinned at 2/η); below the edge σ² = 0 and the
flow is gradient flow. With k ≥ 2 tracked directions Σ solves

    min_{Σ ⪰ 0} ⟨B, Σ⟩ + ½⟨Σ, 𝒜(Σ)⟩,   B_ij = ⟨G_ij, ∇L⟩,
    𝒜(Σ)_ij = ½ Σ_kl Σ_kl ⟨G_ij, G_kl⟩,  G_ij = ∇_w(u_iᵀ H(w) u_j),

over the eigenvalues at 2/η; its KKT conditions (Σ ⪰ 0, B + 𝒜(Σ) ⪰ 0,
⟨Σ, B + 𝒜(Σ)⟩ = 0) are the paper's semidefinite complementarity problem: the
restricted Hessian block does not rise where Σ acts and falls where it does not.
For k = 1 the minimiser is the σ² above. The predictions: GD's time-averaged
loss ≈ L(w) + tr Σ/η, and E[(u_iᵀ(w_GD − w))²] ≈ Σ_ii.

Numerics, as in the authors' description: explicit Euler with ``substeps`` per
GD step (one GD step is one unit of flow time at the run's rate η_t), the top
eigenpairs by Lanczos warm-started from the previous substep, ∇S by reverse-mode
through the forward-over-reverse HVP (a third directional derivative). To keep S
pinned, each constrained substep adds a Newton step along ∇S back to S = 2/η,
computed from the S and ∇S that substep measured anyway (no extra eigen-solve):
δ = −(S − 2/η) ∇S / ‖∇S‖² (for k ≥ 2 the same on the binding eigenvalues). The
gradient flow is the same integrator with Σ = 0.

Cost (k = 1): a full warm-started Lanczos solve runs at each GD step's first
substep and at eval steps; the later substeps of a step track the top eigenpair by
one Rayleigh–Ritz step on span{u, Hu} (:meth:`FlowModel.refine_top`), whose products
come from the same two HVP set-ups at w ± εu that ∇S needs, and keep it while every
run's residual meets Lanczos' own ``converged`` test (else the batch re-solves). On
the ``bench`` central-flow row this removed about 60 % of the eigen-solves.

Everything is pure and batched over R runs on flat parameter vectors ``(R, P)``;
the model enters as a one-run loss ``loss_fn(params, X, y) -> scalar`` (the
engine's ``Trainer.loss_single``), differentiated by ``torch.func``. The
hand-written MLP path's derivatives stop at second order, so the flows use the
same forward under ``torch.func`` (what :func:`~.models.backend.mlp_generic`
does) on every backend.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.func import grad, grad_and_value, jvp, vmap

from . import curvature
from ._errors import UserInputError

Params = tuple[Tensor, ...]
#: the training loss of ONE run: (params, X, y) -> scalar
LossFn = Callable[[Params, Tensor, Tensor], Tensor]

#: the constraint is active once S ≥ (1 − EDGE_TOL)·2/η (and gradient flow would raise S)
EDGE_TOL = 1e-3
#: Lanczos steps at most per eigen-solve (warm-started it stops after a few)
EIG_ITERS = 30
#: Lanczos relative residual target (eigenvalue error ≈ its square × the spectral scale)
EIG_TOL = 1e-3
#: within a GD step the top eigenvector is tracked by one Rayleigh–Ritz step per
#: substep while every run's relative residual ‖Hu − Su‖/|S| stays below this (the
#: bound of :class:`~.curvature.LanczosResult`'s ``converged``), else the batch re-solves
TRACK_TOL = EIG_TOL

#: result variables on the ``step`` axis (each ``(run, step)``) and the per-run scalar
STEP_NAMES = (
    "cf_loss",
    "cf_predicted_loss",
    "cf_sharpness",
    "cf_sigma2",
    "gf_loss",
    "gf_sharpness",
    "gd_cf_distance",
    "gd_gf_distance",
    "cf_displacement_sq",
)
RUN_NAMES = ("cf_edge_step",)


def cvxpy_available() -> bool:
    """cvxpy (the ``central`` extra) is importable: k ≥ 2 needs it."""
    return importlib.util.find_spec("cvxpy") is not None


# ---------------------------------------------------------------- derivatives
class FlowModel:
    """The model as the flows see it: flat parameters ``(R, P)`` in, batched answers out.

    Gradients and Hessian-vector products come from ``value_and_grad`` and
    ``hvp`` when given (the engine passes its backend's, so the MLP family uses its
    hand-written passes), else from ``torch.func`` on ``loss_fn``.

    The third derivative G_ij = ∇(u_iᵀH(w)u_j) by ``third``:

    - ``"ad"``: reverse mode through the forward-over-reverse HVP of ``loss_fn``
      (``torch.func``; exact, ~17 ms for two runs of the 3104-parameter fc-tanh of
      ``configs/central-flow.yaml``);
    - ``"fd"``: a central difference of the HVP along the other vector,
      [H(w + εu_i) − H(w − εu_i)] u_j / 2ε, which is the same vector because D³L is
      symmetric (∇_w(u_iᵀH(w)u_j)·v = D³L[u_i, u_j, v] = d/dε (H(w + εu_i)u_j)·v):
      two HVPs of the backend (~1 ms there), error O(ε²) + O(eps/ε); with ε = eps^(1/3)
      (6e-6 in float64) it matched ``"ad"`` to 7e-11 relative on that net.

    Args:
        loss_fn: the training loss of one run, ``(params, X, y) -> scalar``.
        like: parameter tensors ``(R, …)`` giving the shapes.
        X, y, x_dim: the training set, shared (``x_dim=None``) or per run (``0``).
        value_and_grad: ``params -> (loss (R,), grads)``, batched.
        hvp: ``params -> (v -> H v)``, batched, on flat ``(R, P)`` vectors (the engine's
            :meth:`~implicit_bias.engine.Trainer.hessian_operator`).
    """

    def __init__(
        self,
        loss_fn: LossFn,
        like: Sequence[Tensor],
        X: Tensor,
        y: Tensor,
        x_dim: int | None,
        value_and_grad: Callable[[Params], tuple[Tensor, Params]] | None = None,
        hvp: Callable[[Params], curvature.MatVec] | None = None,
        third: str = "ad",
    ) -> None:
        if third not in ("ad", "fd"):
            raise ValueError(f"third must be 'ad' or 'fd', got {third!r}")
        self.loss_fn, self.X, self.y, self.x_dim = loss_fn, X, y, x_dim
        self.like = tuple(p.detach() for p in like)
        self._vg, self._hvp, self.third = value_and_grad, hvp, third

    def params(self, w: Tensor) -> Params:
        return curvature.unflatten(w, self.like)

    def loss_and_grad(self, w: Tensor) -> tuple[Tensor, Tensor]:
        """Loss ``(R,)`` and its gradient ``(R, P)`` at flat parameters ``w (R, P)``."""
        if self._vg is not None:
            loss, g = self._vg(self.params(w))
            return loss, curvature.flatten(g)
        gv = vmap(grad_and_value(self.loss_fn), in_dims=(0, self.x_dim, self.x_dim))
        g, loss = gv(self.params(w), self.X, self.y)
        return loss, curvature.flatten(g)

    def hessian(self, w: Tensor) -> curvature.MatVec:
        """``v (R, P) -> H v (R, P)`` at ``w``."""
        if self._hvp is not None:
            return self._hvp(self.params(w))
        return curvature.hessian_operator(
            self.loss_fn, self.params(w), (self.X, self.y), (self.x_dim, self.x_dim)
        )

    def top_eigs(
        self, w: Tensor, v0: Tensor, k: int, generator: torch.Generator | None = None
    ) -> curvature.LanczosResult:
        """Top-k Hessian eigenpairs of every run by Lanczos warm-started at ``v0 (R, P)``."""
        iters = min(max(EIG_ITERS, 2 * k + 2), w.shape[1])
        # the flows use the pairs only: no explicit residuals (one matvec fewer)
        return curvature.lanczos(
            self.hessian(w), v0, iters, k, generator, tol=EIG_TOL, early_stop=True,
            residuals=False,
        )  # fmt: skip

    def curvature_gradients(
        self, w: Tensor, U: Tensor, pairs: Sequence[tuple[int, int]]
    ) -> tuple[Tensor, Tensor]:
        """G_ij = ∇(u_iᵀHu_j) ``(R, len(pairs), P)`` at ``w`` and u_iᵀHu_j ``(R, len(pairs))``."""
        if self.third == "ad":
            return curvature_gradients(
                self.loss_fn, w, self.like, self.X, self.y, self.x_dim, U, pairs
            )
        eps = torch.finfo(w.dtype).eps ** (1 / 3)
        gs, vals = [], []
        for i, j in pairs:
            ui, uj = U[:, i], U[:, j]
            plus, minus = self.hessian(w + eps * ui)(uj), self.hessian(w - eps * ui)(uj)
            gs.append((plus - minus) / (2 * eps))
            vals.append((ui * (plus + minus)).sum(-1) / 2)  # H(w)u_j + O(ε²)
        return torch.stack(gs, 1), torch.stack(vals, 1)

    def refine_top(self, w: Tensor, u: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One Rayleigh–Ritz step for the top eigenpair from a unit guess ``u (R, P)``.

        The top Ritz pair of H(w) on span{u, r}, r = Hu − (uᵀHu)u (two Lanczos steps
        warm-started at u), and ∇S at its vector u' = a·u + b·q (q = r/‖r‖) by the
        multilinearity of D³L: ∇(u'ᵀHu') = a²G_uu + 2ab·G_uq + b²G_qq, the last term
        dropped (b = O(‖r‖/gap), so its error is second order in the residual, where
        using u itself would be first order). With ``third="fd"`` every product comes
        from the two HVP set-ups at w ± εu that G_uu needs anyway (H(w)v is the mean of
        the pair to O(ε²), G_uv their difference), so a substep that keeps the tracked
        vector costs two set-ups and four HVPs, and no Lanczos solve.

        Returns:
            u' ``(R, P)``, S = its Rayleigh quotient ``(R,)``, its residual
            ‖Hu' − Su'‖ ``(R,)`` (exact, from the same products) and ∇S ``(R, P)``.
        """
        tiny = torch.finfo(w.dtype).tiny
        if self.third == "fd":
            eps = torch.finfo(w.dtype).eps ** (1 / 3)
            Hp, Hm = self.hessian(w + eps * u), self.hessian(w - eps * u)

            def both(v: Tensor) -> tuple[Tensor, Tensor]:
                plus, minus = Hp(v), Hm(v)
                return (plus + minus) / 2, (plus - minus) / (2 * eps)

            hu, g_uu = both(u)
        else:
            hu = self.hessian(w)(u)
        lam = (u * hu).sum(-1)
        r = hu - lam[:, None] * u
        r = r - (u * r).sum(-1, keepdim=True) * u
        rn = r.norm(dim=1)
        q = r / rn.clamp_min(tiny)[:, None]
        if self.third == "fd":
            hq, g_uq = both(q)
        else:
            hq = self.hessian(w)(q)
            G, _ = self.curvature_gradients(w, torch.stack([u, q], 1), [(0, 0), (0, 1)])
            g_uu, g_uq = G[:, 0], G[:, 1]
        T = torch.stack([torch.stack([lam, rn], -1), torch.stack([rn, (q * hq).sum(-1)], -1)], -2)
        theta, V = torch.linalg.eigh(T)  # ascending: the top pair is the last
        a, b = V[:, 0, 1], V[:, 1, 1]
        flip = torch.where(a < 0, -1.0, 1.0).to(w.dtype)  # keep u's orientation
        a, b = a * flip, b * flip
        u2, hu2, lam2 = (
            a[:, None] * u + b[:, None] * q,
            a[:, None] * hu + b[:, None] * hq,
            theta[:, 1],
        )
        res = (hu2 - lam2[:, None] * u2).norm(dim=1)
        gS = (a * a)[:, None] * g_uu + (2 * a * b)[:, None] * g_uq
        return u2, lam2, res, gS


def curvature_gradients(
    loss_fn: LossFn,
    w: Tensor,
    like: Sequence[Tensor],
    X: Tensor,
    y: Tensor,
    x_dim: int | None,
    U: Tensor,
    pairs: Sequence[tuple[int, int]],
) -> tuple[Tensor, Tensor]:
    """G_ij = ∇_w (u_iᵀ H(w) u_j) at fixed u for each pair, batched over runs.

    Reverse mode through the forward-over-reverse HVP (``grad`` of ``jvp`` of
    ``grad``): one pair costs about a gradient of an HVP. For a unit eigenvector
    u of a simple eigenvalue S, G_uu = ∇S (Hellmann–Feynman).

    Args:
        w: flat parameters ``(R, P)``; ``like``: the parameter shapes.
        U: eigenvectors ``(R, k, P)``.
        pairs: index pairs (i, j) into U's second axis.

    Returns:
        ``G (R, len(pairs), P)`` and the values u_iᵀHu_j ``(R, len(pairs))``.
    """

    def one(p: Params, ui: Params, uj: Params, x: Tensor, yy: Tensor) -> tuple[Params, Tensor]:
        def quad(q: Params) -> Tensor:
            hv = jvp(lambda r: grad(loss_fn)(r, x, yy), (q,), (uj,))[1]
            return sum((a * b).sum() for a, b in zip(ui, hv, strict=True))  # type: ignore[return-value]

        return grad_and_value(quad)(p)

    batched = vmap(one, in_dims=(0, 0, 0, x_dim, x_dim))
    params = curvature.unflatten(w, like)
    gs, vals = [], []
    for i, j in pairs:
        g, v = batched(
            params, curvature.unflatten(U[:, i], like), curvature.unflatten(U[:, j], like), X, y
        )
        gs.append(curvature.flatten(g))
        vals.append(v)
    return torch.stack(gs, 1), torch.stack(vals, 1)


# ---------------------------------------------------------------- Σ
def sigma2_one_direction(grad_loss: Tensor, grad_s: Tensor) -> Tensor:
    """σ² = max(0, 2⟨−∇L, ∇S⟩/‖∇S‖²) per run, ``(R,)`` (0 where ∇S = 0)."""
    dot = -(grad_loss * grad_s).sum(-1)
    nrm2 = (grad_s * grad_s).sum(-1)
    ok = (dot > 0) & (nrm2 > 0)
    return torch.where(ok, 2 * dot / torch.where(ok, nrm2, 1.0), 0.0)


def solve_sigma(G: np.ndarray, grad_loss: np.ndarray) -> np.ndarray:
    """Σ ⪰ 0 ``(m, m)`` minimising ⟨B, Σ⟩ + ½⟨Σ, 𝒜(Σ)⟩ for one run (module docstring).

    Written in an orthonormal basis of symmetric m×m matrices (E_ii = e_ieᵢᵀ,
    E_ij = (e_ieⱼᵀ + e_jeᵢᵀ)/√2), Σ = Σ_a x_a E_a, the objective is
    bᵀx + ¼‖Σ_a x_a g_a‖² with g_ii = G_ii, g_ij = √2 G_ij and b_a = ⟨g_a, ∇L⟩:
    a convex quadratic over the PSD cone, solved by cvxpy (Clarabel). m = 1 is
    the closed form σ² = max(0, 2⟨−∇L, ∇S⟩/‖∇S‖²).

    Args:
        G: ``(m, m, P)`` with G[i, j] = ∇(u_iᵀHu_j) (symmetric in i, j).
        grad_loss: ``(P,)``.

    Raises:
        UserInputError: m ≥ 2 and cvxpy is not installed (names train.flow_eigs).
    """
    m = G.shape[0]
    if m == 1:
        g = G[0, 0]
        dot, nrm2 = -float(g @ grad_loss), float(g @ g)
        return np.array([[2 * dot / nrm2 if dot > 0 and nrm2 > 0 else 0.0]])
    try:
        import cvxpy as cp
    except ImportError:  # pragma: no cover - exercised only without the extra
        raise UserInputError(
            "train.flow_eigs: k >= 2 needs cvxpy (pip install 'implicit-bias[central]')"
        ) from None
    idx = [(i, j) for i in range(m) for j in range(i, m)]
    g = np.stack([G[i, j] * (1.0 if i == j else math.sqrt(2.0)) for i, j in idx])  # (A, P)
    b = g @ grad_loss
    K = g @ g.T
    # ¼‖Σ x_a g_a‖² = ¼ xᵀKx = ¼‖F x‖² with F = D^{1/2}Vᵀ (K = V D Vᵀ, D clipped at 0);
    # scaled so the solver sees numbers of order one
    scale = max(float(np.abs(K).max()), 1e-300)
    d, V = np.linalg.eigh(K / scale)
    F = np.sqrt(np.clip(d, 0.0, None))[:, None] * V.T
    S = cp.Variable((m, m), symmetric=True)
    x = cp.hstack([S[i, j] * (1.0 if i == j else math.sqrt(2.0)) for i, j in idx])
    objective = (b / scale) @ x + 0.25 * cp.sum_squares(F @ x)
    prob = cp.Problem(cp.Minimize(objective), [S >> 0])
    try:
        prob.solve(solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
    except cp.error.SolverError:
        prob.solve(solver=cp.SCS, eps=1e-9)
    if S.value is None:
        return np.full((m, m), np.nan)
    out = np.asarray(S.value, dtype=np.float64)
    # the solver's answer is PSD up to its tolerance: project (eigenvalues clipped)
    lam, Q = np.linalg.eigh((out + out.T) / 2)
    return (Q * np.clip(lam, 0.0, None)) @ Q.T


class Field(NamedTuple):
    """The central flow's right-hand side at w, and what the traces read there."""

    loss: Tensor  # (R,) L(w)
    grad: Tensor  # (R, P) ∇L(w)
    eigvals: Tensor  # (R, k) top Hessian eigenvalues, descending
    eigvecs: Tensor  # (R, k, P)
    trace: Tensor  # (R,) tr Σ (0 below the edge)
    push: Tensor  # (R, P) ½ Σ_ij Σ_ij ∇(u_iᵀHu_j)
    correction: Tensor  # (R, P) Newton step back to the edge (0 when inactive)


def _one_direction(
    loss: Tensor, g: Tensor, lam: Tensor, U: Tensor, gS: Tensor, thr: Tensor
) -> Field:
    """The k = 1 field from S = ``lam (R, 1)``, u = ``U (R, 1, P)`` and ∇S ``(R, P)``."""
    near = torch.isfinite(lam[:, 0]) & (lam[:, 0] >= (1 - EDGE_TOL) * thr)
    s2 = torch.where(near, sigma2_one_direction(g, gS), 0.0)
    nrm2 = (gS * gS).sum(-1)
    # binding: σ² > 0, or S above the edge (pulled back even where GF lowers S)
    bind = near & ((s2 > 0) | (lam[:, 0] > thr)) & (nrm2 > 0)
    step = torch.where(bind, (lam[:, 0] - thr) / torch.where(bind, nrm2, 1.0), 0.0)
    push = 0.5 * s2[:, None] * gS
    return Field(loss, g, lam, U, s2, push, -step[:, None] * gS)


def central_field(
    model: FlowModel,
    w: Tensor,
    lr: Tensor,
    v0: Tensor,
    k: int = 1,
    generator: torch.Generator | None = None,
    constrained: bool = True,
    tracked: bool = False,
) -> Field:
    """Everything one Euler substep of the central flow needs at ``w (R, P)``.

    Args:
        lr: ``(R,)`` the runs' rates η_t (the edge is 2/η_t).
        v0: ``(R, P)`` warm start of the eigen-solve.
        k: eigenpairs tracked.
        constrained: False gives the gradient flow's field (Σ = 0; eigenpairs
            still measured).
        tracked: (k = 1, constrained) ``v0`` is the top eigenvector from the previous
            substep: keep it, with its Rayleigh quotient at ``w`` as S, when every run's
            residual is below :data:`TRACK_TOL` (else solve as without it).
    """
    loss, g = model.loss_and_grad(w)
    R, P = w.shape
    thr = 2.0 / lr
    if tracked and k == 1 and constrained:
        u, lam1, res, gS = model.refine_top(w, v0 / v0.norm(dim=1, keepdim=True))
        # kept where the residual meets Lanczos' own `converged` test (S then errs by at
        # most res²/gap), or where S + res is below the edge band: u is within res of
        # an eigenvalue there and the run's field is gradient flow, which does not use S
        ok = (res <= TRACK_TOL * lam1.abs()) | (lam1 + res < (1 - EDGE_TOL) * thr)
        if bool((ok & torch.isfinite(res) & torch.isfinite(gS).all(1)).all()):
            return _one_direction(loss, g, lam1[:, None], u[:, None], gS, thr)
        v0 = torch.where(torch.isfinite(u).all(1, keepdim=True), u, v0)  # the better start
    eig = model.top_eigs(w, v0, k, generator)
    lam, U = eig.eigenvalues, eig.eigenvectors
    zeros = torch.zeros_like(w)
    trace = torch.zeros(R, dtype=w.dtype, device=w.device)
    near = torch.isfinite(lam) & (lam >= (1 - EDGE_TOL) * thr[:, None])  # (R, k)
    if not constrained or not bool(near.any()):
        return Field(loss, g, lam, U, trace, zeros, zeros.clone())
    if k == 1:
        gS, _ = model.curvature_gradients(w, U, [(0, 0)])
        return _one_direction(loss, g, lam, U, gS[:, 0], thr)
    # k ≥ 2: the near eigenvalues are the top m of each run (descending order)
    m_all = near.sum(1)
    m_max = int(m_all.max())
    pairs = [(i, j) for i in range(m_max) for j in range(i, m_max)]
    G, _ = model.curvature_gradients(w, U, pairs)
    push, corr = zeros.clone(), zeros.clone()
    Gn, gn, lam_n = G.detach().cpu().double().numpy(), g.detach().cpu().double().numpy(), lam
    for r in range(R):
        m = int(m_all[r])
        if m == 0 or not np.isfinite(gn[r]).all() or not np.isfinite(Gn[r]).all():
            continue
        full = np.zeros((m, m, P))
        for a, (i, j) in enumerate(pairs):
            if i < m and j < m:
                full[i, j] = full[j, i] = Gn[r, a]
        sig = solve_sigma(full, gn[r])
        if not np.isfinite(sig).all():
            trace[r] = math.nan
            continue
        sig_t = torch.as_tensor(sig, dtype=w.dtype, device=w.device)
        full_t = torch.as_tensor(full, dtype=w.dtype, device=w.device)
        push[r] = 0.5 * torch.einsum("ij,ijp->p", sig_t, full_t)
        trace[r] = sig_t.diagonal().sum()
        # Newton step back to the edge on the binding eigenvalues (Σ_ii > 0 or above it)
        over = lam_n[r, :m] - thr[r]
        binding = [i for i in range(m) if sig[i, i] > 0 or float(over[i]) > 0]
        if binding:
            Gd = full_t[binding, binding]  # (b, P): G_ii
            gram = Gd @ Gd.T
            c = torch.linalg.lstsq(gram, over[binding].to(w.dtype)[:, None]).solution[:, 0]
            corr[r] = -(c[:, None] * Gd).sum(0)
    return Field(loss, g, lam, U, trace, push, corr)


# ---------------------------------------------------------------- the flows
class CentralFlows:
    """The central flow and the gradient flow of every run of a chunk, from θ₀.

    ``advance(t, lr_t)`` integrates one GD step's unit of flow time (``substeps``
    Euler steps of η_t/substeps each); ``measure(t, lr_t, params_gd)`` gives the
    step traces of :data:`STEP_NAMES` at an eval step; ``per_run()`` the per-run
    scalars. A run whose flow turns non-finite keeps NaN traces from then on (the
    other runs go on).

    Args:
        model: the model and training set (:class:`FlowModel`).
        theta0: the runs' initial parameters, tuple of ``(R, …)`` tensors.
        v0: ``(R, P)`` start vectors of the eigen-solves.
        substeps: Euler substeps per GD step.
        eigs: unstable directions tracked (k).
        generator: RNG of Lanczos restarts.
    """

    def __init__(
        self,
        model: FlowModel,
        theta0: Sequence[Tensor],
        v0: Tensor,
        substeps: int = 4,
        eigs: int = 1,
        generator: torch.Generator | None = None,
    ) -> None:
        w0 = curvature.flatten([p.detach() for p in theta0]).clone()
        if eigs > w0.shape[1]:
            raise UserInputError(
                f"train.flow_eigs={eigs} exceeds the model's {w0.shape[1]} trained parameters"
            )
        if eigs >= 2 and not cvxpy_available():
            raise UserInputError(
                "train.flow_eigs: k >= 2 needs cvxpy (pip install 'implicit-bias[central]')"
            )
        self.model = model
        self.substeps, self.k, self.gen = substeps, eigs, generator
        self.w_cf, self.w_gf = w0.clone(), w0.clone()
        R = w0.shape[0]
        self.cf_ok = torch.ones(R, dtype=torch.bool, device=w0.device)
        self.gf_ok = self.cf_ok.clone()
        self.v_cf = v0.to(w0.dtype).clone()
        self.v_gf = self.v_cf.clone()
        self.U = torch.zeros(R, eigs, w0.shape[1], dtype=w0.dtype, device=w0.device)
        self.edge_step = torch.full((R,), -1, dtype=torch.long, device=w0.device)
        self._cached: tuple[Tensor, Field] | None = None

    def _field(self, lr: Tensor, tracked: bool = False) -> Field:
        f = central_field(self.model, self.w_cf, lr, self.v_cf, self.k, self.gen, tracked=tracked)
        ok = torch.isfinite(f.eigvecs).flatten(1).all(1)
        self.U = torch.where(ok[:, None, None], f.eigvecs, self.U)
        # the next solve starts from the tracked subspace (their sum has a part in each)
        self.v_cf = torch.where(ok[:, None], f.eigvecs.sum(1), self.v_cf)
        return f

    def _mark_edge(self, t: int, trace: Tensor) -> None:
        hit = (trace > 0) & (self.edge_step < 0) & self.cf_ok
        self.edge_step = torch.where(hit, t, self.edge_step)

    @torch.no_grad()
    def advance(self, t: int, lr: Tensor) -> None:
        """Integrate both flows over GD step t (flow time one unit at rate ``lr (R,)``)."""
        lr = lr.to(self.w_cf.dtype)
        h = (lr / self.substeps)[:, None]
        for sub in range(self.substeps):
            cached = self._cached
            if sub == 0 and cached is not None and torch.equal(cached[0], lr):
                f = cached[1]  # measured at this very point by measure(t)
            else:
                # a full eigen-solve at the step's first substep; after it the top
                # eigenvector is tracked while its residual stays small (k = 1)
                f = self._field(lr, tracked=sub > 0)
            self._cached = None
            self._mark_edge(t, f.trace)
            new = self.w_cf - h * (f.grad + f.push) + f.correction
            ok = self.cf_ok & torch.isfinite(new).all(1) & torch.isfinite(f.trace)
            self.w_cf = torch.where(ok[:, None], new, self.w_cf)
            self.cf_ok = ok
            _, g = self.model.loss_and_grad(self.w_gf)
            new = self.w_gf - h * g
            ok = self.gf_ok & torch.isfinite(new).all(1)
            self.w_gf = torch.where(ok[:, None], new, self.w_gf)
            self.gf_ok = ok

    @torch.no_grad()
    def measure(self, t: int, lr: Tensor, params_gd: Sequence[Tensor]) -> dict[str, Tensor]:
        """The step traces at eval step t, each ``(R,)`` (NaN where a flow broke)."""
        lr = lr.to(self.w_cf.dtype)
        f = self._field(lr)
        self._cached = (lr.clone(), f)
        self._mark_edge(t, f.trace)
        gf_loss, _ = self.model.loss_and_grad(self.w_gf)
        gf_eig = self.model.top_eigs(self.w_gf, self.v_gf, 1, self.gen)
        gf_u = gf_eig.eigenvectors[:, 0]
        self.v_gf = torch.where(torch.isfinite(gf_u).all(1)[:, None], gf_u, self.v_gf)
        w_gd = curvature.flatten([p.detach() for p in params_gd]).to(self.w_cf.dtype)
        d_cf, d_gf = w_gd - self.w_cf, w_gd - self.w_gf
        along = torch.einsum("rkp,rp->rk", f.eigvecs, d_cf)
        nan = torch.full_like(f.loss, math.nan)
        cf, gf = self.cf_ok, self.gf_ok
        out = {
            "cf_loss": f.loss,
            "cf_predicted_loss": f.loss + f.trace / lr,
            "cf_sharpness": f.eigvals[:, 0],
            "cf_sigma2": f.trace,
            "gf_loss": gf_loss,
            "gf_sharpness": gf_eig.eigenvalues[:, 0],
            "gd_cf_distance": d_cf.norm(dim=1),
            "gd_gf_distance": d_gf.norm(dim=1),
            "cf_displacement_sq": along.square().sum(1),
        }
        for name in out:
            ok = gf if name.startswith(("gf_", "gd_gf")) else cf
            out[name] = torch.where(ok, out[name], nan)
        return out

    def per_run(self) -> dict[str, np.ndarray]:
        """``cf_edge_step`` ``(R,)``: the first GD step with σ² > 0, −1 if never."""
        return {"cf_edge_step": self.edge_step.cpu().numpy().astype(np.int64)}
