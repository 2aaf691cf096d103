"""implicit-bias: the implicit bias of gradient descent, as batched sweeps.

Public API::

    import implicit_bias as ib
    tree = ib.run("sweep.yaml", out="results/sweep", overrides=["train.steps=500"])
    cfg = ib.load_config("sweep.yaml")
    tree = ib.open_results("results/sweep")

Everything else lives in private-by-convention modules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["ExperimentConfig", "UserInputError", "load_config", "open_results", "run"]

from ._errors import UserInputError

if TYPE_CHECKING:
    from .config import ExperimentConfig


def load_config(path, overrides=None):
    """Read and validate a YAML config (or a mapping); see :mod:`implicit_bias.config`."""
    from .config import load_config as _load

    return _load(path, overrides)


def open_results(path):
    """Open a results folder as an ``xarray.DataTree`` (one child node per group of runs)."""
    from .store import open_results as _open

    return _open(path)


def run(config_or_path, out=None, overrides=None, **kwargs: Any):
    """Run a config (path, mapping or ExperimentConfig); return the results DataTree.

    Args:
        config_or_path: YAML path, mapping, or :class:`ExperimentConfig`.
        out: results folder (default ``results/<name>``).
        overrides: ``["key=value", ...]`` or ``{"key": value}``.
        **kwargs: ``overwrite``, ``device``, ``workers``, ``scheduler``, ``progress``.
    """
    from .sweep import run_sweep

    return run_sweep(config_or_path, out, overrides, **kwargs)


def __getattr__(name: str):
    if name == "ExperimentConfig":
        from .config import ExperimentConfig

        return ExperimentConfig
    raise AttributeError(name)
