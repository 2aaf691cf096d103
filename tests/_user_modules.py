"""Factories for ``model.kind: module`` in the tests (imported as ``_user_modules:NAME``)."""

from __future__ import annotations

from torch import nn


def small_mlp(d: int = 64, width: int = 6, outputs: int = 10) -> nn.Module:
    """A user's own net: Linear → GELU → Linear (qualified names body.0.weight, …)."""
    return _Net(d, width, outputs)


class _Net(nn.Module):
    def __init__(self, d: int, width: int, outputs: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d, width), nn.GELU())
        self.head = nn.Linear(width, outputs)

    def forward(self, x):
        return self.head(self.body(x.flatten(1)))


def with_batchnorm(d: int = 64) -> nn.Module:
    return nn.Sequential(nn.Linear(d, 4), nn.BatchNorm1d(4), nn.Linear(4, 10))


def with_dropout(d: int = 64) -> nn.Module:
    return nn.Sequential(nn.Linear(d, 4), nn.Dropout(0.5), nn.Linear(4, 10))
