"""Optimizers as pure update rules, batched over runs (SPEC §2.1, optax-style).

Each rule is an ``init(params) -> state`` / ``update(grads, state, lr, hp) ->
(updates, state)`` pair. Everything carries a leading run dimension R: the
weights ``(R, out, in)``, the state (velocity, moments, step count) and the
hyperparameters (:class:`Hyper`, tensors of shape ``(R,)``), so a sweep over β
or ε is one batched computation. The engine adds ``updates`` to the weights.

Conventions are PyTorch's (``torch.optim``), so results compare with published
code (Cohen et al. 2021/2022 use them):

- ``gd``: w ← w − η g.
- ``momentum`` (``SGD(momentum=β)``, dampening 0): v ← βv + g, w ← w − ηv.
- ``nesterov`` (``SGD(momentum=β, nesterov=True)``): v ← βv + g,
  w ← w − η(g + βv).
- ``rmsprop`` (``RMSprop(alpha=β₂, eps=ε)``, not centred, no momentum):
  s ← β₂s + (1−β₂)g², w ← w − η g/(√s + ε). The config key ``beta2`` is
  PyTorch's ``alpha``.
- ``adam`` (``Adam(betas=(β₁, β₂), eps=ε)``): m ← β₁m + (1−β₁)g,
  s ← β₂s + (1−β₂)g², w ← w − η/(1−β₁ᵗ) · m/(√s/√(1−β₂ᵗ) + ε); with
  ``bias_correction`` off both corrections are 1.

Each rule names the numerator c of its stability threshold c/η on a quadratic
(:func:`threshold_numerator`): the largest eigenvalue of the relevant curvature
— the Hessian H, or for adaptive rules the preconditioned Hessian P⁻¹H with P
frozen — times η must stay below c.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

Params = tuple[Tensor, ...]

NAMES = ("gd", "momentum", "nesterov", "rmsprop", "adam")
#: rules whose relevant curvature is the preconditioned sharpness λ₁(P⁻¹H)
ADAPTIVE = ("rmsprop", "adam")
#: defaults when a key is left unset (PyTorch's, except β 0.9 for the momentum
#: rules, whose PyTorch default of 0 would make them plain GD)
DEFAULTS = {"momentum": 0.9, "beta1": 0.9, "beta2": {"adam": 0.999, "rmsprop": 0.99}, "eps": 1e-8}


class Hyper(NamedTuple):
    """Per-run hyperparameters, each ``(R,)`` (unused ones are ignored by a rule)."""

    momentum: Tensor  # β of momentum / nesterov
    beta1: Tensor  # Adam's first-moment decay
    beta2: Tensor  # second-moment decay (Adam's β₂, RMSProp's alpha)
    eps: Tensor
    bias_correction: Tensor  # bool: Adam's bias corrections on


class State(NamedTuple):
    """Optimizer state, batched over runs.

    Attributes:
        t: ``(R,)`` updates taken so far (t of Adam's bias correction).
        mu: first buffer per parameter (velocity v or Adam's m), or ``None``.
        nu: second-moment buffer s per parameter, or ``None``.
    """

    t: Tensor
    mu: Params | None
    nu: Params | None


def _b(x: Tensor, like: Tensor) -> Tensor:
    """``(R,)`` → broadcastable against ``like`` ``(R, ...)``, in its dtype."""
    return x.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


def hyper(
    R: int,
    momentum: Sequence[float] | float = 0.9,
    beta1: Sequence[float] | float = 0.9,
    beta2: Sequence[float] | float = 0.999,
    eps: Sequence[float] | float = 1e-8,
    bias_correction: Sequence[bool] | bool = True,
    device: torch.device | str = "cpu",
) -> Hyper:
    """:class:`Hyper` from scalars (shared by all runs) or per-run sequences (float64)."""

    def col(v, dtype=torch.float64) -> Tensor:
        t = torch.as_tensor(v, dtype=dtype, device=device)
        return t.expand(R).clone() if t.dim() == 0 else t

    return Hyper(col(momentum), col(beta1), col(beta2), col(eps), col(bias_correction, torch.bool))


# ------------------------------------------------------------------- the rules
def _zeros(params: Params) -> Params:
    return tuple(torch.zeros_like(p) for p in params)


@dataclass(frozen=True)
class Rule:
    """One optimizer: its state layout, update and stability threshold numerator."""

    name: str
    has_mu: bool
    has_nu: bool
    step: Callable[[Params, State, Tensor, Hyper], tuple[Params, State]]
    numerator: Callable[[Hyper], Tensor]

    def init(self, params: Params) -> State:
        """State before the first update: zero buffers, count 0."""
        count = torch.zeros(params[0].shape[0], dtype=torch.float64, device=params[0].device)
        return State(
            count, _zeros(params) if self.has_mu else None, _zeros(params) if self.has_nu else None
        )

    def update(self, grads: Params, state: State, lr: Tensor, hp: Hyper) -> tuple[Params, State]:
        """The additive updates ``(R, ...)`` per parameter and the new state.

        Args:
            grads: ∇L per run, shaped like the params.
            state: from :meth:`init` or the previous update.
            lr: η_t per run ``(R,)``.
            hp: per-run hyperparameters.
        """
        return self.step(grads, state, lr, hp)


def _gd(g: Params, st: State, lr: Tensor, hp: Hyper) -> tuple[Params, State]:
    return tuple(-_b(lr, x) * x for x in g), st._replace(t=st.t + 1)


def _velocity(g: Params, st: State, hp: Hyper) -> Params:
    # PyTorch starts the buffer at g (a clone); β·0 + g is the same number
    assert st.mu is not None
    return tuple(_b(hp.momentum, v) * v + x for v, x in zip(st.mu, g, strict=True))


def _heavy_ball(g: Params, st: State, lr: Tensor, hp: Hyper) -> tuple[Params, State]:
    mu = _velocity(g, st, hp)
    return tuple(-_b(lr, v) * v for v in mu), State(st.t + 1, mu, None)


def _nesterov(g: Params, st: State, lr: Tensor, hp: Hyper) -> tuple[Params, State]:
    mu = _velocity(g, st, hp)
    upd = tuple(-_b(lr, v) * (x + _b(hp.momentum, v) * v) for v, x in zip(mu, g, strict=True))
    return upd, State(st.t + 1, mu, None)


def _second_moment(g: Params, st: State, hp: Hyper) -> Params:
    assert st.nu is not None
    return tuple(
        _b(hp.beta2, s) * s + _b(1 - hp.beta2, s) * x * x for s, x in zip(st.nu, g, strict=True)
    )


def _rmsprop(g: Params, st: State, lr: Tensor, hp: Hyper) -> tuple[Params, State]:
    nu = _second_moment(g, st, hp)
    st = State(st.t + 1, None, nu)
    P = preconditioner("rmsprop", st, hp)
    assert P is not None
    return tuple(-_b(lr, x) * x / p for x, p in zip(g, P, strict=True)), st


def _adam(g: Params, st: State, lr: Tensor, hp: Hyper) -> tuple[Params, State]:
    assert st.mu is not None
    mu = tuple(_b(hp.beta1, m) * m + _b(1 - hp.beta1, m) * x for m, x in zip(st.mu, g, strict=True))
    st = State(st.t + 1, mu, _second_moment(g, st, hp))
    P = preconditioner("adam", st, hp)
    assert P is not None
    return tuple(-_b(lr, m) * m / p for m, p in zip(mu, P, strict=True)), st


def _momentum_numerator(hp: Hyper) -> Tensor:
    return 2 + 2 * hp.momentum


RULES: dict[str, Rule] = {
    # GD: |1 − ηλ| < 1 (Cohen et al. 2021)
    "gd": Rule("gd", False, False, _gd, lambda hp: torch.full_like(hp.eps, 2.0)),
    # heavy ball: roots of z² − (1 + β − ηλ)z + β inside the unit circle iff ηλ < 2 + 2β
    "momentum": Rule("momentum", True, False, _heavy_ball, _momentum_numerator),
    # Nesterov (PyTorch form): z² − (1 + β)(1 − ηλ)z + β(1 − ηλ), roots inside the
    # unit circle iff ηλ < (2 + 2β)/(1 + 2β) (the root at z = −1 decides)
    "nesterov": Rule(
        "nesterov", True, False, _nesterov, lambda hp: (2 + 2 * hp.momentum) / (1 + 2 * hp.momentum)
    ),
    # RMSProp with P frozen is GD on P^{-1/2}HP^{-1/2}: 2 (Cohen et al. 2022)
    "rmsprop": Rule("rmsprop", False, True, _rmsprop, lambda hp: torch.full_like(hp.eps, 2.0)),
    # Adam with P frozen is EMA momentum on P⁻¹H: (2 + 2β₁)/(1 − β₁), 38 at β₁ 0.9
    # (Cohen et al. 2022, arXiv 2207.14484)
    "adam": Rule("adam", True, True, _adam, lambda hp: (2 + 2 * hp.beta1) / (1 - hp.beta1)),
}


def rule(name: str) -> Rule:
    """The :class:`Rule` called ``name`` (one of :data:`NAMES`)."""
    return RULES[name]


def threshold_numerator(name: str, hp: Hyper) -> Tensor:
    """c per run ``(R,)``: the rule is linearly stable on a quadratic iff η·λ₁ < c.

    λ₁ is the sharpness for ``gd | momentum | nesterov`` and the preconditioned
    sharpness λ₁(P⁻¹H) for ``rmsprop | adam``.
    """
    return RULES[name].numerator(hp)


def preconditioner(name: str, state: State, hp: Hyper) -> Params | None:
    """Adam's / RMSProp's diagonal preconditioner P per parameter, or ``None``.

    With the preconditioner frozen, the update is w ← w − η P⁻¹·(momentum of g);
    P folds in ε and the bias corrections (Cohen et al. 2022, arXiv 2207.14484
    v2, Eq. 2): for Adam after t updates P = (1 − β₁ᵗ)·(√(s/(1 − β₂ᵗ)) + ε)
    (both factors 1 without bias correction); for RMSProp P = √s + ε.
    """
    if name not in ADAPTIVE:
        return None
    assert state.nu is not None
    if name == "rmsprop":
        return tuple(s.sqrt() + _b(hp.eps, s) for s in state.nu)
    on = hp.bias_correction
    t = state.t
    bc1 = torch.where(on, 1 - hp.beta1.pow(t), 1.0)
    bc2 = torch.where(on, 1 - hp.beta2.pow(t), 1.0)
    # the same operations as torch.optim.Adam, for bit-level agreement
    return tuple(_b(bc1, s) * (s.sqrt() / _b(bc2.sqrt(), s) + _b(hp.eps, s)) for s in state.nu)


def initial_preconditioner(name: str, grads: Params, hp: Hyper) -> Params | None:
    """P at θ₀, for the critical rate and the step-0 preconditioned sharpness.

    θ₀ has no update behind it; we take the P of the first update (the second
    moment of g₀): for RMSProp √((1 − β₂)g₀²) + ε, the P that update really
    uses; for Adam √(s₁/(1 − β₂)) + ε = |g₀| + ε with bias correction
    (√((1 − β₂)g₀²) + ε without), the first-moment correction (1 − β₁ᵗ) taken
    at its limit 1: it only rescales the first ~1/(1 − β₁) steps, while the
    threshold is a statement about the recurrence with P frozen, and at t = 1
    its factor 1 − β₁ would make the critical rate 1/(1 − β₁) times smaller.
    """
    if name not in ADAPTIVE:
        return None
    like = grads[0]
    count = torch.ones(like.shape[0], dtype=torch.float64, device=like.device)
    nu = _second_moment(grads, State(count * 0, None, _zeros(grads)), hp)
    if name == "rmsprop":
        return preconditioner(name, State(count, None, nu), hp)
    # Adam at t = 1 with the first-moment correction at its limit: P / (1 − β₁)
    P = preconditioner(name, State(count, None, nu), hp)
    assert P is not None
    bc1 = torch.where(hp.bias_correction, 1 - hp.beta1, 1.0)
    return tuple(p / _b(bc1, p) for p in P)


def select(mask: Tensor, new: State, old: State) -> State:
    """Per run: ``new`` where ``mask (R,)`` holds, else ``old`` (a run that may not step
    keeps its state)."""

    def pick(a: Params | None, b: Params | None) -> Params | None:
        if a is None or b is None:
            return a
        return tuple(
            torch.where(mask.view(-1, *([1] * (x.dim() - 1))), x, y)
            for x, y in zip(a, b, strict=True)
        )

    return State(torch.where(mask, new.t, old.t), pick(new.mu, old.mu), pick(new.nu, old.nu))
