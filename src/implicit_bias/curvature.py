"""Curvature toolbox batched over runs (SPEC §3): operators + Lanczos/Hutchinson/SLQ.

In the style of curvlinops: each operator is a function mapping a batch of flat
vectors ``(R, P)`` to ``(R, P)`` (or ``(R, n)`` for the NTK), built from
``torch.func`` transforms vmapped over the leading run dimension R, so a whole
sweep is measured in one pass with no Python loop over runs.

Conventions: ``params`` is a tuple of tensors with a leading run dim R (the
engine's batched weights); ``loss_fn``/``output_fn`` are written for **one**
run. Data tensors are shared by all runs (in-dim ``None``, e.g. X ``(n, d)``)
or per run (in-dim ``0``, e.g. X ``(R, n, d)``).
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor
from torch.func import grad, jacrev, jvp, vjp, vmap

from . import _linalg

# what a run that breaks here is recorded as (see :mod:`implicit_bias._linalg`)
_EIGH = "Lanczos tridiagonal linalg.eigh did not converge"
_NONFINITE = "Lanczos: non-finite operator (Hessian/NTK) product or eigen-solve"

with warnings.catch_warnings():
    # The first forward-mode AD call imports torch's jvp decompositions, which
    # torch.jit.script them and (torch >= 2.9) warn that jit.script is deprecated;
    # under pytest's warnings-as-errors that aborts the import midway. Load them
    # once here, quietly.
    warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=DeprecationWarning)
    importlib.import_module("torch._decomp.decompositions_for_jvp")

Params = tuple[Tensor, ...]
MatVec = Callable[[Tensor], Tensor]


def flatten(params: Sequence[Tensor]) -> Tensor:
    """Batched params ``(R, *shape_i)`` → flat vectors ``(R, P)``, P = Σ numel."""
    return torch.cat([p.reshape(p.shape[0], -1) for p in params], dim=1)


def unflatten(flat: Tensor, like_params: Sequence[Tensor]) -> Params:
    """Inverse of :func:`flatten`: ``(R, P)`` → tuple shaped like ``like_params``."""
    sizes = [p[0].numel() for p in like_params]
    chunks = torch.split(flat, sizes, dim=-1)
    return tuple(
        c.reshape(c.shape[:-1] + p.shape[1:]) for c, p in zip(chunks, like_params, strict=True)
    )


def _detach(params: Sequence[Tensor]) -> Params:
    return tuple(p.detach() for p in params)


def hessian_operator(
    loss_fn: Callable[..., Tensor],
    params: Sequence[Tensor],
    data: Sequence[Tensor] = (),
    data_in_dims: Sequence[int | None] | None = None,
) -> MatVec:
    """Hessian-vector products of a per-run loss, batched over runs.

    Forward-over-reverse (``jvp`` of ``grad``; Pearlmutter 1994): one HVP costs
    about two gradient evaluations and never forms the P×P matrix.

    Args:
        loss_fn: ``loss_fn(params_single, *data) -> scalar`` for ONE run.
        params: batched parameters, tuple of ``(R, *shape_i)``.
        data: data tensors passed after the params (e.g. ``(X, y)``).
        data_in_dims: per data tensor, ``None`` (shared) or ``0`` (per run);
            default all shared.

    Returns:
        ``matvec(v: (R, P)) -> (R, P)`` computing H_r v_r for every run r.
    """
    params, data = _detach(params), tuple(data)
    in_dims = tuple(data_in_dims) if data_in_dims is not None else (None,) * len(data)

    def hvp_one(p: Params, v: Params, *d: Tensor) -> Params:
        return jvp(lambda q: grad(loss_fn)(q, *d), (p,), (v,))[1]

    batched = vmap(hvp_one, in_dims=(0, 0, *in_dims))
    return lambda v: flatten(batched(params, unflatten(v, params), *data))


def _loss_curvature(f: Tensor, y: Tensor, loss_kind: str) -> Tensor:
    """∂²ℓ/∂f² per sample for labels y ∈ {±1} (so y² = 1)."""
    from .losses import loss_hess

    return loss_hess(f, y, loss_kind)  # type: ignore[arg-type]


def gauss_newton_operator(
    output_fn: Callable[[Params, Tensor], Tensor],
    loss_kind: str,
    params: Sequence[Tensor],
    X: Tensor,
    y: Tensor,
    data_in_dims: tuple[int | None, int | None] = (None, None),
) -> MatVec:
    """Generalised Gauss–Newton products G v = Jᵀ diag(ℓ'') J v / n, batched over runs.

    The positive semi-definite part of the Hessian of the mean loss (Schraudolph
    2002; the `gn_sharpness` of SPEC §3): ℓ'' is σ(yf)(1−σ(yf)) for 'logistic',
    e^{−yf} for 'exponential' and 1 for 'mse' (½(f−y)²).

    Args:
        output_fn: ``output_fn(params_single, X) -> f (n,)`` for ONE run.
        loss_kind: ``'logistic'``, ``'exponential'`` or ``'mse'``.
        params: batched parameters, tuple of ``(R, *shape_i)``.
        X: inputs ``(n, d)`` or ``(R, n, d)``.
        y: labels ±1, ``(n,)`` or ``(R, n)``.
        data_in_dims: in-dims of ``(X, y)``: ``None`` shared, ``0`` per run.

    Returns:
        ``matvec(v: (R, P)) -> (R, P)``.
    """
    params = _detach(params)

    def ggn_one(p: Params, v: Params, x: Tensor, yy: Tensor) -> Params:
        f, jv = jvp(lambda q: output_fn(q, x), (p,), (v,))[:2]
        pullback = vjp(lambda q: output_fn(q, x), p)[1]
        return pullback(_loss_curvature(f, yy, loss_kind) * jv / f.shape[-1])[0]

    batched = vmap(ggn_one, in_dims=(0, 0, *data_in_dims))
    return lambda v: flatten(batched(params, unflatten(v, params), X, y))


def ntk_operator(
    output_fn: Callable[[Params, Tensor], Tensor],
    params: Sequence[Tensor],
    X: Tensor,
    x_in_dim: int | None = None,
) -> MatVec:
    """Empirical NTK products Θ u = J (Jᵀ u) / n, batched over runs.

    J = ∂f(xᵢ)/∂θ (n × P) (Jacot et al. 2018); its top eigenvalue is SPEC's
    `ntk_max`. Applied as a vjp then a jvp, so the n × P Jacobian is never formed.

    Args:
        output_fn: ``output_fn(params_single, X) -> f (n,)`` for ONE run.
        params: batched parameters, tuple of ``(R, *shape_i)``.
        X: inputs ``(n, d)`` (``x_in_dim=None``) or ``(R, n, d)`` (``x_in_dim=0``).

    Returns:
        ``matvec(u: (R, n)) -> (R, n)``.
    """
    params = _detach(params)

    def ntk_one(p: Params, u: Tensor, x: Tensor) -> Tensor:
        pullback = vjp(lambda q: output_fn(q, x), p)[1]
        return jvp(lambda q: output_fn(q, x), (p,), pullback(u))[1] / u.shape[-1]

    batched = vmap(ntk_one, in_dims=(0, 0, x_in_dim))
    return lambda u: batched(params, u, X)


def ntk_gram(
    output_fn: Callable[[Params, Tensor], Tensor],
    params: Sequence[Tensor],
    X: Tensor,
    x_in_dim: int | None = None,
) -> Tensor:
    """Exact empirical NTK Gram matrices Θ = J Jᵀ / n, ``(R, n, n)`` (small n only:
    materialises J, ``(n, P)`` per run)."""

    def gram_one(p: Params, x: Tensor) -> Tensor:
        jac = jacrev(output_fn)(p, x)
        J = torch.cat([j.reshape(j.shape[0], -1) for j in jac], dim=1)
        return J @ J.T / J.shape[0]

    return vmap(gram_one, in_dims=(0, x_in_dim))(_detach(params), X)


def preconditioned_operator(matvec: MatVec, p_diag: Tensor) -> MatVec:
    """``v ↦ P^{-1/2} A P^{-1/2} v`` per run, for a diagonal preconditioner P.

    Same eigenvalues as P⁻¹A but symmetric, so :func:`lanczos` applies; with A
    the Hessian its top eigenvalue is the *preconditioned sharpness* of Adam /
    RMSProp (Cohen et al. 2022, arXiv 2207.14484, v2 Eq. 2 for P).

    Args:
        matvec: symmetric ``(R, P) → (R, P)`` (e.g. the Hessian).
        p_diag: ``(R, P)`` positive diagonal of P per run (flat like the params).
    """
    d = p_diag.rsqrt()

    def mv(v: Tensor) -> Tensor:
        return d * matvec(d * v)

    return mv


class LanczosResult(NamedTuple):
    """Top-k Ritz pairs per run. NaN rows mark runs whose matvec was non-finite."""

    eigenvalues: Tensor  # (R, k), descending: the k largest algebraic eigenvalues
    eigenvectors: Tensor  # (R, k, P), unit Ritz vectors
    residuals: Tensor  # (R, k), ‖A v − λ v‖ computed with an explicit matvec
    converged: Tensor  # (R, k) bool, residual ≤ tol · max(|λ|, tiny)


def _randn(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None) -> Tensor:
    # Draw on the generator's own device so a CPU generator works for CUDA vectors.
    dev = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, dtype=like.dtype, device=dev).to(like.device)


def _orthogonalize(w: Tensor, Q: Tensor) -> Tensor:
    """w − Q Qᵀ w per run: one classical Gram–Schmidt pass; Q ``(R, j, P)``."""
    coef = torch.bmm(Q, w.unsqueeze(-1))  # (R, j, 1)
    return w - torch.bmm(Q.transpose(1, 2), coef).squeeze(-1)


def _tridiagonal(alpha: Tensor, beta: Tensor) -> Tensor:
    return torch.diag_embed(alpha) + torch.diag_embed(beta, 1) + torch.diag_embed(beta, -1)


def _tridiagonalize(
    matvec: MatVec,
    v0: Tensor,
    m: int,
    generator: torch.Generator | None,
    stop_tol: float | None = None,
    k: int = 1,
) -> tuple[Tensor, Tensor, Tensor]:
    """m Lanczos steps with full reorthogonalisation, all runs in lock-step.

    Returns the basis Q ``(R, m, P)``, the tridiagonal T ``(R, m, m)`` (zeroed
    for bad runs) and ``bad (R,)`` marking runs whose matvec gave non-finite values.
    """
    R, P = v0.shape
    tiny = torch.finfo(v0.dtype).tiny
    eps = torch.finfo(v0.dtype).eps
    norm0 = v0.norm(dim=1, keepdim=True)
    ok0 = torch.isfinite(v0).all(1, keepdim=True) & (norm0 > 0) & torch.isfinite(norm0)
    # draw a replacement only when one is needed (one host read per Lanczos call), so
    # the generator's stream does not depend on how the rows were batched
    v = v0 if bool(ok0.all()) else torch.where(ok0, v0, _randn((R, P), v0, generator))
    v = v / v.norm(dim=1, keepdim=True)
    Q = v0.new_zeros(R, m, P)
    alpha, beta = v0.new_zeros(R, m), v0.new_zeros(R, max(m - 1, 0))
    bad = torch.zeros(R, dtype=torch.bool, device=v0.device)
    anorm = v0.new_zeros(R)  # running max ‖A q_j‖: the scale of "numerically zero"
    for j in range(m):
        Q[:, j] = v
        w = matvec(v)
        alpha[:, j] = (w * v).sum(1)
        anorm = torch.maximum(anorm, w.norm(dim=1))
        bad |= ~torch.isfinite(alpha[:, j]) | ~torch.isfinite(anorm)
        if j == m - 1:
            break
        Qj = Q[:, : j + 1]
        # Three-term recurrence, then classical Gram–Schmidt against the whole
        # basis; a second pass only when the first removed a lot (DGKS /
        # "twice is enough", Parlett 1998). For large P the passes over the
        # (R, j, P) basis are memory-bound, so skipping the usual-case second
        # pass halves the cost; the check is one small host sync.
        w = w - alpha[:, j, None] * v
        if j > 0:
            w = w - beta[:, j - 1, None] * Q[:, j - 1]
        n0 = w.norm(dim=1)
        w1 = _orthogonalize(w, Qj)
        n1 = w1.norm(dim=1)
        if bool((n1 <= 0.717 * n0).any()):
            w2 = _orthogonalize(w1, Qj)
            n2 = w2.norm(dim=1)
        else:
            w2, n2, n1 = w1, n1, n0
        brk = (n2 <= 0.717 * n1) | (n2 <= eps * anorm)
        # One host sync per iteration (not per training step) saves drawing and
        # projecting a restart vector that is almost never needed.
        if bool(brk.any()):
            r = _orthogonalize(_orthogonalize(_randn((R, P), v0, generator), Qj), Qj)
            w = torch.where(brk[:, None], r, w2)
        else:
            w = w2
        beta[:, j] = torch.where(brk, 0.0, n2)
        v = w / w.norm(dim=1, keepdim=True).clamp_min(tiny)
        if stop_tol is not None and j >= k and j % 2 == 1:
            # Early stop: the Ritz residual of the top-k pairs is |β_j·s_{j,i}|
            # (Parlett 1998 §13.2); stop once every run has it below tol·|θ|/2.
            Tj = _tridiagonal(alpha[:, : j + 1], beta[:, :j])
            theta, S, broke = _linalg.eigh(torch.where(bad[:, None, None], 0.0, Tj), _EIGH)
            bad |= broke  # a run whose T does not diagonalise is done (NaN), not the batch
            est = beta[:, j, None].abs() * S[:, -1, -k:].abs()
            done = (est <= 0.5 * stop_tol * theta[:, -k:].abs()).all(1) | bad
            if bool(done.all()):
                m = j + 1
                Q, alpha, beta = Q[:, :m], alpha[:, :m], beta[:, : m - 1]
                break
    T = _tridiagonal(alpha, beta)
    # A NaN matrix could make batched eigh fail for everyone: zero it, mask later.
    T = torch.where(bad[:, None, None], 0.0, T)
    return Q, T, bad


@torch.no_grad()
def lanczos(
    matvec: MatVec,
    v0: Tensor,
    iters: int,
    k: int = 1,
    generator: torch.Generator | None = None,
    tol: float = 1e-3,
    early_stop: bool = False,
    residuals: bool = True,
) -> LanczosResult:
    """The k largest *algebraic* eigenvalues of symmetric operators, batched over runs.

    Lanczos (1950) with full reorthogonalisation; SPEC §3 `sharpness`. Unlike
    power iteration it returns the top of the spectrum even when a negative
    eigenvalue is larger in magnitude. Breakdown in one run (Krylov space
    exhausted, e.g. iters ≥ rank) restarts that run only; runs whose matvec is
    non-finite (diverged) get NaN results without touching the others.

    Args:
        matvec: ``(R, P) -> (R, P)`` symmetric operator per run.
        v0: ``(R, P)`` start vectors (warm start); zero or non-finite rows are
            replaced by random ones.
        iters: Lanczos steps (capped at P; exact when ≥ P).
        k: number of top eigenpairs, ``k ≤ min(iters, P)``.
        generator: RNG for random start/restart vectors (one on v0's device
            avoids a host-to-device copy per step).
        tol: relative residual threshold for ``converged``.
        early_stop: treat ``iters`` as a maximum and stop once every run's top-k
            Ritz residual estimate is below ``tol/2·|θ|`` (one small host sync
            every second iteration). Warm-started from the previous eval step
            this usually needs a handful of iterations.
        residuals: compute the explicit residuals (one more matvec per Ritz vector);
            False leaves ``residuals`` NaN and ``converged`` False, for callers that
            use only the pairs (the central flows, which solve several times a step).

    Returns:
        :class:`LanczosResult` with ``eigenvalues (R, k)`` (descending),
        ``eigenvectors (R, k, P)``, ``residuals (R, k)``, ``converged (R, k)``.
    """
    P = v0.shape[1]
    m = min(iters, P)
    if not 1 <= k <= m:
        raise ValueError(f"need 1 <= k <= min(iters, P) = {m}, got k={k}")
    Q, T, bad = _tridiagonalize(matvec, v0, m, generator, tol if early_stop else None, k)
    theta, S, broke = _linalg.eigh(T, _EIGH)  # ascending; NaN for runs it fails on
    bad = bad | broke
    _linalg.note_failure(_NONFINITE, bad)
    theta, S = theta[:, -k:].flip(-1), S[:, :, -k:].flip(-1)
    vecs = torch.einsum("rmk,rmp->rkp", S, Q)
    vecs = vecs / vecs.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(v0.dtype).tiny)
    # Explicit residuals: one extra batched matvec per Ritz vector (k is small).
    if residuals:
        res = torch.stack(
            [(matvec(vecs[:, i]) - theta[:, i, None] * vecs[:, i]).norm(dim=1) for i in range(k)],
            1,
        )
    else:
        res = torch.full_like(theta, float("nan"))
    nan = torch.tensor(float("nan"), dtype=v0.dtype, device=v0.device)
    theta = torch.where(bad[:, None], nan, theta)
    vecs = torch.where(bad[:, None, None], nan, vecs)
    res = torch.where(bad[:, None], nan, res)
    scale = theta.abs().clamp_min(torch.finfo(v0.dtype).tiny)
    return LanczosResult(theta, vecs, res, res <= tol * scale)


def _rademacher(R: int, P: int, dtype, device, generator) -> Tensor:
    dev = generator.device if generator is not None else device
    z = torch.randint(0, 2, (R, P), generator=generator, device=dev)
    return (2 * z - 1).to(dtype=dtype, device=device)


#: bytes of P-sized vectors a block of probes may add (probes × runs × (Lanczos basis + 4))
PROBE_BLOCK_BYTES = 1 << 27


def _probe_block(
    probes: int, R: int, P: int, vectors: int, dtype: torch.dtype, matvec_elems: int = 0
) -> int:
    """How many probes go through the operator at once: all of them for small
    problems (one vmapped matvec instead of a Python loop per probe), one when
    a probe's ``vectors`` P-sized vectors per run (and the ``matvec_elems``
    elements one run's matvec holds, e.g. its activations) fill the budget."""
    each = R * (P * (vectors + 4) + matvec_elems) * torch.finfo(dtype).bits // 8
    return max(1, min(probes, PROBE_BLOCK_BYTES // max(each, 1)))


def _probes(k: int, R: int, P: int, dtype, device, generator) -> Tensor:
    """``k`` Rademacher probes ``(k, R, P)``: the same draws, in the same order, as
    ``k`` calls of :func:`_rademacher`."""
    return torch.stack([_rademacher(R, P, dtype, device, generator) for _ in range(k)])


def _apply_to_block(matvec: MatVec, Z: Tensor) -> Tensor:
    """``matvec`` on each ``(R, P)`` slice of ``Z (k, R, P)``: vmapped over the
    probes, or one slice at a time for an operator vmap cannot trace."""
    if Z.shape[0] == 1:
        return matvec(Z[0]).unsqueeze(0)
    try:
        return vmap(matvec)(Z)
    except RuntimeError:  # e.g. a host read inside a user's matvec
        return torch.stack([matvec(z) for z in Z])


@torch.no_grad()
def hutchinson_trace(
    matvec: MatVec,
    R: int,
    P: int,
    probes: int = 100,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
    matvec_elems: int = 0,
) -> Tensor:
    """Hutchinson (1989) trace estimate mean_z zᵀ A z with Rademacher z, ``(R,)``.

    Unbiased; variance per probe 2(‖A‖²_F − Σ A_ii²), so exact for diagonal A.

    Args:
        matvec: ``(R, P) -> (R, P)`` operator per run (e.g. :func:`hessian_operator`).
        R, P: number of runs and vector length.
        probes: number of Rademacher probes (batched over runs, and over probes in
            blocks of one vmapped matvec).
        dtype, device: of the probes; ``generator`` may live on another device.
        matvec_elems: elements one run's matvec holds besides its vectors (its
            activations); with the probes' vectors it sizes the blocks of probes
            that go through one vmapped matvec (:data:`PROBE_BLOCK_BYTES`).

    Returns:
        ``(R,)`` trace estimates (non-finite for runs whose matvec is).
    """
    acc = torch.zeros(R, dtype=dtype, device=device)
    K = _probe_block(probes, R, P, 1, dtype, matvec_elems)
    for start in range(0, probes, K):  # a block of probes per (vmapped) matvec
        Z = _probes(min(K, probes - start), R, P, dtype, device, generator)
        acc += (Z * _apply_to_block(matvec, Z)).sum(-1).sum(0)
    return acc / probes


@torch.no_grad()
def spectral_density(
    matvec: MatVec,
    R: int,
    P: int,
    probes: int = 10,
    iters: int = 50,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
    matvec_elems: int = 0,
) -> tuple[Tensor, Tensor]:
    """Stochastic Lanczos quadrature of the spectral density, batched over runs.

    Ubaru, Chen & Saad 2017; Ghorbani, Krishnan & Xiao 2019. For each Rademacher
    probe, the Ritz values of an ``iters``-step Lanczos run are the nodes and the
    squared first components of T's eigenvectors, divided by ``probes``, the
    weights: ∫ g dμ ≈ Σ wᵢ g(θᵢ) approximates tr g(A) / P.

    Args:
        matvec: ``(R, P) -> (R, P)`` symmetric operator per run.
        R, P: number of runs and vector length.
        probes, iters: Rademacher probes and Lanczos steps per probe.
        dtype, device, generator, matvec_elems: as in :func:`hutchinson_trace`.

    Returns:
        ``nodes, weights``, each ``(R, probes * min(iters, P))``; weights sum to 1
        per run. Runs with a non-finite matvec get NaN in both.
    """
    m = min(iters, P)
    nodes, weights = [], []
    K = _probe_block(probes, R, P, m, dtype, matvec_elems)
    for start in range(0, probes, K):
        # a block of k probes runs as k·R lock-step Lanczos rows (probe-major),
        # its matvec vmapped over the probes
        k = min(K, probes - start)
        Z = _probes(k, R, P, dtype, device, generator)

        def block_mv(V: Tensor, k: int = k) -> Tensor:
            return _apply_to_block(matvec, V.view(k, R, P)).reshape(k * R, P)

        _, T, bad = _tridiagonalize(block_mv, Z.reshape(k * R, P), m, generator)
        # runs first, so that failures are recorded per run: (R, k, m, m)
        T = T.view(k, R, m, m).transpose(0, 1)
        theta, S, broke = _linalg.eigh(T, _EIGH)
        bad = bad.view(k, R).T | broke  # (R, k)
        _linalg.note_failure(_NONFINITE, bad)
        nodes.append(torch.where(bad[..., None], float("nan"), theta).reshape(R, k * m))
        w = S[..., 0, :] ** 2 / probes
        weights.append(torch.where(bad[..., None], float("nan"), w).reshape(R, k * m))
    return torch.cat(nodes, 1), torch.cat(weights, 1)
