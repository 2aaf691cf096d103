"""implicit-bias: the implicit bias of gradient descent, as batched sweeps."""

__version__ = "0.1.0"
