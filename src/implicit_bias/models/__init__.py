"""Models and the backends that batch them over runs (SPEC §2).

- :mod:`.spec` — the MLP family's static description and its one-run forward;
- :mod:`.mlp` — the hand-written batched fast path of the MLP family;
- :mod:`.generic` — any one-run function (an ``nn.Module`` or the MLP's
  forward) batched by ``torch.func`` (``vmap``, ``grad``, ``jvp``);
- :mod:`.backend` — the interface the engine talks to, and the choice of one.

The engine asks a backend (:class:`.backend.Backend`), never a model kind.
"""

from .spec import (
    ModelSpec,
    Params,
    activate,
    activation_grad,
    activation_grad2,
    fixed_last_layer,
    forward,
    hidden,
    init_params,
    linear_predictor,
)

__all__ = [
    "ModelSpec",
    "Params",
    "activate",
    "activation_grad",
    "activation_grad2",
    "fixed_last_layer",
    "forward",
    "hidden",
    "init_params",
    "linear_predictor",
]
