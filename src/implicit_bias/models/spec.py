"""The one model family: bias-free fully connected networks (SPEC §2).

Everything here is written for **one run**: ``params`` is a tuple of weight
matrices, each of shape ``(out, in)`` as in ``torch.nn.Linear``, and ``x`` is
``(n, d)``. The engine batches runs with ``torch.vmap`` over a leading run
dimension of every parameter.

f(x) = c_L W_L φ(c_{L-1} W_{L-1} ⋯ φ(c_1 W_1 x)), with c_l = 1/√fan_in under the
``ntk`` parametrization (Jacot et al. 2018; Lewkowycz et al. 2020, arXiv
2003.02218; Liu et al. 2023, arXiv 2011.12547) and c_l = 1 otherwise. With
``last_layer='fixed_sign'`` the last layer is the fixed vector a = ±1/√m
(first half +, second half −) of Frei et al. 2023 (arXiv 2210.07082), not
trained: f(x) = aᵀ φ(c W_{L-1} ⋯).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import Tensor

from ..config import ModelConfig

Params = tuple[Tensor, ...]
Activation = Literal[
    "linear", "relu", "leaky_relu", "smooth_leaky_relu", "tanh", "elu", "gelu", "softplus"
]
#: activations with φ(cz) = cφ(z) for c > 0 (the margin and KKT theory's nets)
HOMOGENEOUS = ("linear", "relu", "leaky_relu")


@dataclass(frozen=True)
class ModelSpec:
    """Static description of the network (everything that fixes shapes and code)."""

    d: int
    depth: int = 2
    width: int = 256
    activation: Activation = "linear"
    leak: float = 0.1
    smoothing: float = 1.0
    parametrization: Literal["ntk", "standard", "direct"] = "ntk"
    last_layer: Literal["trained", "fixed_sign"] = "trained"
    #: a bias per trained layer, after the weights in ``params`` (b_l of shape (out,))
    bias: bool = False
    #: outputs K: 1 for ±1 labels, K for K classes
    outputs: int = 1

    @classmethod
    def from_config(cls, cfg: ModelConfig, d: int, outputs: int = 1) -> ModelSpec:
        return cls(
            outputs=outputs,
            d=d,
            depth=cfg.depth,
            width=cfg.width,
            activation=cfg.activation,
            leak=cfg.leak,
            smoothing=cfg.smoothing,
            parametrization=cfg.parametrization,
            last_layer=cfg.last_layer,
            bias=cfg.bias,
        )

    @property
    def all_shapes(self) -> list[tuple[int, int]]:
        """Shapes ``(out, in)`` of all ``depth`` layers, the last one ``(K, width)``."""
        dims = [self.d] + [self.width] * (self.depth - 1) + [self.outputs]
        return [(dims[i + 1], dims[i]) for i in range(self.depth)]

    @property
    def trained_shapes(self) -> list[tuple[int, int]]:
        shapes = self.all_shapes
        return shapes[:-1] if self.last_layer == "fixed_sign" else shapes

    @property
    def bias_shapes(self) -> list[tuple[int]]:
        """Shapes ``(out,)`` of the biases (one per trained layer), none without ``bias``."""
        return [(o,) for o, _ in self.trained_shapes] if self.bias else []

    @property
    def param_names(self) -> list[str]:
        """Names of ``params`` in order: W1 … then b1 … (the stored ``init_<name>``)."""
        n = len(self.trained_shapes)
        return [f"W{i + 1}" for i in range(n)] + [f"b{i + 1}" for i in range(len(self.bias_shapes))]

    @property
    def n_params(self) -> int:
        return sum(o * i for o, i in self.trained_shapes) + sum(o for (o,) in self.bias_shapes)

    @property
    def homogeneity(self) -> int:
        """Degree L with f(c·θ) = c^L f(θ) for positively homogeneous φ."""
        return self.depth - 1 if self.last_layer == "fixed_sign" else self.depth

    @property
    def is_homogeneous(self) -> bool:
        return self.activation in HOMOGENEOUS and not self.bias

    @property
    def has_homogenization(self) -> bool:
        """f̄ = lim f(cθ)/c^L exists as a net of this family (see :attr:`homogenized`)."""
        return self.is_homogeneous or (self.activation == "smooth_leaky_relu" and not self.bias)

    @property
    def homogenized(self) -> ModelSpec:
        """The homogenization f̄(θ; x) = lim_{c→∞} f(cθ; x)/c^L of the net.

        φ_H(cz)/c → leaky ReLU with the same leak γ as c → ∞ (the smoothing
        only changes |z| < 1/H and adds bounded offsets), so the smoothed net's
        homogenization is the leaky-ReLU net; homogeneous nets are their own.
        Cai et al. 2025 (arXiv 2502.16075) show GD on such near-homogeneous
        nets converges in direction to a KKT point of the margin problem of f̄.
        """
        if not self.has_homogenization:
            raise ValueError(f"activation {self.activation} has no homogenization in this family")
        return self if self.is_homogeneous else replace(self, activation="leaky_relu")

    def multipliers(self) -> list[float]:
        """Per-layer output multipliers c_l (1/√fan_in under ``ntk``)."""
        if self.parametrization == "ntk":
            return [1.0 / math.sqrt(fan_in) for _, fan_in in self.all_shapes]
        return [1.0] * self.depth


# Written with float arithmetic only (relu, clamp, sign): on the CPU, comparisons
# and torch.where over bool masks run 4–20× slower than a float multiply of the
# same size, and these functions are on every step's path.
def _step(z: Tensor) -> Tensor:
    """1 where z > 0, else 0 (also at z = 0, as autograd takes relu'), as floats."""
    return torch.relu(z).sign_()


def _gauss_pdf(z: Tensor) -> Tensor:
    return torch.exp(-0.5 * z * z) * (1 / math.sqrt(2 * math.pi))


def activate(z: Tensor, spec: ModelSpec) -> Tensor:
    """φ(z) elementwise.

    The smoothed leaky ReLU is eq. (2) of Frei et al. 2023 (leak γ, smoothness H):
    z − (1−γ)/(4H) for z ≥ 1/H, γz − (1−γ)/(4H) for z ≤ −1/H and
    (1−γ)H z²/4 + (1+γ)z/2 between — written as q(clamp(z, ±1/H)) plus the two
    linear tails, which is the same C¹ function. ``elu`` has α = 1 and ``gelu``
    is the exact z·Φ(z) (Hendrycks & Gimpel 2016), as in Cohen et al. 2021.
    """
    kind = spec.activation
    if kind == "linear":
        return z
    if kind == "relu":
        return torch.relu(z)
    if kind == "leaky_relu":
        # autograd's derivative at 0 is γ, as in activation_grad
        return torch.nn.functional.leaky_relu(z, spec.leak)
    if kind == "smooth_leaky_relu":
        g, h = spec.leak, spec.smoothing
        u = z.clamp(-1 / h, 1 / h)
        quad = u * ((1 - g) * h / 4 * u + (1 + g) / 2)
        return quad + torch.relu(z - 1 / h) - g * torch.relu(-1 / h - z)
    if kind == "tanh":
        return torch.tanh(z)
    if kind == "elu":
        return torch.nn.functional.elu(z)
    if kind == "gelu":
        return torch.nn.functional.gelu(z)
    if kind == "softplus":
        return torch.nn.functional.softplus(z)
    raise ValueError(f"unknown activation {kind}")


def activation_grad(z: Tensor, spec: ModelSpec) -> Tensor | None:
    """φ'(z) elementwise (the one-sided derivative z > 0 at kinks, as autograd takes it);
    ``None`` for the identity, so callers skip a multiplication by ones."""
    kind = spec.activation
    if kind == "linear":
        return None
    if kind == "relu":
        return _step(z)
    if kind == "leaky_relu":
        return _step(z).mul_(1 - spec.leak).add_(spec.leak)
    if kind == "smooth_leaky_relu":
        # q'(clamp(z)): (1−γ)Hz/2 + (1+γ)/2 inside, exactly 1 and γ at and beyond ±1/H
        g, h = spec.leak, spec.smoothing
        return z.clamp(-1 / h, 1 / h).mul_((1 - g) * h / 2).add_((1 + g) / 2)
    if kind == "tanh":
        return 1 - torch.tanh(z).square()
    if kind == "elu":
        # 1 for z > 0, e^z else: e^{min(z, 0)} is both, and never overflows
        return torch.exp(z.clamp(max=0))
    if kind == "gelu":
        # (zΦ(z))' = Φ(z) + z φ(z)
        return 0.5 * (1 + torch.erf(z * (1 / math.sqrt(2)))) + z * _gauss_pdf(z)
    if kind == "softplus":
        return torch.sigmoid(z)
    raise ValueError(f"unknown activation {kind}")


def activation_grad2(z: Tensor, spec: ModelSpec) -> Tensor | None:
    """φ''(z) elementwise, or ``None`` where it vanishes almost everywhere (piecewise-linear φ)."""
    kind = spec.activation
    if kind == "smooth_leaky_relu":
        g, h = spec.leak, spec.smoothing
        # (1−γ)H/2 on the open interval |z| < 1/H, 0 outside
        return _step(1 / h - z.abs()).mul_((1 - g) * h / 2)
    if kind == "tanh":
        t = torch.tanh(z)
        return -2 * t * (1 - t * t)
    if kind == "elu":
        # e^z for z < 0, 0 for z ≥ 0 (autograd's value at the kink)
        return torch.exp(z.clamp(max=0)) * _step(-z)
    if kind == "gelu":
        return (2 - z * z) * _gauss_pdf(z)
    if kind == "softplus":
        s = torch.sigmoid(z)
        return s * (1 - s)
    return None


def fixed_last_layer(
    spec: ModelSpec, dtype: torch.dtype, device: torch.device | str
) -> Tensor | None:
    """The fixed second layer a = ±1/√m, shape ``(1, width)``; ``None`` if trained."""
    if spec.last_layer != "fixed_sign":
        return None
    m = spec.width
    a = torch.full((1, m), 1.0 / math.sqrt(m), dtype=dtype, device=device)
    a[:, m // 2 :] *= -1
    return a


def layer_bias(params: Params, spec: ModelSpec, layer: int) -> Tensor | None:
    """b_l of a trained layer ``(out,)`` (after the weights in ``params``), or ``None``."""
    return params[len(spec.trained_shapes) + layer] if spec.bias else None


def preactivation(h: Tensor, params: Params, spec: ModelSpec, layer: int) -> Tensor:
    """z_l = c_l h W_lᵀ (+ b_l): biases enter unscaled, as in torch.nn.Linear.

    ``h`` and ``params`` may carry a leading run dimension (R, n, in)."""
    z = (h @ params[layer].transpose(-1, -2)) * spec.multipliers()[layer]
    b = layer_bias(params, spec, layer)
    return z if b is None else z + b.unsqueeze(-2)


def hidden(params: Params, x: Tensor, spec: ModelSpec) -> Tensor:
    """Last hidden representation φ(z_{L-1}), z_l = c W_l φ(z_{l-1}) (+ b_l), ``(n, width)``."""
    h = x
    for layer in range(spec.depth - 1):
        h = activate(preactivation(h, params, spec, layer), spec)
    return h


def forward(params: Params, x: Tensor, spec: ModelSpec, a: Tensor | None = None) -> Tensor:
    """Network output for one run.

    Args:
        params: trained weights, ``(out, in)`` each.
        x: inputs ``(n, d)``.
        spec: the architecture.
        a: the fixed last layer ``(1, width)`` when ``spec.last_layer == 'fixed_sign'``.

    Returns:
        f(x), shape ``(n,)`` (``(n, K)`` with K > 1 outputs).
    """
    h = hidden(params, x, spec) if spec.depth > 1 else x
    if spec.last_layer == "fixed_sign":
        assert a is not None, "fixed_sign needs the fixed layer a"
        return (h @ a.T).squeeze(-1)
    f = preactivation(h, params, spec, spec.depth - 1)
    return f.squeeze(-1) if spec.outputs == 1 else f


def init_params(
    spec: ModelSpec,
    seed: int,
    init_scale: float,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> Params:
    """Draw the initial weights of one run from its seed.

    Directions come from ``seed`` alone (drawn in float64 on the CPU, then
    cast), so runs that differ only in learning rate or ``init_scale`` start
    from the same direction.

    Returns:
        Trained weights: N(0, init_scale²) under ``ntk`` and ``direct``,
        N(0, init_scale²/fan_in) under ``standard``; then the biases, zero (so
        a net with biases starts as the same function as the one without, from
        the same draws).
    """
    gen = torch.Generator(device="cpu").manual_seed(int(seed) & 0x7FFF_FFFF_FFFF_FFFF)
    out = []
    for fan_out, fan_in in spec.trained_shapes:
        w = torch.randn(fan_out, fan_in, generator=gen, dtype=torch.float64)
        std = init_scale / math.sqrt(fan_in) if spec.parametrization == "standard" else init_scale
        out.append(w.mul_(std).to(dtype=dtype, device=device))
    out += [torch.zeros(shape, dtype=dtype, device=device) for shape in spec.bias_shapes]
    return tuple(out)


def linear_predictor(params: Params, spec: ModelSpec, a: Tensor | None = None) -> Tensor | None:
    """The end-to-end vector v with f(x) = ⟨v, x⟩ where one exists, shape ``(d,)``.

    Deep linear nets: v = c_L W_L ⋯ c_1 W_1. Fixed-sign two-layer nets (any φ):
    v = W₁ᵀa, the predictor whose sign Frei et al. 2023 show the network's
    decision boundary matches. ``None`` for other nonlinear nets.
    """
    c = spec.multipliers()
    if spec.bias or spec.outputs > 1:  # affine, or not one predictor
        return None
    if spec.last_layer == "fixed_sign" and spec.depth == 2:
        assert a is not None
        return (a @ params[0]).squeeze(0) * c[0]
    if spec.activation != "linear":
        return None
    if spec.last_layer == "fixed_sign":
        assert a is not None
        m = a
    else:
        m = params[-1] * c[-1]
    hidden_layers = params[: spec.depth - 1]
    for layer in reversed(range(len(hidden_layers))):
        m = (m @ hidden_layers[layer]) * c[layer]
    return m.squeeze(0)
