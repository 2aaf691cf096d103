"""How a results folder stores its runs' data: each distinct data set once.

A group's runs usually share one data set. Then ``X_train``, ``y_train``,
``X_test`` and ``y_test`` carry no run dim: ``(sample, feature)``,
``(sample,)``, ``(test_sample, feature)``, ``(test_sample,)``.

When the runs' data differ (a swept ``data.seed``, say), each distinct data
set is stored once along a ``draw`` dim, its fingerprint in the coordinate
``draw_fingerprint``, and the per-run variable ``data_draw`` says which one a
run trained on::

    X = ds.X_train.isel(draw=ds.data_draw)        # (run, sample, feature)
    X = implicit_bias.run_data(ds, "X_train")      # the same, as numpy, any layout

Chunks written before this layout held one copy per run (the data with a
``run`` dim: 1.2 GB of repeated test sets per chunk of Frei et al.'s full
recipe); :func:`merge_data` reads them into it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .data import fingerprint_arrays

if TYPE_CHECKING:
    import xarray as xr

    from .data import Dataset

DATA_VARS = ("X_train", "y_train", "X_test", "y_test")
_DIMS = {
    "X_train": ("sample", "feature"),
    "y_train": ("sample",),
    "X_test": ("test_sample", "feature"),
    "y_test": ("test_sample",),
}
DRAW, INDEX, FINGERPRINT = "draw", "data_draw", "draw_fingerprint"
#: the ``data_fingerprint`` attribute of a chunk whose runs' data differ
PER_DRAW = "per-draw"
_LEGACY_PER_RUN = "per-run"  # chunks written before the draw layout


def _layout(
    fps: Sequence[str], arrays: Sequence[dict[str, np.ndarray]]
) -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
    """Data variables for runs whose data sets have fingerprints ``fps`` (one per
    run); ``arrays[i]`` the four arrays of the i-th distinct fingerprint."""
    unique = list(dict.fromkeys(fps))
    if len(unique) == 1:
        return {name: (dims, arrays[0][name]) for name, dims in _DIMS.items()}
    out: dict[str, tuple[tuple[str, ...], np.ndarray]] = {
        name: ((DRAW, *dims), np.stack([a[name] for a in arrays])) for name, dims in _DIMS.items()
    }
    where = {fp: i for i, fp in enumerate(unique)}
    out[INDEX] = (("run",), np.array([where[fp] for fp in fps], dtype=np.int64))
    out[FINGERPRINT] = ((DRAW,), np.array(unique, dtype=object))
    return out


def assign_data(ds: xr.Dataset, datasets: Sequence[Dataset]) -> tuple[xr.Dataset, str]:
    """``ds`` (dim ``run``, one entry per data set of ``datasets``) with its runs' data.

    Returns:
        The dataset and its ``data_fingerprint`` attribute: the shared data
        set's fingerprint, or ``"per-draw"``.
    """
    fps = [d.fingerprint() for d in datasets]
    first: dict[str, Dataset] = {}
    for fp, d in zip(fps, datasets, strict=True):
        first.setdefault(fp, d)
    arrays = [{name: np.asarray(getattr(d, name)) for name in DATA_VARS} for d in first.values()]
    return _with(ds, _layout(fps, arrays)), fps[0] if len(first) == 1 else PER_DRAW


def _with(ds: xr.Dataset, layout: dict[str, tuple[tuple[str, ...], np.ndarray]]) -> xr.Dataset:
    coords = {k: v for k, v in layout.items() if k == FINGERPRINT}
    return ds.assign({k: v for k, v in layout.items() if k != FINGERPRINT}).assign_coords(coords)


def draws_ok(ds: xr.Dataset) -> bool:
    """A chunk in the draw layout names, for every run, one of its data sets."""
    if DRAW not in ds.dims:
        return INDEX not in ds
    if INDEX not in ds or ds[INDEX].dims != ("run",) or FINGERPRINT not in ds.coords:
        return False
    index = np.asarray(ds[INDEX].values)
    return index.dtype.kind in "iu" and bool(((index >= 0) & (index < ds.sizes[DRAW])).all())


def drop_data(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` without its data (the four arrays, the draw index and coordinates)."""
    return ds.drop_vars([*DATA_VARS, INDEX, FINGERPRINT, DRAW], errors="ignore")


def _draws(part: xr.Dataset) -> tuple[list[str], list[dict[str, np.ndarray]], np.ndarray]:
    """A chunk's distinct data sets: fingerprints, arrays, and each run's index."""
    runs = int(part.sizes["run"])
    if DRAW in part[DATA_VARS[0]].dims:
        fps = [str(f) for f in np.asarray(part[FINGERPRINT].values)]
        arrays = [
            {name: np.asarray(part[name].values[i]) for name in DATA_VARS} for i in range(len(fps))
        ]
        return fps, arrays, np.asarray(part[INDEX].values, dtype=np.int64)
    if "run" in part[DATA_VARS[0]].dims:  # the old layout: one copy per run
        fps, arrays, index = [], [], []
        for r in range(runs):
            a = {name: np.asarray(part[name].isel(run=r).values) for name in DATA_VARS}
            fp = fingerprint_arrays(a)
            if fp not in fps:
                fps.append(fp)
                arrays.append(a)
            index.append(fps.index(fp))
        return fps, arrays, np.asarray(index, dtype=np.int64)
    a = {name: np.asarray(part[name].values) for name in DATA_VARS}
    fp = str(part.attrs.get("data_fingerprint", ""))
    if fp in ("", PER_DRAW, _LEGACY_PER_RUN):  # not a shared set's own fingerprint
        fp = fingerprint_arrays(a)
    return [fp], [a], np.zeros(runs, dtype=np.int64)


def merge_data(parts: Sequence[xr.Dataset], concat: Any) -> xr.Dataset:
    """Concatenate chunks of one group along ``run`` with each distinct data set once.

    Args:
        parts: the chunks (each with dim ``run`` and the four data arrays, in
            any layout this module has written).
        concat: ``concat(list_of_datasets) -> Dataset`` along ``run``, for the
            chunks without their data.

    Returns:
        One Dataset sorted by run, its data shared (no run dim) when every run
        trained on the same data set, else on a ``draw`` dim with ``data_draw``.
    """
    fps: list[str] = []
    arrays: list[dict[str, np.ndarray]] = []
    cores = []
    for part in sorted(parts, key=lambda p: int(np.min(p["run"].values))):
        pfps, parrays, index = _draws(part)
        remap = []
        for fp, a in zip(pfps, parrays, strict=True):
            if fp not in fps:
                fps.append(fp)
                arrays.append(a)
            remap.append(fps.index(fp))
        core = drop_data(part).assign({INDEX: ("run", np.asarray(remap, dtype=np.int64)[index])})
        cores.append(core)
    ds = cores[0] if len(cores) == 1 else concat(cores)
    ds = ds.sortby("run")
    per_run = [fps[i] for i in np.asarray(ds[INDEX].values)]
    ds = drop_data(ds)
    layout = _layout(per_run, [arrays[fps.index(fp)] for fp in dict.fromkeys(per_run)])
    ds = _with(ds, layout)
    ds.attrs["data_fingerprint"] = per_run[0] if len(set(per_run)) == 1 else PER_DRAW
    return ds


def run_data(ds: xr.Dataset, name: str) -> np.ndarray:
    """One data array per run of ``ds``, whatever the layout: shape ``(run, …)``.

    Args:
        ds: a group of :func:`implicit_bias.open_results` (DataTree node or
            Dataset), or a selection of its runs.
        name: ``X_train``, ``y_train``, ``X_test`` or ``y_test``.
    """
    if name not in DATA_VARS:
        raise KeyError(f"{name!r} is not one of {', '.join(DATA_VARS)}")
    if hasattr(ds, "to_dataset"):  # a DataTree node
        ds = ds.to_dataset()
    v = ds[name]
    runs = int(ds.sizes.get("run", 0))
    if DRAW in v.dims:
        return np.asarray(v.transpose(DRAW, ...).values)[np.asarray(ds[INDEX].values)]
    if "run" in v.dims:
        return np.asarray(v.transpose("run", ...).values)
    vals = np.asarray(v.values)
    return np.broadcast_to(vals, (runs, *vals.shape))
