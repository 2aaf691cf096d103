"""implicit-bias: the implicit bias of gradient descent, as batched sweeps.

Public API::

    import implicit_bias as ib
    tree = ib.run("sweep.yaml", out="results/sweep", overrides=["train.steps=500"])
    cfg = ib.load_config("sweep.yaml")
    tree = ib.open_results("results/sweep")
    df = ib.runs_table("results/sweep")  # pandas: one row per run, all groups
    X = ib.run_data(tree["group_000"], "X_train")  # (run, n, d), any data layout

Everything else lives in private-by-convention modules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = [
    "ExperimentConfig",
    "UserInputError",
    "load_config",
    "open_results",
    "run",
    "run_data",
    "runs_table",
]

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


def run_data(ds, name):
    """Each run's data as numpy, shape ``(run, …)``, whatever the folder's layout.

    A group's runs that share a data set store it once (no run dim); runs on
    different data sets (a swept ``data.seed``) store each distinct set once
    along a ``draw`` dim, with ``data_draw`` naming each run's
    (``ds.X_train.isel(draw=ds.data_draw)`` in xarray).

    Args:
        ds: a group of :func:`open_results` (``tree["group_000"]``), or a
            selection of its runs.
        name: ``X_train``, ``y_train``, ``X_test`` or ``y_test``.
    """
    from .results_data import run_data as _run_data

    return _run_data(ds, name)


def runs_table(tree_or_folder):
    """One pandas DataFrame of all runs: one row per run across all groups.

    Columns: ``group``, ``run``, every swept key by its dotted name
    (``train.lr``, ``model.width``, ``seed``), ``lr`` (the absolute rate η),
    ``phase`` and every per-run scalar the runs store (``final_loss``,
    ``final_sharpness``, ``final_test_acc``, the phase rule's inputs, …); the
    same table as ``report/summary.csv``. Groups (one per array shape, e.g. per
    swept width) cannot be joined with ``xr.concat``; their per-run values can.

    Args:
        tree_or_folder: a results folder or the DataTree of :func:`open_results`.

    Example::

        df = ib.runs_table("results/sweep")
        df.groupby(["model.width", "train.lr"])["phase"].value_counts()
    """
    from .tables import runs_table as _table

    return _table(tree_or_folder)


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
