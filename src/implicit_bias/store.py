"""The results folder (SPEC §5): config, data, and atomically written chunks.

Layout of ``DIR``::

    .implicit-bias         marker: this folder was written by implicit-bias (JSON)
    .implicit-bias.lock    the writer's lock (filelock), .implicit-bias.owner its pid/host
    config.yaml            resolved config with its hash
    data/<fingerprint>.npz  each distinct data set, once
    chunks/g<group>-c<chunk>.nc   one netCDF file per finished chunk

A folder is written only when it is new, empty, or ours (the marker, or the
``config.yaml`` + ``chunks/`` of a folder written before the marker existed);
``--overwrite`` removes only what this tool writes there.

A chunk file appears only when whole: it is written as
``<name>.<host>-<pid>-<random>.tmp`` in ``chunks/`` and renamed (``os.replace``
is atomic on POSIX). Each chunk records its ``group``, ``chunk``, ``runs``, the
``config_hash`` of its folder and the ``sha256`` of its content (every
variable, coordinates included, and those attributes); a chunk is trusted only
when it opens, sits under its own name, belongs to the folder's config and
matches its checksum. A rerun of the same command redoes the chunks that are
missing or fail that check.

The marker records the config hash and the ``sha256`` of ``config.yaml``:
reading refuses a folder whose ``config.yaml`` was edited or lost (it would
no longer describe the chunks), and the same ``run`` rewrites it.

One process writes a folder at a time: :func:`folder_lock` holds an OS lock
(:mod:`filelock`) on ``.implicit-bias.lock`` for the whole run; a second run
on the same folder does not wait but stops at once, naming the holder. The OS
releases the lock when its holder dies, even by ``kill -9``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import uuid
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr
import yaml

from ._errors import ChunkWarning, UserInputError
from .config import ExperimentConfig, to_yaml

if TYPE_CHECKING:  # keep torch out of open_results / report start-up
    from .engine import ChunkResult

CONFIG_FILE = "config.yaml"
CHUNK_DIR = "chunks"
DATA_DIR = "data"
MARKER_FILE = ".implicit-bias"
LOCK_FILE = ".implicit-bias.lock"
OWNER_FILE = ".implicit-bias.owner"
REPORT_DIR = "report"
#: what ``--overwrite`` removes: the entries this tool writes, nothing else
_OWN_ENTRIES = (MARKER_FILE, CONFIG_FILE, CHUNK_DIR, DATA_DIR, REPORT_DIR)
#: entries that do not make a folder "not empty" (a lock taken before the marker was written)
_LOCK_ENTRIES = (LOCK_FILE, OWNER_FILE)
_CHUNK_NAME = re.compile(r"^g(\d+)-c(\d+)\.nc$")

#: Test hook: seconds to sleep after a chunk's temporary file is written and
#: before it is renamed into place (the fault tests kill -9 a run there).
_WRITE_DELAY_ENV = "IMPLICIT_BIAS_TEST_WRITE_DELAY"


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
def is_results_folder(out: Path) -> bool:
    """Whether ``out`` was written by this tool: our marker, or (written before the
    marker existed) a ``config.yaml`` with its ``config_hash`` beside ``chunks/``."""
    out = Path(out)
    if (out / MARKER_FILE).is_file():
        return True
    if not (out / CHUNK_DIR).is_dir():
        return False
    return _config_hash_of(out) is not None


def _config_hash_of(out: Path) -> str | None:
    try:
        old = yaml.safe_load((out / CONFIG_FILE).read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None
    return old.get("config_hash") if isinstance(old, dict) else None


def _marker(out: Path) -> dict[str, Any]:
    """The folder's marker record (``{}`` when absent or unreadable)."""
    try:
        rec = json.loads((Path(out) / MARKER_FILE).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return rec if isinstance(rec, dict) else {}


def folder_config_hash(out: Path) -> str | None:
    """The config hash a results folder was made for: its marker's record, else
    (a folder from before the marker) its ``config.yaml``'s."""
    return _marker(out).get("config_hash") or _config_hash_of(Path(out))


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _check_subfolders(out: Path, remove: bool = False) -> None:
    """Refuse (or with ``remove``, delete) a ``chunks``/``data`` entry that is not a folder."""
    for sub in (CHUNK_DIR, DATA_DIR):
        p = out / sub
        if p.exists() and not p.is_dir():
            if remove:
                p.unlink()
                continue
            raise UserInputError(
                f"{p} is not a folder: the results folder is damaged; start it again with "
                "--overwrite, or use another --out"
            )


def check_writable_folder(out: Path) -> None:
    """Refuse a path that is a file, or a non-empty folder this tool did not write.

    Raises:
        UserInputError: ``out`` is a file, or a folder with other content (even
            under ``--overwrite``: only folders of ours are ever replaced).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserInputError(f"results path is a file, not a folder: {out}")
    if not out.is_dir() or is_results_folder(out):
        return
    if any(p.name not in _LOCK_ENTRIES for p in out.iterdir()):
        raise UserInputError(
            f"{out} is not empty and is not an implicit-bias results folder; refusing to "
            "write into it (with or without --overwrite): choose a new or empty --out"
        )


def prepare_folder(out: Path, cfg: ExperimentConfig, overwrite: bool) -> None:
    """Create ``out`` for ``cfg``, or check that it already belongs to ``cfg``.

    Raises:
        UserInputError: the folder is not ours (see :func:`check_writable_folder`),
            or holds results of another config (and not ``overwrite``).
    """
    out = Path(out)
    check_writable_folder(out)
    cfg_path = out / CONFIG_FILE
    if out.is_dir() and is_results_folder(out):
        # a config.yaml that was deleted or mangled is rewritten from the marker's record
        old_hash = folder_config_hash(out)
        if old_hash != cfg.config_hash():
            if not overwrite:
                what = f"holds another config (hash {old_hash})"
                if not old_hash:
                    what = f"has lost the record of its config ({CONFIG_FILE} and marker)"
                raise UserInputError(
                    f"results folder {out} {what}; use --overwrite or another --out"
                )
            _clear(out)
        _check_subfolders(out, remove=overwrite)
    # marker first: a run killed at any point below leaves a folder that is ours (the
    # marker records the config.yaml it goes with, so an edited one is noticed, and a
    # missing one is rewritten by the same run)
    out.mkdir(parents=True, exist_ok=True)
    text = to_yaml(cfg, {"config_hash": cfg.config_hash()})
    marker = {
        "tool": "implicit-bias",
        "version": _version(),
        "config_hash": cfg.config_hash(),
        "config_sha256": _sha256_text(text),
    }
    _atomic_write_text(out / MARKER_FILE, json.dumps(marker, sort_keys=True) + "\n")
    if not cfg_path.is_file() or cfg_path.read_text() != text:
        _atomic_write_text(cfg_path, text)
    (out / CHUNK_DIR).mkdir(exist_ok=True)
    (out / DATA_DIR).mkdir(exist_ok=True)


def _version() -> str:
    from . import __version__

    return __version__


def _clear(out: Path) -> None:
    """Remove what this tool writes in ``out`` (and its temporary files); keep the rest."""
    for child in out.iterdir():
        if child.name not in _OWN_ENTRIES and not child.name.endswith(".tmp"):
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.{_tmp_tag()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _tmp_tag() -> str:
    """Unique per process and call: two writers never share a temporary file."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def folder_lock(out: Path) -> Iterator[None]:
    """Hold the one-writer lock of results folder ``out`` (created if missing).

    Does not wait: a folder in use is an error naming its holder. The lock is
    an OS lock (:class:`filelock.FileLock`), released when the holder exits or
    is killed.

    Raises:
        UserInputError: ``out`` is not ours (:func:`check_writable_folder`), or
            another process holds its lock.
    """
    from filelock import FileLock, Timeout

    out = Path(out)
    check_writable_folder(out)  # before creating anything in a folder that is not ours
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UserInputError(f"results path is a file, not a folder: {out}") from None
    lock = FileLock(out / LOCK_FILE, timeout=0, thread_local=False)
    try:
        lock.acquire()
    except Timeout:
        try:
            holder = (out / OWNER_FILE).read_text().strip()
        except OSError:
            holder = "another process"
        raise UserInputError(
            f"results folder {out} is in use by {holder or 'another process'}; "
            "wait for that run to finish, or use another --out"
        ) from None
    try:
        _atomic_write_text(out / OWNER_FILE, f"pid {os.getpid()} on host {socket.gethostname()}")
        yield
    finally:
        with contextlib.suppress(OSError):
            (out / OWNER_FILE).unlink()
        lock.release()


def remove_stale_tmp(out: Path) -> None:
    """Delete temporary files a killed writer left in ``chunks/`` (call under the lock)."""
    d = Path(out) / CHUNK_DIR
    if d.is_dir():
        for p in d.glob("*.tmp"):
            with contextlib.suppress(OSError):
                p.unlink()


def done_chunks(out: Path) -> set[str]:
    """Names of the chunk files present (not verified: see :func:`verified_chunks`)."""
    d = Path(out) / CHUNK_DIR
    return {p.name for p in d.glob("*.nc")} if d.exists() else set()


# ------------------------------------------------------------- verification
def chunk_checksum(ds: xr.Dataset) -> str:
    """sha256 of a chunk's content: every variable and coordinate (name, dims,
    values) and the ``group``, ``chunk`` and ``runs`` attributes.

    Values are hashed in a canonical form that survives the netCDF round trip
    (floats as little-endian float64, integers as int64, booleans as bytes,
    strings as UTF-8), so the sum of a chunk read back equals the sum of the
    chunk written.
    """
    h = hashlib.sha256()
    for key in ("group", "chunk", "runs"):
        h.update(f"{key}={ds.attrs.get(key)!s}\n".encode())
    if "config_hash" in ds.attrs:  # chunks written before it was recorded keep their sums
        h.update(f"config_hash={ds.attrs['config_hash']!s}\n".encode())
    for name in sorted(map(str, ds.variables)):
        var = ds.variables[name]
        vals = np.asarray(var.values)
        h.update(f"{name}:{','.join(map(str, var.dims))}:{vals.shape}:".encode())
        kind = vals.dtype.kind
        if kind in "OUS":
            h.update(b"s" + "\x1f".join(str(v) for v in vals.ravel()).encode())
        elif kind == "b":
            h.update(b"b" + np.ascontiguousarray(vals, dtype=np.uint8).tobytes())
        elif kind in "iu":
            h.update(b"i" + np.ascontiguousarray(vals, dtype="<i8").tobytes())
        elif kind == "f":
            h.update(b"f" + np.ascontiguousarray(vals, dtype="<f8").tobytes())
        else:
            h.update(kind.encode() + np.ascontiguousarray(vals).tobytes())
        h.update(b"\n")
    return h.hexdigest()


def _parse_name(name: str) -> tuple[int, int] | None:
    m = _CHUNK_NAME.match(name)
    return (int(m.group(1)), int(m.group(2))) if m else None


def read_chunk(
    path: Path, runs: Iterable[int] | None = None, config_hash: str | None = None
) -> tuple[xr.Dataset | None, str]:
    """Open a chunk file and check it: returns ``(dataset, "")``, or ``(None, why)``.

    Checks that the file opens, that its ``group``/``chunk`` attributes match its
    name, that its ``run`` coordinate matches its ``runs`` attribute (and
    ``runs`` when given: the plan's), that it was made for ``config_hash``
    (when given, and recorded in the chunk), and its ``sha256``. A chunk
    written before checksums existed (no ``sha256``) is checked for its place only.
    """
    path = Path(path)
    place = _parse_name(path.name)
    if place is None:
        return None, "is not named like a chunk (g<group>-c<chunk>.nc)"
    try:
        with xr.open_dataset(path, engine="h5netcdf") as opened:
            ds = opened.load()
    except Exception as err:  # any failure to read is a damaged chunk
        return None, f"does not open ({type(err).__name__})"
    try:
        got = (int(ds.attrs["group"]), int(ds.attrs["chunk"]))
    except (KeyError, TypeError, ValueError):
        return None, "has no group/chunk attributes"
    if got != place:
        return None, f"holds chunk g{got[0]:03d}-c{got[1]:05d}, not its own"
    have = [int(r) for r in np.asarray(ds["run"].values)] if "run" in ds.coords else []
    if "runs" in ds.attrs:
        try:
            recorded = [int(r) for r in json.loads(str(ds.attrs["runs"]))]
        except (TypeError, ValueError):
            return None, "has an unreadable runs attribute"
        if recorded != have:
            return None, f"holds runs {have}, its attributes say {recorded}"
    if runs is not None and list(runs) != have:
        return None, f"holds runs {have}, not the planned {list(runs)}"
    theirs = ds.attrs.get("config_hash")
    if config_hash and theirs and str(theirs) != config_hash:
        return None, f"belongs to another config (hash {theirs}, this folder's is {config_hash})"
    if "sha256" in ds.attrs and chunk_checksum(ds) != ds.attrs["sha256"]:
        return None, "fails its checksum (sha256)"
    return ds, ""


def verified_chunks(out: Path, plans: Iterable[ChunkPlan]) -> set[str]:
    """The planned chunks of ``out`` that pass :func:`read_chunk`; every other
    ``.nc`` file in ``chunks/`` is named in one :class:`ChunkWarning` and
    removed, so that the run redoes it (call under :func:`folder_lock`)."""
    d = Path(out) / CHUNK_DIR
    planned = {p.filename: p for p in plans}
    mine = folder_config_hash(Path(out))
    good: set[str] = set()
    bad: list[str] = []
    for f in sorted(d.glob("*.nc")) if d.is_dir() else []:
        plan = planned.get(f.name)
        if plan is None:
            why = "is not a chunk of this config's plan"
        else:
            _, why = read_chunk(f, plan.runs, mine)
        if why:
            bad.append(f"{f.name} {why}")
            f.unlink()
        else:
            good.add(f.name)
    if bad:
        warnings.warn(
            f"{len(bad)} damaged chunk(s) in {d} removed and redone: " + "; ".join(bad),
            ChunkWarning,
            stacklevel=2,
        )
    return good


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
        # (out, in) for a matrix, (out,) for a bias, more axes for e.g. a convolution
        axes = ["out", "in"] + [f"dim{i}" for i in range(2, arr.ndim - 1)]
        data_vars[name] = (("run", *(f"{layer}_{a}" for a in axes[: arr.ndim - 1])), arr)
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
    """Write one chunk atomically: to a temporary file unique to this process, fsync, rename.

    Records ``group``, ``chunk``, ``runs`` and ``sha256`` (:func:`chunk_checksum`)
    in the chunk's attributes.
    """
    final = Path(out) / CHUNK_DIR / plan.filename
    tmp = final.with_name(f"{final.name}.{_tmp_tag()}.tmp")
    ds = ds.copy()
    ds.attrs.update(
        group=int(plan.group), chunk=int(plan.chunk), runs=json.dumps([int(r) for r in plan.runs])
    )
    mine = folder_config_hash(Path(out))
    if mine:  # a chunk copied into another results folder is then told apart
        ds.attrs["config_hash"] = mine
    ds.attrs["sha256"] = chunk_checksum(ds)
    # Compress the traces (NaN after divergence, slowly varying); data and weights
    # are random-looking floats that zlib shrinks by ≈ 3 % at ≈ 25 MB/s (measured):
    # not worth 0.2 s on Frei et al.-sized data.
    enc = {
        v: {"zlib": True, "complevel": 1}
        for v in ds.data_vars
        if ds[v].dtype.kind == "f" and ("iteration" in ds[v].dims or "step" in ds[v].dims)
    }
    try:
        ds.to_netcdf(tmp, engine="h5netcdf", encoding=enc, invalid_netcdf=True)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        delay = os.environ.get(_WRITE_DELAY_ENV)
        if delay:
            import time

            time.sleep(float(delay))
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final


# ----------------------------------------------------------------- reading
def open_results(path: str | Path) -> xr.DataTree:
    """Open a results folder as an ``xarray.DataTree``.

    One child node per group of runs that share shapes (``group_000``, …), each
    a Dataset with dim ``run`` concatenated over the group's finished chunks.
    The root carries the resolved config (``attrs['config']``) and the folder (``attrs['path']``).

    Every chunk is checked (:func:`read_chunk`) before it is used.

    Raises:
        UserInputError: the folder is missing or holds no results, or a chunk is
            damaged (names the files and the command that redoes them).
    """
    out = Path(path)
    redo = f"run the command that made the folder again: implicit-bias run <config> --out {out}"
    if not (out / CONFIG_FILE).is_file():
        if is_results_folder(out):
            raise UserInputError(
                f"results folder {out} has lost its {CONFIG_FILE}; to restore it, {redo}"
            )
        raise UserInputError(f"not a results folder (no {CONFIG_FILE}): {out}")
    text = (out / CONFIG_FILE).read_text(errors="replace")
    recorded = _marker(out).get("config_sha256")
    if recorded and recorded != _sha256_text(text):
        raise UserInputError(
            f"{out / CONFIG_FILE} was changed after the run (it no longer matches the "
            f"folder's record, so it may not describe these results); to restore it, {redo}"
        )
    _check_subfolders(out)
    files = sorted((out / CHUNK_DIR).glob("*.nc"))
    if not files:
        raise UserInputError(f"no finished chunks in {out} yet; to make them, {redo}")
    mine = folder_config_hash(out)
    groups: dict[int, list[xr.Dataset]] = {}
    bad: list[str] = []
    owner: dict[tuple[int, int], str] = {}  # (group, run) -> file: a run in two chunks
    for f in files:
        ds, why = read_chunk(f, config_hash=mine)
        if ds is None:
            bad.append(f"{f.name} {why}")
            continue
        g = int(ds.attrs["group"])
        for r in np.asarray(ds["run"].values).tolist():
            if (g, r) in owner:
                bad.append(f"{f.name} repeats run {r} of {owner[(g, r)]}")
                break
            owner[(g, r)] = f.name
        groups.setdefault(g, []).append(ds)
    if bad:
        raise UserInputError(
            f"damaged chunk(s) in {out / CHUNK_DIR}: {'; '.join(bad)}; to redo them, {redo}"
        )
    children: dict[str, xr.Dataset] = {}
    for g, parts in sorted(groups.items()):
        children[f"group_{g:03d}"] = _concat_chunks(parts)
    root = xr.Dataset(
        attrs={
            "config": text,
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
