"""The results folder (SPEC §5): config, data, and atomically written chunks.

Layout of ``DIR``::

    config.yaml            resolved config with its hash
    data/<fingerprint>.npz  each distinct data set, once
    chunks/g<group>-c<chunk>.nc   one netCDF file per finished chunk

A chunk file appears only when whole: it is written as ``<name>.nc.tmp`` in
``chunks/`` and renamed (``os.replace`` is atomic on POSIX). A rerun of the
same command skips the chunks that exist.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr
import yaml

from ._errors import UserInputError
from .config import ExperimentConfig, to_yaml

if TYPE_CHECKING:  # keep torch out of open_results / report start-up
    from .engine import ChunkResult

CONFIG_FILE = "config.yaml"
CHUNK_DIR = "chunks"
DATA_DIR = "data"


@dataclass(frozen=True)
class ChunkPlan:
    """Which runs (indices into the sweep) one chunk holds, and its group."""

    group: int
    chunk: int
    runs: tuple[int, ...]

    @property
    def filename(self) -> str:
        return f"g{self.group:03d}-c{self.chunk:05d}.nc"


# ------------------------------------------------------------------- folder
def prepare_folder(out: Path, cfg: ExperimentConfig, overwrite: bool) -> None:
    """Create ``out`` for ``cfg``, or check that it already belongs to ``cfg``.

    Raises:
        UserInputError: the folder holds results of another config (and not ``overwrite``).
    """
    out = Path(out)
    cfg_path = out / CONFIG_FILE
    if out.exists() and not out.is_dir():
        raise UserInputError(f"results path is a file, not a folder: {out}")
    if cfg_path.exists():
        try:
            old = yaml.safe_load(cfg_path.read_text()) or {}
            old_hash = old.get("config_hash")
        except (yaml.YAMLError, AttributeError):
            old_hash = None
        if old_hash != cfg.config_hash():
            if not overwrite:
                raise UserInputError(
                    f"results folder {out} holds another config (hash {old_hash}); "
                    "use --overwrite or another --out"
                )
            _clear(out)
    elif out.exists() and any(out.iterdir()):
        if not overwrite and (out / CHUNK_DIR).exists():
            raise UserInputError(
                f"results folder {out} has chunks but no {CONFIG_FILE}; use --overwrite"
            )
        if overwrite:
            _clear(out)
    (out / CHUNK_DIR).mkdir(parents=True, exist_ok=True)
    (out / DATA_DIR).mkdir(exist_ok=True)
    _atomic_write_text(cfg_path, to_yaml(cfg, {"config_hash": cfg.config_hash()}))


def _clear(out: Path) -> None:
    for child in out.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def done_chunks(out: Path) -> set[str]:
    d = Path(out) / CHUNK_DIR
    return {p.name for p in d.glob("*.nc")} if d.exists() else set()


# -------------------------------------------------------------- to xarray
def _coord_value(v: Any) -> Any:
    if isinstance(v, bool | int | float | str) or v is None:
        return "none" if v is None else v
    return json.dumps(v, sort_keys=True)


def chunk_to_dataset(res: ChunkResult, plan: ChunkPlan, group_attrs: dict[str, Any]) -> xr.Dataset:
    """Label a chunk's arrays: dims ``run``, ``iteration``, ``step``, weight and data dims."""
    runs = res.runs
    R = len(runs)
    steps = res.per_iteration["loss"].shape[1] - 1
    coords: dict[str, Any] = {
        "run": ("run", np.array([r.index for r in runs], dtype=np.int64)),
        "iteration": ("iteration", np.arange(steps + 1, dtype=np.int64)),
        "step": ("step", np.array(res.eval_steps, dtype=np.int64)),
        "seed": ("run", np.array([r.config.seed for r in runs], dtype=np.int64)),
        "lr": ("run", res.per_run["lr"]),
    }
    for key in runs[0].coords:
        if key in ("seed", "lr"):
            continue
        coords[key] = ("run", np.array([_coord_value(r.coords[key]) for r in runs]))
    data_vars: dict[str, Any] = {}
    for name, arr in res.per_iteration.items():
        data_vars[name] = (("run", "iteration"), arr)
    for name, arr in res.per_step.items():
        extra = tuple(f"{name}_dim{i}" for i in range(arr.ndim - 2))
        if name == "sharpness_topk":
            extra = ("k",)
        elif name.startswith("density_"):
            extra = ("density_node",)
        data_vars[name] = (("run", "step", *extra), arr)
    from .metrics import data_geometry, geometry_per_run

    # data geometry belongs to the data, not the training: computed here (once per
    # data set, cached) rather than inside the trainer
    for name, arr in {**res.per_run, **geometry_per_run(runs)}.items():
        if name == "lr":
            continue
        extra = tuple(f"{name}_dim{i}" for i in range(arr.ndim - 1))
        if name == "linear_predictor":
            extra = ("feature",)
        elif name.startswith("singular_values_W"):
            extra = (f"{name}_index",)
        elif name.startswith("ntk_gram_"):
            extra = ("sample", "sample_k")
        data_vars[name] = (("run", *extra), arr)
    for name, arr in res.weights.items():
        layer = name.split("_", 1)[1]
        data_vars[name] = (("run", f"{layer}_out", f"{layer}_in"), arr)
    for name, arr in res.fixed.items():
        data_vars[name] = ((f"{name}_out", f"{name}_in"), arr)
    # data: shared by the chunk's runs unless they differ (then with a run dim)
    fps = [r.data.fingerprint() for r in runs]
    shared = len(set(fps)) == 1
    for name, dims in (
        ("X_train", ("sample", "feature")),
        ("y_train", ("sample",)),
        ("X_test", ("test_sample", "feature")),
        ("y_test", ("test_sample",)),
    ):
        if shared:
            data_vars[name] = (dims, getattr(runs[0].data, name))
        else:
            data_vars[name] = (("run", *dims), np.stack([getattr(r.data, name) for r in runs]))
    ds = xr.Dataset(data_vars=data_vars, coords=coords)
    ds.attrs = {
        "group": plan.group,
        "chunk": plan.chunk,
        "data_fingerprint": fps[0] if shared else "per-run",
        "group_config": json.dumps(group_attrs, sort_keys=True, default=str),
        "n_runs": R,
    }
    if shared:  # data geometry (SPEC §3) as attributes; per run as data_* variables too
        for key, val in data_geometry(runs[0].data)[1].items():
            ds.attrs[f"data_{key}"] = int(val) if isinstance(val, bool | np.bool_) else float(val)
    return ds


def write_chunk(out: Path, plan: ChunkPlan, ds: xr.Dataset) -> Path:
    """Write one chunk atomically: to ``<name>.tmp``, fsync, rename."""
    final = Path(out) / CHUNK_DIR / plan.filename
    tmp = final.with_name(final.name + ".tmp")
    # Compress the traces (NaN after divergence, slowly varying); data and weights
    # are random-looking floats that zlib shrinks by ≈ 3 % at ≈ 25 MB/s (measured):
    # not worth 0.2 s on Frei et al.-sized data.
    enc = {
        v: {"zlib": True, "complevel": 1}
        for v in ds.data_vars
        if ds[v].dtype.kind == "f" and ("iteration" in ds[v].dims or "step" in ds[v].dims)
    }
    ds.to_netcdf(tmp, engine="h5netcdf", encoding=enc, invalid_netcdf=True)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    return final


# ----------------------------------------------------------------- reading
def open_results(path: str | Path) -> xr.DataTree:
    """Open a results folder as an ``xarray.DataTree``.

    One child node per group of runs that share shapes (``group_000``, …), each
    a Dataset with dim ``run`` concatenated over the group's finished chunks.
    The root carries the resolved config (``attrs['config']``) and the folder (``attrs['path']``).

    Raises:
        UserInputError: the folder is missing or holds no results.
    """
    out = Path(path)
    if not (out / CONFIG_FILE).exists():
        raise UserInputError(f"not a results folder (no {CONFIG_FILE}): {out}")
    files = sorted((out / CHUNK_DIR).glob("*.nc"))
    groups: dict[int, list[xr.Dataset]] = {}
    for f in files:
        with xr.open_dataset(f, engine="h5netcdf") as ds:
            ds = ds.load()
        groups.setdefault(int(ds.attrs["group"]), []).append(ds)
    children: dict[str, xr.Dataset] = {}
    for g, parts in sorted(groups.items()):
        children[f"group_{g:03d}"] = _concat_chunks(parts)
    root = xr.Dataset(
        attrs={
            "config": (out / CONFIG_FILE).read_text(),
            "n_chunks": len(files),
            "path": str(out),
        }
    )
    tree = xr.DataTree.from_dict({"/": root, **{f"/{k}": v for k, v in children.items()}})
    return tree


_DATA_VARS = ("X_train", "y_train", "X_test", "y_test")


def _concat_chunks(parts: list[xr.Dataset]) -> xr.Dataset:
    if len(parts) == 1:
        return parts[0]
    fps = {p.attrs.get("data_fingerprint") for p in parts}
    if len(fps) > 1 or "per-run" in fps:
        # data differs between chunks: give every chunk's data a run dim
        fixed = []
        for p in parts:
            for name in _DATA_VARS:
                if "run" not in p[name].dims:
                    p[name] = p[name].expand_dims(run=p.sizes["run"]).copy()
            fixed.append(p)
        parts = fixed
    ds = xr.concat(
        parts,
        dim="run",
        data_vars="minimal",
        coords="minimal",
        compat="override",
        join="outer",
        combine_attrs="drop_conflicts",
    )
    ds = ds.sortby("run")
    return ds
