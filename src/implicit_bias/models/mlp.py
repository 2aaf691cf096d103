"""Hand-written batched forward, backward and Hessian-vector products of the MLP family.

:func:`implicit_bias.models.spec.forward` is the model for one run; ``vmap`` of
``grad`` of it is the reference. Here the same computation is written once
for R runs with batched matmuls (tests check both against ``torch.func`` per
run in float64): a training step is a handful of kernels with no autograd
graph, and the Hessian-vector product is forward-over-reverse by hand — the
R-operator of Pearlmutter (1994) applied to the backward pass — with the
primal pass cached once per eval step.

Layer scales c_l (``ntk``) are folded into the weights of the hidden-to-hidden
and output layers, and applied to the first layer's output z₁ = c₁ X W₁ᵀ
instead of its weights (W₁ is the large matrix when d > n); c = 1
(``direct``, ``standard``) costs nothing.

Linear networks (``activation: linear``, and every depth-1 model) take the
*chain* path: f(x) = ⟨v, x⟩ with v = w_L W_{L−1} ⋯ W_1, so the forward pass,
the gradient (each ∇W_l is the outer product of a row vector from above and a
column vector from below) and the R-operator are vector–matrix products,
O(L·width² + n·d) per run instead of the O(n·L·width²) of propagating the n
activations — the matrix-chain order, same mathematics, same tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..losses import LossName, loss_grad, loss_hess, mean_loss
from .spec import ModelSpec, Params, activate, activation_grad, activation_grad2


def _mT(t: Tensor) -> Tensor:
    return t.transpose(-1, -2)


def _in_proj(h: Tensor, W: Tensor) -> Tensor:
    """h Wᵀ per run: ``(R, n, o)``. With h shared ``(n, i)`` by all runs and wider
    than it is tall (d > n, as in Frei et al.), one GEMM against the stacked
    weights beats R small ones; otherwise a broadcast batched matmul is faster
    and leaves z contiguous (measured on a 2-core AVX-512 CPU)."""
    if h.dim() == 2 and W.dim() == 3 and h.shape[1] > h.shape[0]:
        R, o, i = W.shape
        return (h @ W.reshape(R * o, i).T).reshape(h.shape[0], R, o).transpose(0, 1)
    return h @ _mT(W)


def _outer_sum(D: Tensor, h: Tensor) -> Tensor:
    """Dᵀ h per run: ``(R, o, i)`` from D ``(R, n, o)`` and h ``(n, i)`` or ``(R, n, i)``.
    (A broadcast matmul: as fast as one GEMM on the stacked Dᵀ, without copying it.)"""
    return _mT(D) @ h


@dataclass
class _Pass:
    """Intermediates of one forward/backward pass, reused by the HVP."""

    ws: list[Tensor]  # c_l W_l (the fixed last layer included); ws[0] unscaled (see _scale)
    hs: list[Tensor]  # layer inputs h_0 = X, …, h_{L-1}
    zs: list[Tensor]  # pre-activations of the hidden layers
    f: Tensor  # (R, n)


@dataclass
class _Backward:
    """Backprop signals of one pass (:func:`_backward`), shared by the gradient, the
    fused update and the HVP."""

    delta: Tensor  # ∂loss/∂f, (R, n, 1)
    backs: list[Tensor]  # ∂loss/∂h_l of each hidden layer's output
    dzs: list[Tensor]  # ∂loss/∂z_l of each hidden layer
    d1s: list[Tensor | None]  # φ'(z_l) (None for the identity)

    def signals(self, pas: _Pass, spec: ModelSpec) -> list[tuple[Tensor, Tensor, float]]:
        """(D, h, c) per trained layer, in ``params`` order: ∇W_l = c·Dᵀh."""
        c = spec.multipliers()
        out = [(self.dzs[layer], pas.hs[layer], c[layer]) for layer in range(spec.depth - 1)]
        if spec.last_layer == "trained":
            out.append((self.delta, pas.hs[-1], c[-1]))
        return out


def _dloss_df(f: Tensor, y: Tensor, loss_kind: LossName) -> Tensor:
    """∂(mean loss)/∂f = ℓ'(f)/n, ``(R, n)``."""
    return loss_grad(f, y, loss_kind) / f.shape[-1]


def _backward(
    pas: _Pass, y: Tensor, spec: ModelSpec, loss_kind: LossName, delta: Tensor | None = None
) -> _Backward:
    """Backprop from ∂loss/∂f ``delta`` ``(R, n, 1)`` (computed from ``pas.f`` if not given)."""
    if delta is None:
        delta = _dloss_df(pas.f, y, loss_kind).unsqueeze(-1)  # (R, n, 1)
    n_hidden = spec.depth - 1
    d1s = [activation_grad(z, spec) for z in pas.zs]
    backs: list[Tensor] = [delta] * n_hidden
    dzs: list[Tensor] = [delta] * n_hidden
    back = delta @ pas.ws[-1]  # ∂loss/∂h_{L-1}
    for layer in reversed(range(n_hidden)):
        d1 = d1s[layer]
        backs[layer] = back
        dzs[layer] = back if d1 is None else back * d1
        if layer > 0:
            back = dzs[layer] @ pas.ws[layer]
    return _Backward(delta, backs, dzs, d1s)


def _scale(ts: Params, spec: ModelSpec) -> list[Tensor]:
    """c_l T_l for the layers whose scale is folded into the weights (all but the
    first hidden layer, whose c₁ multiplies z₁ instead); no copy where c_l = 1."""
    c = spec.multipliers()
    return [t if c[i] == 1 or (i == 0 and spec.depth > 1) else t * c[i] for i, t in enumerate(ts)]


def _times(t: Tensor, c: float) -> Tensor:
    """c·t without a copy when c = 1 (a full pass over a large gradient otherwise)."""
    return t if c == 1 else t * c


def _first_proj(X: Tensor, W: Tensor, spec: ModelSpec) -> Tensor:
    """z₁ = c₁ X W₁ᵀ (or its tangent with W₁ → V₁)."""
    z = _in_proj(X, W)
    c0 = spec.multipliers()[0]
    return z if c0 == 1 else z * c0


def _forward(params: Params, X: Tensor, spec: ModelSpec, a: Tensor | None) -> _Pass:
    ws = _scale(params, spec)
    if spec.last_layer == "fixed_sign":
        assert a is not None
        ws.append(a)
    hs, zs = [X], []
    h = X
    for layer in range(spec.depth - 1):
        z = _first_proj(h, ws[0], spec) if layer == 0 else _in_proj(h, ws[layer])
        zs.append(z)
        h = activate(z, spec)
        hs.append(h)
    f = _in_proj(h, ws[-1]).squeeze(-1)
    return _Pass(ws, hs, zs, f)


# ------------------------------------------------------------------ linear chain
def _use_chain(spec: ModelSpec) -> bool:
    """Linear networks are evaluated in matrix-chain order (see the module docstring)."""
    return spec.activation == "linear" or spec.depth == 1


@dataclass
class _ChainPass:
    """Forward pass of a linear network: f = X vᵀ, v = tops[0] W_1.

    ``tops[k]`` ``(R, 1, out_k)`` is the row vector that multiplies layer k's
    output on the way to f: tops[L−1] = 1, tops[k] = tops[k+1] (c W_{k+1}).
    """

    ws: list[Tensor]  # scaled weights c_l W_l (the fixed last layer included)
    tops: list[Tensor]
    v: Tensor  # (R, d), the end-to-end linear predictor
    X: Tensor  # (n, d) shared or (R, n, d)
    f: Tensor  # (R, n)


def _xv(X: Tensor, v: Tensor) -> Tensor:
    """⟨v_r, x_i⟩: ``(R, n)`` from v ``(R, d)``, X ``(n, d)`` or ``(R, n, d)``."""
    return v @ X.T if X.dim() == 2 else (X @ v.unsqueeze(-1)).squeeze(-1)


def _xt(X: Tensor, u: Tensor) -> Tensor:
    """Xᵀu per run: ``(R, d)`` from u ``(R, n)``."""
    return u @ X if X.dim() == 2 else (u.unsqueeze(1) @ X).squeeze(1)


def _chain_forward(params: Params, X: Tensor, spec: ModelSpec, a: Tensor | None) -> _ChainPass:
    c = spec.multipliers()
    ws = [_times(p, c[i]) for i, p in enumerate(params)]
    if spec.last_layer == "fixed_sign":
        assert a is not None
        ws.append(a.expand(params[0].shape[0], *a.shape))
    L = len(ws)
    tops: list[Tensor] = [ws[0]] * L
    tops[L - 1] = ws[0].new_ones(ws[0].shape[0], 1, 1)
    for k in reversed(range(L - 1)):
        tops[k] = tops[k + 1] @ ws[k + 1]
    v = (tops[0] @ ws[0]).squeeze(1)
    return _ChainPass(ws, tops, v, X, _xv(X, v))


def _chain_lower(pas: _ChainPass, g: Tensor) -> list[Tensor]:
    """b_0 = g, b_{k+1} = (c W_k) b_k: ``(R, in_k)`` each, ∇(c W_k) = tops[k]ᵀ b_kᵀ."""
    bs = [g]
    for W in pas.ws[:-1]:
        bs.append((W @ bs[-1].unsqueeze(-1)).squeeze(-1))
    return bs


def _chain_grads(pas: _ChainPass, delta: Tensor, spec: ModelSpec) -> list[tuple[Tensor, Tensor]]:
    """(column, row) per trained layer with ∇W_k = c_k · column @ row, from ∂loss/∂f ``(R, n)``."""
    bs = _chain_lower(pas, _xt(pas.X, delta))
    return [(_mT(pas.tops[k]), bs[k].unsqueeze(1)) for k in range(len(spec.trained_shapes))]


def _chain_hvp(
    pas: _ChainPass, y: Tensor, spec: ModelSpec, loss_kind: LossName, second_order: bool
) -> Callable[[Params], Params]:
    """R-operator of the chain: R{tops}, R{v}, R{f}, R{δ}, then R{b_k} upwards."""
    c = spec.multipliers()
    ws, tops, X, f = pas.ws, pas.tops, pas.X, pas.f
    L, nt = len(ws), len(spec.trained_shapes)
    n = f.shape[-1]
    ell2 = loss_hess(f, y, loss_kind) / n
    bs = _chain_lower(pas, _xt(X, _dloss_df(f, y, loss_kind))) if second_order else []

    def hvp(V: Params) -> Params:
        vs = [V[k] * c[k] for k in range(nt)]
        Rtops: list[Tensor | None] = [None] * L
        for k in reversed(range(L - 1)):
            term = tops[k + 1] @ vs[k + 1] if k + 1 < nt else None
            prev = Rtops[k + 1]
            if prev is not None:
                upper = prev @ ws[k + 1]
                term = upper if term is None else term + upper
            Rtops[k] = term
        Rv = tops[0] @ vs[0]
        if Rtops[0] is not None:
            Rv = Rv + Rtops[0] @ ws[0]
        Rdelta = ell2 * _xv(X, Rv.squeeze(1))
        Rb = _xt(X, Rdelta)
        out: list[Tensor] = []
        for k in range(nt):
            g = _mT(tops[k]) @ Rb.unsqueeze(1)
            Rk = Rtops[k]
            if second_order and Rk is not None:
                g = g + _mT(Rk) @ bs[k].unsqueeze(1)
            out.append(g * c[k])
            if k + 1 < nt:
                Rb = (ws[k] @ Rb.unsqueeze(-1)).squeeze(-1)
                if second_order:
                    Rb = Rb + (vs[k] @ bs[k].unsqueeze(-1)).squeeze(-1)
        return tuple(out)

    return hvp


def value_and_grad(
    params: Params, X: Tensor, y: Tensor, spec: ModelSpec, a: Tensor | None, loss_kind: LossName
) -> tuple[Tensor, Tensor, Params]:
    """Loss, outputs and gradients of R runs at once.

    Args:
        params: batched trained weights, ``(R, out, in)`` each.
        X: inputs ``(n, d)`` shared by all runs or ``(R, n, d)`` per run.
        y: labels ±1, ``(n,)`` or ``(R, n)``.

    Returns:
        loss ``(R,)``, f ``(R, n)``, grads (same shapes as ``params``).
    """
    loss, f, pas = forward_loss(params, X, y, spec, a, loss_kind)
    return loss, f, gradients(pas, y, spec, loss_kind)


def gradients(pas: _Pass | _ChainPass, y: Tensor, spec: ModelSpec, loss_kind: LossName) -> Params:
    """The gradients of R runs from a forward pass (:func:`forward_loss`), not applied
    (the update rules of :mod:`implicit_bias.optimizers` take them)."""
    if isinstance(pas, _ChainPass):
        delta = _dloss_df(pas.f, y, loss_kind)
        c = spec.multipliers()
        return tuple(
            col @ row * c[k] for k, (col, row) in enumerate(_chain_grads(pas, delta, spec))
        )
    bwd = _backward(pas, y, spec, loss_kind)
    return tuple(_times(_outer_sum(D, h), cl) for D, h, cl in bwd.signals(pas, spec))


def forward_loss(
    params: Params, X: Tensor, y: Tensor, spec: ModelSpec, a: Tensor | None, loss_kind: LossName
) -> tuple[Tensor, Tensor, _Pass | _ChainPass]:
    """The forward half of a training step: loss ``(R,)``, f ``(R, n)`` and the pass
    that :func:`descend` completes."""
    pas = _chain_forward(params, X, spec, a) if _use_chain(spec) else _forward(params, X, spec, a)
    return mean_loss(pas.f, y, loss_kind), pas.f, pas


def descend(
    pas: _Pass | _ChainPass,
    params: Params,
    y: Tensor,
    spec: ModelSpec,
    loss_kind: LossName,
    scale: Tensor,
) -> Tensor:
    """Backward pass fused with the update θ ← θ + scale·∇loss, in place.

    For shared inputs wider than the batch (d > n, as in Frei et al.) the
    first layer's gradient c·dzᵀX is accumulated straight into W with one
    ``addmm_``, the per-run rate folded into the small dz, so the update costs
    no extra pass over those (dominant) weights; other layers use ``addcmul_``. Runs whose backprop signal is not finite,
    or whose ``scale`` is 0, are left untouched.

    Args:
        scale: ``(R,)``, typically −η_t (0 for stopped runs).

    Returns:
        ``(R,)`` bool: the run's gradient was finite (else it was not updated).
    """
    if isinstance(pas, _ChainPass):
        return _chain_descend(pas, params, y, spec, loss_kind, scale)
    delta, finite, s = _guard(_dloss_df(pas.f, y, loss_kind), scale)
    bwd = _backward(pas, y, spec, loss_kind, delta=delta.unsqueeze(-1))
    # Every signal is formed before the first in-place update below (pas.ws may
    # alias the weights themselves where c = 1).
    for W, (D, h, cl) in zip(params, bwd.signals(pas, spec), strict=True):
        R, n, o = D.shape
        k = (s * cl).view(-1, 1, 1)
        if h.dim() == 2 and n < h.shape[1]:
            # shared wide inputs (d ≫ n): fold the rate into the small D and
            # accumulate with one GEMM, no extra pass over W
            W.view(R * o, -1).addmm_(_mT(D * k).reshape(R * o, n), h)
        else:
            W.addcmul_(_outer_sum(D, h), k)
    return finite


def _guard(delta: Tensor, scale: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Which runs may step, decided on the device (no host read, no sync).

    Returns ``delta`` (∂loss/∂f ``(R, n)``) with the rows of runs that may not
    step zeroed, so that no NaN of a stopped run reaches the weights (masking
    the ``(R, n)`` signal before backprop, not each ``(R, n, width)`` layer
    signal after it); ``finite (R,)``: ∂loss/∂f and the rate are finite; and
    the rate, zeroed elsewhere. Where every run is finite the masked delta is
    ``delta`` bit for bit."""
    finite = torch.isfinite(delta).all(dim=1) & torch.isfinite(scale)
    s = torch.where(finite, scale, 0.0)
    return torch.where(finite[:, None], delta, 0.0), finite, s


def _chain_descend(
    pas: _ChainPass, params: Params, y: Tensor, spec: ModelSpec, loss_kind: LossName, scale: Tensor
) -> Tensor:
    """:func:`descend` for linear nets: each update is a rank-one ``baddbmm_``."""
    delta, finite, s = _guard(_dloss_df(pas.f, y, loss_kind), scale)
    c = spec.multipliers()
    for k, (W, (col, row)) in enumerate(zip(params, _chain_grads(pas, delta, spec), strict=True)):
        W.baddbmm_(col * (s * c[k]).view(-1, 1, 1), row)
    return finite


def hvp_operator(
    params: Params,
    X: Tensor,
    y: Tensor,
    spec: ModelSpec,
    a: Tensor | None,
    loss_kind: LossName,
    gauss_newton: bool = False,
) -> Callable[[Params], Params]:
    """``V ↦ H V`` for the mean training loss of R runs (H the Hessian per run).

    H = Jᵀ diag(ℓ'')J/n + Σ_i (ℓ'_i/n) ∇²f_i. Every term of the second part
    carries the primal ∂loss/∂f (``delta``); ``gauss_newton=True`` drops them
    and gives the Gauss–Newton product Jᵀ diag(ℓ'')J V / n (Schraudolph 2002).

    Returns:
        A function from directions shaped like ``params`` to H·V of the same shapes.
    """
    second_order = not gauss_newton
    params = tuple(p.detach() for p in params)
    if _use_chain(spec):
        return _chain_hvp(_chain_forward(params, X, spec, a), y, spec, loss_kind, second_order)
    # the primal pass, once: forward and backprop signals (no weight gradients needed)
    pas = _forward(params, X, spec, a)
    bwd = _backward(pas, y, spec, loss_kind)
    c = spec.multipliers()
    hs, zs, ws, f = pas.hs, pas.zs, pas.ws, pas.f
    delta, backs, dzs, d1 = bwd.delta, bwd.backs, bwd.dzs, bwd.d1s
    n_hidden = spec.depth - 1
    trained_last = spec.last_layer == "trained"
    d2 = [activation_grad2(z, spec) for z in zs]
    ell2 = (loss_hess(f, y, loss_kind) / f.shape[-1]).unsqueeze(-1)  # ℓ''(f)/n, (R, n, 1)

    def hvp(V: Params) -> Params:
        vs = _scale(V, spec)  # scaled directions (vs[0] unscaled, like ws[0])
        # tangent forward: R{z_l}, R{h_l}
        Rzs: list[Tensor] = []
        Rhs: list[Tensor | None] = [None]
        Rh: Tensor | None = None
        for layer in range(n_hidden):
            Rz = _first_proj(hs[0], vs[0], spec) if layer == 0 else _in_proj(hs[layer], vs[layer])
            if Rh is not None:
                Rz = Rz + Rh @ _mT(ws[layer])
            Rzs.append(Rz)
            d1l = d1[layer]
            Rh = Rz if d1l is None else d1l * Rz
            Rhs.append(Rh)
        h = hs[-1]
        Rf = Rh @ _mT(ws[-1]) if Rh is not None else None
        if trained_last:
            Rf_w = _in_proj(h, vs[-1])
            Rf = Rf_w if Rf is None else Rf + Rf_w
        assert Rf is not None
        Rdelta = ell2 * Rf  # (R, n, 1)
        out: list[Tensor] = []
        if trained_last:
            g = _outer_sum(Rdelta, h)
            if Rh is not None and second_order:
                g = g + _mT(delta) @ Rh
            out.append(_times(g, c[-1]))
        Rback = Rdelta @ ws[-1]
        if trained_last and n_hidden and second_order:
            Rback = Rback + delta @ vs[-1]
        for layer in reversed(range(n_hidden)):
            d1l, d2l = d1[layer], d2[layer]
            Rdz = Rback if d1l is None else Rback * d1l
            if d2l is not None and second_order:
                Rdz = Rdz + backs[layer] * d2l * Rzs[layer]
            g = _outer_sum(Rdz, hs[layer])
            Rh_in = Rhs[layer]
            if Rh_in is not None and second_order:
                g = g + _mT(dzs[layer]) @ Rh_in
            out.append(_times(g, c[layer]))
            if layer > 0:
                Rback = Rdz @ ws[layer]
                if second_order:
                    Rback = Rback + dzs[layer] @ vs[layer]
        out.reverse()
        return tuple(out)

    return hvp


def jacobian_gram(
    params: Params, X: Tensor, spec: ModelSpec, a: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """Gram matrix of per-sample gradients without forming them.

    With J the ``(n, P)`` Jacobian of f over the trained weights, the Gram is
    J Jᵀ = Σ_l c_l² (B_l B_lᵀ) ⊙ (H_{l−1} H_{l−1}ᵀ), B_l = ∂f(x_i)/∂z_l per sample
    and H_{l−1} the layer inputs — the layer-wise factorisation of the empirical
    NTK (Novak et al. 2022, "Fast finite width NTK"), cost O(n² · width) per
    layer instead of O(n · P) memory.

    Returns:
        ``K (R, n, n)`` = J Jᵀ, ``dots (R, n)`` = J θ (= ⟨∇f(x_i), θ⟩) and
        ``f (R, n)``.
    """
    pas = _forward(params, X, spec, a)
    c = spec.multipliers()
    R = params[0].shape[0]
    n = X.shape[-2]
    n_hidden = spec.depth - 1
    h = pas.hs[-1]
    K = X.new_zeros(R, n, n)
    dots = X.new_zeros(R, n)
    if spec.last_layer == "trained":
        K = K + (c[-1] ** 2) * (h @ _mT(h))
        dots = dots + pas.f
    back = X.new_ones(R, n, 1) @ pas.ws[-1]  # ∂f/∂h_{L-1}
    for layer in reversed(range(n_hidden)):
        d1 = activation_grad(pas.zs[layer], spec)
        B = back if d1 is None else back * d1
        H = pas.hs[layer]
        K = K + (c[layer] ** 2) * (B @ _mT(B)) * (H @ _mT(H))
        dots = dots + (B * pas.zs[layer]).sum(-1)
        if layer > 0:
            back = B @ pas.ws[layer]
    return K, dots, pas.f
