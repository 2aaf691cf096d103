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

from .._errors import UserInputError
from ..config import ModelConfig
from ..losses import LossName
from . import mlp
from .cnn import convnet, feature_count
from .generic import GenericBackend, load_factory, module_backend
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
        return mlp.gradients(pas, y, self.spec, self.loss_kind)

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
    cfg: ModelConfig,
    spec: ModelSpec | None,
    a: Tensor | None,
    loss_kind: LossName,
    outputs: int = 1,
    input_shape: tuple[int, ...] = (),
    device: str = "cpu",
) -> MLPBackend | GenericBackend:
    """The backend ``cfg`` asks for.

    ``kind: mlp``: under ``auto`` the hand-written path where it covers the
    model (one output, no biases), else (or under ``generic``) the ``torch.func``
    path on the same forward; ``cnn`` and ``module``: the ``torch.func`` path on
    the ``nn.Module`` (inputs reshaped to ``input_shape``).
    """
    if cfg.kind == "cnn":
        if len(input_shape) != 3:
            raise UserInputError(
                "model.kind: cnn needs image data (data.name: digits, or a .npz with X of "
                "shape (n, C, H, W)); this data has flat (n, d) rows"
            )
        c, h, w = input_shape

        def build() -> torch.nn.Module:
            try:
                return convnet((c, h, w), outputs, cfg.channels, cfg.activation, cfg.pool, cfg.leak)
            except ValueError as err:
                raise UserInputError(str(err)) from None

        return module_backend(build, loss_kind, outputs, input_shape, cfg.batching, device)
    if cfg.kind == "module":
        assert cfg.module is not None
        factory = load_factory(cfg.module)

        def build_user() -> torch.nn.Module:
            try:
                module = factory(**cfg.kwargs)
            except Exception as err:  # the user's factory: say which, in one line
                raise UserInputError(
                    f"model.module: {cfg.module}(**model.kwargs) failed ({type(err).__name__}: {err})"
                ) from None
            if not isinstance(module, torch.nn.Module):
                raise UserInputError(f"model.module: {cfg.module} did not return a torch.nn.Module")
            return module

        return module_backend(build_user, loss_kind, outputs, input_shape, cfg.batching, device)
    assert spec is not None
    if cfg.backend == "generic" or spec.bias or spec.outputs > 1:
        return mlp_generic(spec, a, loss_kind)
    return MLPBackend(spec, a, loss_kind)


def activations_per_sample(
    cfg: ModelConfig, spec: ModelSpec | None, image: tuple[int, int, int] | None
) -> int:
    """Activations one sample holds in a forward pass (sizes probe blocks and chunks):
    width × depth for the MLP, the convnet's feature maps, and for a user module
    its parameter count as a stand-in (the module's sizes are not known)."""
    if spec is not None:
        return max(spec.width, 1) * spec.depth * max(spec.outputs, 1)
    if cfg.kind == "cnn" and image is not None:
        return feature_count(image, cfg.channels)
    return 0
