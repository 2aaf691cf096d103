"""The interface between the engine and a model, and the choice of backend.

A backend batches one model over R runs (every parameter has a leading run
dimension) and answers what the engine and the metrics ask: outputs, the loss
and its gradient, Hessian(-or-Gauss–Newton)-vector products, the NTK Gram and
the names the parameters are stored under. Two exist:

- :class:`MLPBackend`, the hand-written fast path of the MLP family
  (:mod:`.mlp`), which also fuses the backward pass with the plain GD update;
- :class:`~.generic.GenericBackend`, any one-run model function batched by
  ``torch.func`` (:mod:`.generic`).

``model.backend: auto`` takes the MLP path where it covers the model;
``generic`` forces the ``torch.func`` path (the same numbers, slower), so the
two can be compared.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import Tensor
from torch.func import vmap

from ..config import ModelConfig
from ..losses import LossName
from . import mlp
from .generic import GenericBackend
from .spec import ModelSpec, Params, forward, init_params


class Backend(Protocol):
    """What the engine asks of a model batched over R runs (shapes as in the engine)."""

    #: storage name of each parameter tensor (results hold ``init_<name>``, ``final_<name>``)
    names: tuple[str, ...]
    #: trained parameters of one run
    n_params: int
    #: :meth:`descend` exists: backward fused with the plain GD update, in place
    fused_descent: bool

    def init_one(self, seed: int, init_scale: float, dtype: torch.dtype) -> Params:
        """One run's initial parameters (on the host, no run dimension)."""
        ...

    def output_single(self, params: Params, X: Tensor) -> Tensor:
        """f for one run, ``(n,)`` (what ``vmap``-based metrics batch)."""
        ...

    def outputs(self, params: Params, X: Tensor, x_dim: int | None) -> Tensor:
        """f of every run, ``(R, n)``."""
        ...

    def forward_loss(
        self, params: Params, X: Tensor, y: Tensor, x_dim: int | None
    ) -> tuple[Tensor, Tensor, Any]:
        """Loss ``(R,)``, outputs ``(R, n)`` and a pass that :meth:`grad` completes."""
        ...

    def grad(self, pas: Any, params: Params, X: Tensor, y: Tensor, x_dim: int | None) -> Params:
        """Gradients of the mean loss, shaped like ``params``."""
        ...

    def descend(self, pas: Any, params: Params, y: Tensor, scale: Tensor) -> Tensor:
        """Backward of ``pas`` fused with θ ← θ + scale·∇loss in place, ``(R,)`` finite
        flags; called only where ``fused_descent`` is True."""
        ...

    def hvp_operator(
        self, params: Params, X: Tensor, y: Tensor, x_dim: int | None, gauss_newton: bool = False
    ) -> Callable[[Params], Params]:
        """``V ↦ H V`` per run (the Gauss–Newton product with ``gauss_newton``)."""
        ...

    def jacobian_gram(
        self, params: Params, X: Tensor, x_dim: int | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """NTK Gram J Jᵀ ``(R, n, n)``, J θ ``(R, n)`` and f ``(R, n)``."""
        ...


class MLPBackend:
    """The MLP family on the hand-written batched path (:mod:`.mlp`).

    Every call goes through the module (``mlp.descend``, not a bound copy), so
    tests can wrap those functions.
    """

    fused_descent = True

    def __init__(self, spec: ModelSpec, a: Tensor | None, loss_kind: LossName) -> None:
        self.spec, self.a, self.loss_kind = spec, a, loss_kind
        if spec.bias or spec.outputs > 1:
            raise ValueError("the hand-written MLP path has one output and no biases")
        self.names = tuple(spec.param_names)
        self.n_params = spec.n_params

    def init_one(self, seed: int, init_scale: float, dtype: torch.dtype) -> Params:
        return init_params(self.spec, seed, init_scale, dtype)

    def output_single(self, params: Params, X: Tensor) -> Tensor:
        return forward(params, X, self.spec, self.a)

    def outputs(self, params: Params, X: Tensor, x_dim: int | None) -> Tensor:
        return vmap(self.output_single, in_dims=(0, x_dim))(params, X)

    def forward_loss(
        self, params: Params, X: Tensor, y: Tensor, x_dim: int | None
    ) -> tuple[Tensor, Tensor, Any]:
        return mlp.forward_loss(params, X, y, self.spec, self.a, self.loss_kind)

    def grad(self, pas: Any, params: Params, X: Tensor, y: Tensor, x_dim: int | None) -> Params:
        return mlp.grads_of(pas, y, self.spec, self.loss_kind)

    def descend(self, pas: Any, params: Params, y: Tensor, scale: Tensor) -> Tensor:
        """Backward fused with θ ← θ + scale·∇loss in place; ``(R,)`` finite flags."""
        return mlp.descend(pas, params, y, self.spec, self.loss_kind, scale)

    def value_and_grad(
        self, params: Params, X: Tensor, y: Tensor, x_dim: int | None
    ) -> tuple[Tensor, Tensor, Params]:
        return mlp.value_and_grad(params, X, y, self.spec, self.a, self.loss_kind)

    def hvp_operator(
        self, params: Params, X: Tensor, y: Tensor, x_dim: int | None, gauss_newton: bool = False
    ) -> Callable[[Params], Params]:
        return mlp.hvp_operator(
            params, X, y, self.spec, self.a, self.loss_kind, gauss_newton=gauss_newton
        )

    def jacobian_gram(
        self, params: Params, X: Tensor, x_dim: int | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        return mlp.jacobian_gram(params, X, self.spec, self.a)


def mlp_generic(spec: ModelSpec, a: Tensor | None, loss_kind: LossName) -> GenericBackend:
    """The MLP family on the ``torch.func`` path: the same model function and init."""

    def fn(params: Params, X: Tensor) -> Tensor:
        return forward(params, X, spec, a)

    def init_one(seed: int, init_scale: float, dtype: torch.dtype) -> Params:
        return init_params(spec, seed, init_scale, dtype)

    return GenericBackend(
        fn, spec.param_names, init_one, loss_kind, spec.n_params, outputs=spec.outputs
    )


def make_backend(
    cfg: ModelConfig, spec: ModelSpec, a: Tensor | None, loss_kind: LossName
) -> MLPBackend | GenericBackend:
    """The backend ``cfg`` asks for: under ``auto`` the hand-written MLP path where
    it covers the model (one output, no biases), the ``torch.func`` path under
    ``generic``."""
    if cfg.backend == "generic" or spec.bias or spec.outputs > 1:
        return mlp_generic(spec, a, loss_kind)
    return MLPBackend(spec, a, loss_kind)
