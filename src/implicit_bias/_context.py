"""What a measurement sees of the chunk being trained (:class:`Chunk`).

The engine's ``Trainer`` satisfies this protocol; the metrics are written
against it, so :mod:`implicit_bias.metrics` does not import the engine
(which imports the metrics), and a metric can be tested on any object with
these attributes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from .config import ExperimentConfig
    from .losses import LossName
    from .models import ModelSpec, Params
    from .models.backend import Backend


class Chunk(Protocol):
    """Data, model and operators of one chunk of R runs (shapes as in the engine)."""

    X: Tensor  # (n, d) shared, or (R, n, d)
    y: Tensor  # (n,) or (R, n)
    Xt: Tensor  # test inputs, like X
    yt: Tensor
    x_dim: int | None  # None: X is shared by all runs; 0: per run
    xt_dim: int | None
    spec: ModelSpec | None  # the MLP family's spec; None for other models
    a: Tensor | None  # the fixed last layer, if any
    loss_kind: LossName
    R: int
    n: int
    n_params: int  # trained parameters of one run
    n_outputs: int  # outputs per sample: 1 (±1 labels) or K (labels 0…K−1)
    param_names: tuple[str, ...]  # one per parameter tensor (W1, …, or qualified names)
    act_per_sample: int  # activations one sample holds in a forward pass (memory sizing)
    backend: Backend  # the model's batched forward, gradient, HVP and NTK
    dtype: torch.dtype
    device: torch.device
    cfg: ExperimentConfig  # the chunk's (group's) config

    @property
    def runs(self) -> Sequence[Any]:
        """The RunSpecs (config, data) of the chunk, in order."""
        ...

    def hessian_operator(
        self, params: Params, gauss_newton: bool = False
    ) -> Callable[[Tensor], Tensor]: ...

    def start_vectors(self) -> Tensor: ...

    def jacobian_gram(self, params: Params) -> tuple[Tensor, Tensor, Tensor]:
        """NTK Gram J Jᵀ ``(R, n, n)`` on the training inputs, J θ and f ``(R, n)``."""
        ...

    def outputs(self, params: Params, X: Tensor, x_dim: int | None) -> Tensor: ...

    def output_single(self, params: Params, X: Tensor) -> Tensor: ...
