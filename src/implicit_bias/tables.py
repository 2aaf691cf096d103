"""One flat table of runs across all groups of a results folder.

The groups of a results tree differ in array shapes (a sweep over
``model.width`` gives ``W1_out`` sizes 16 and 32), so ``xr.concat`` cannot
join them; their per-run values (swept keys and scalars such as ``phase`` or
``final_sharpness``) can. :func:`runs_table` joins those into one
:class:`pandas.DataFrame`, the table behind ``report/summary.csv`` and the
cross-group figures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .views import REPLICATE_KEYS

__all__ = ["CORE_COLUMNS", "RATE_DUPLICATES", "runs_table", "swept_keys"]

#: per-run columns shown first, in this order, when present
CORE_COLUMNS = (
    "lr",
    "lr_critical",
    "phase",
    "divergence_step",
    "sharpness_init",
    "final_sharpness",
    "final_loss",
    "final_test_loss",
    "final_test_acc",
)

#: columns that are a learning rate again: dropped when they equal (to float32
#: precision) a column before them, e.g. ``lr_critical`` and ``critical_ratio``
#: repeat a swept ``train.lr`` given in critical units
RATE_DUPLICATES = ("lr_critical", "critical_ratio")


def _tree(tree_or_folder: Any):
    if isinstance(tree_or_folder, str | Path):
        from .store import open_results

        return open_results(tree_or_folder)
    return tree_or_folder


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal to float32 precision, NaN equal to NaN."""
    try:
        a = np.asarray(a, dtype=np.float64)
        b = np.asarray(b, dtype=np.float64)
    except (TypeError, ValueError):
        return False
    both_nan = np.isnan(a) & np.isnan(b)
    with np.errstate(invalid="ignore"):
        close = np.isclose(a, b, rtol=1e-6, atol=0.0)
    return bool((both_nan | close).all())


def _py(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.generic):
        return v.item()
    return v


def runs_table(tree_or_folder: Any):
    """One row per run across all groups: swept keys and per-run scalars as columns.

    Args:
        tree_or_folder: a results folder (path) or the ``xarray.DataTree`` that
            :func:`implicit_bias.open_results` / :func:`implicit_bias.run` return.

    Returns:
        A :class:`pandas.DataFrame` indexed by nothing in particular (a
        RangeIndex), rows sorted by ``run`` (the run's index in the sweep). Columns:

        - ``group``: the node holding the run (``group_000``, …; runs of one
          group share array shapes);
        - ``run``;
        - every swept key by its dotted name (``train.lr``, ``model.width``,
          then the replicates ``seed``, ``data.seed``);
        - ``lr``: the absolute base rate η, after any ``lr_units: critical``
          conversion; ``lr_critical`` = η·λ₀/2 (λ₀ = ``sharpness_init``, so 1 is
          the critical rate 2/λ₀ of gradient descent);
        - ``phase`` and every other per-run number the runs store
          (``final_loss``, ``final_sharpness``, ``final_test_acc``, the phase
          rule's inputs such as ``critical_ratio`` and ``spike_step``, data
          diagnostics ``data_*``). A group that lacks a variable has NaN there.

        A rate column that only repeats an earlier one (``lr_critical`` or
        ``critical_ratio`` equal to a swept ``train.lr`` in critical units) is
        left out; ``df.attrs["duplicates"]`` maps each left-out column to the one
        it repeats.

    Raises:
        UserInputError: the folder is not a results folder.
    """
    import pandas as pd

    tree = _tree(tree_or_folder)
    frames = []
    for name, node in tree.children.items():
        ds = node.to_dataset()
        if "run" not in ds.dims:
            continue
        cols: dict[str, Any] = {"group": np.full(ds.sizes["run"], str(name), dtype=object)}
        cols["run"] = np.asarray(ds["run"].values, dtype=np.int64)
        for k in ds.coords:
            if k != "run" and ds[k].dims == ("run",):
                cols[str(k)] = np.asarray(ds[k].values)
        for k in ds.data_vars:
            da = ds[k]
            if da.dims == ("run",) and da.dtype.kind in "fiubSUO":
                v = np.asarray(da.values)
                if v.dtype.kind in "SUO":
                    v = np.array([_py(x) for x in v], dtype=object)
                cols[str(k)] = v
        if "lr" in cols and "sharpness_init" in cols:
            s0 = np.asarray(cols["sharpness_init"], dtype=np.float64)
            cols["lr_critical"] = np.asarray(cols["lr"], dtype=np.float64) * s0 / 2.0
        frames.append(pd.DataFrame(cols))
    if not frames:
        return pd.DataFrame({"group": pd.Series(dtype=object), "run": pd.Series(dtype="int64")})
    df = pd.concat(frames, ignore_index=True, sort=False)
    df = df.sort_values("run", kind="stable").reset_index(drop=True)
    keys = swept_keys(df)
    rest = [c for c in df.columns if c not in ("group", "run", *keys)]
    core = [c for c in CORE_COLUMNS if c in rest]
    extra = sorted(c for c in rest if c not in CORE_COLUMNS)
    df = df[["group", "run", *keys, *core, *extra]]
    duplicates: dict[str, str] = {}
    for c in RATE_DUPLICATES:
        if c not in df.columns:
            continue
        for earlier in df.columns[: list(df.columns).index(c)]:
            if earlier in ("group", "run") or earlier in duplicates:
                continue
            if earlier in ("train.lr", "lr", *RATE_DUPLICATES) and _same(df[c], df[earlier]):
                duplicates[c] = str(earlier)
                break
    df = df.drop(columns=list(duplicates))
    df.attrs["duplicates"] = duplicates
    return df


def swept_keys(df) -> list[str]:
    """The swept-key columns of a runs table (dotted names and ``seed``), replicates last."""
    found = [
        str(c)
        for c in df.columns
        if ("." in str(c) or c in REPLICATE_KEYS) and c not in ("group", "run")
    ]
    return sorted(found, key=lambda k: (k in REPLICATE_KEYS, k))
