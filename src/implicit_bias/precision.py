"""The matmul precision policy, ``train.matmul_precision: highest | high``.

``high`` lets the training step's float32 GEMMs (forward pass, backward pass,
update) run in TF32 on a CUDA device — ``torch.set_float32_matmul_precision
("high")``, scoped to the training steps and restored afterwards. Curvature
(Lanczos on Hessian-vector products, the NTK, eigensolvers, every metric of an
eval step) always runs in full precision: its scope is ``highest`` whatever
the policy or the process-wide setting.

On the CPU the policy is a no-op: nothing is set (torch's CPU matmuls are
IEEE float32 either way here, and a process-wide setting is left alone).
float64 runs are unaffected on any device.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Literal

import torch

Precision = Literal["highest", "high"]
LEVELS: tuple[Precision, ...] = ("highest", "high")


def applies(device: torch.device) -> bool:
    """Whether a precision setting changes anything on ``device`` (CUDA only)."""
    return device.type == "cuda"


def _get() -> str:
    return torch.get_float32_matmul_precision()


def _set(level: str) -> None:
    torch.set_float32_matmul_precision(level)


@contextmanager
def matmul_precision(level: Precision, device: torch.device) -> Iterator[None]:
    """Run the block with float32 matmuls at ``level`` on ``device``, then restore."""
    if not applies(device):
        yield
        return
    old = _get()
    _set(level)
    try:
        yield
    finally:
        _set(old)


def full(device: torch.device) -> AbstractContextManager[None]:
    """Full precision for curvature and eigensolvers (``highest``)."""
    return matmul_precision("highest", device)
