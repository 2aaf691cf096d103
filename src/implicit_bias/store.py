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
no longer describe the chunks), and the same ``run`` rewrites it. For a config
that reads data files it also records ``data_base_dir``, the absolute folder
its relative ``data.path``/``data.labels`` were resolved against, so that the
folder's ``config.yaml`` (which lives elsewhere) reads the same files when run
again (:func:`data_base_dir`); the config hash does not change.

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
import socket
import sys
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr
import yaml

from ._atomic import atomic_write_bytes
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
CHUNKING_FILE = "chunking.json"
#: the list of files ``report`` wrote in ``report/`` (what ``--overwrite`` removes there)
REPORT_MANIFEST = ".implicit-bias-report.json"
#: files of the folder this tool writes (``--overwrite`` removes these, by name)
_OWN_FILES = (MARKER_FILE, CONFIG_FILE, CHUNKING_FILE)
#: entries that do not make a folder "not empty" (a lock taken before the marker was written)
_LOCK_ENTRIES = (LOCK_FILE, OWNER_FILE)
#: entries of the folder that must never be symbolic links: the tool reads, writes or
#: deletes through them, and a link would take that outside the folder
_NO_LINKS = (*_OWN_FILES, CHUNK_DIR, DATA_DIR, REPORT_DIR, *_LOCK_ENTRIES)
_CHUNK_NAME = re.compile(r"^g(\d+)-c(\d+)\.nc$")
_DATA_NAME = re.compile(r"^[0-9a-f]{8,64}\.npz$")
#: the temporary files this tool writes: ``<final name>.<host>-<pid>-<8 hex>.tmp``
_TMP_NAME = re.compile(r"^(?P<final>.+)\.[^/]*-\d+-[0-9a-f]{8}\.tmp$")
#: most bytes of arrays a chunk file may declare per byte of file (zlib at level 1
#: shrinks the NaN tails of diverged runs about 100-fold, never 1000-fold)
MAX_EXPANSION = 1000
#: how chunks are signed: 2 = the sha256 covers every attribute (group_config,
#: data_*, …); a folder whose marker records it refuses chunks signed otherwise
CHUNK_FORMAT = 2

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
    if _is_file(out / MARKER_FILE):
        return True
    if not (out / CHUNK_DIR).is_dir():
        return False
    return _config_hash_of(out) is not None


def _is_file(p: Path) -> bool:
    """A regular file itself, not a symbolic link to one."""
    return p.is_file() and not p.is_symlink()


def check_no_links(out: Path) -> None:
    """Refuse a results folder where an entry the tool uses is a symbolic link.

    The tool reads, writes and deletes files by these names; through a link it
    would do so outside the folder (a received folder can carry such links).

    Raises:
        UserInputError: naming the link.
    """
    out = Path(out)
    for name in _NO_LINKS:
        if (out / name).is_symlink():
            raise UserInputError(
                f"{out / name} is a symbolic link; refusing to follow it out of the results "
                f"folder: remove the link (or copy what it points to into {out})"
            )


def _read_text(p: Path, limit: int = 1 << 20) -> str:
    """The text of a small regular file of the folder (never through a link).

    Raises:
        OSError: absent, a link, not a regular file, or larger than ``limit``.
    """
    if p.is_symlink() or not p.is_file():
        raise FileNotFoundError(p)
    with open(p, "rb") as fh:
        blob = fh.read(limit + 1)
    if len(blob) > limit:
        raise OSError(f"{p} is larger than {limit} bytes")
    return blob.decode("utf-8", errors="replace")


def _config_yaml(out: Path) -> dict[str, Any] | None:
    """The folder's ``config.yaml`` as a mapping, or None (absent, a link, not YAML)."""
    from .config_yaml import _load_yaml

    try:
        old = _load_yaml(_read_text(Path(out) / CONFIG_FILE))
    except (OSError, yaml.YAMLError, UnicodeDecodeError, ValueError):
        return None
    return old if isinstance(old, dict) else None


def _config_hash_of(out: Path) -> str | None:
    old = _config_yaml(out)
    h = old.get("config_hash") if old is not None else None
    return h if isinstance(h, str) else None


def config_yaml_matches_hash(out: Path) -> bool:
    """Whether ``config.yaml`` still describes the config its ``config_hash`` line names
    (the check of a folder without a marker: a hand edit that kept the hash line)."""
    from pydantic import ValidationError

    old = _config_yaml(out)
    if old is None or not isinstance(old.get("config_hash"), str):
        return False
    raw = {k: v for k, v in old.items() if k != "config_hash"}
    try:
        return ExperimentConfig.model_validate(raw).config_hash() == old["config_hash"]
    except (ValidationError, ValueError, TypeError, RecursionError):
        return False


def _marker(out: Path) -> dict[str, Any]:
    """The folder's marker record (``{}`` when absent or unreadable)."""
    try:
        rec = json.loads(_read_text(Path(out) / MARKER_FILE))
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return rec if isinstance(rec, dict) else {}


def _signing(out: Path) -> tuple[bool, bool]:
    """``(signed, whole)``: whether the folder's chunks must carry a ``sha256`` (a
    folder with a marker) and must be signed over every attribute (a marker of
    :data:`CHUNK_FORMAT` 2 or later)."""
    rec = _marker(out)
    if not rec:
        return False, False
    fmt = rec.get("chunk_format")
    return True, isinstance(fmt, int) and fmt >= CHUNK_FORMAT


def folder_config_hash(out: Path) -> str | None:
    """The config hash a results folder was made for: its marker's record, else
    (a folder from before the marker) its ``config.yaml``'s."""
    return _marker(out).get("config_hash") or _config_hash_of(Path(out))


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _check_subfolders(out: Path, remove: bool = False) -> None:
    """Refuse (or with ``remove``, delete) a ``chunks``/``data`` entry that is not a
    folder, and a ``config.yaml``/``chunking.json`` that is not a file."""
    check_no_links(out)
    for sub, want_dir in ((CHUNK_DIR, True), (DATA_DIR, True), (CHUNKING_FILE, False)):
        p = out / sub
        if not p.exists() or p.is_dir() == want_dir:
            continue
        if remove and not p.is_dir():
            p.unlink()
            continue
        if remove and not any(p.iterdir()):
            p.rmdir()
            continue
        what = "a folder" if want_dir else "a file"
        raise UserInputError(
            f"{p} is not {what}: the results folder is damaged; "
            + (
                "start it again with --overwrite, or use another --out"
                if not remove
                else f"move {p} away (it is not something this tool wrote)"
            )
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
    if not out.is_dir():
        return
    check_no_links(out)
    if is_results_folder(out):
        return
    if any(p.name not in _LOCK_ENTRIES for p in out.iterdir()):
        raise UserInputError(
            f"{out} is not empty and is not an implicit-bias results folder; refusing to "
            "write into it (with or without --overwrite): choose a new or empty --out"
        )


def prepare_folder(
    out: Path,
    cfg: ExperimentConfig,
    overwrite: bool,
    grow: bool = False,
    base_dir: Path | None = None,
) -> None:
    """Create ``out`` for ``cfg``, or check that it already belongs to ``cfg``.

    With ``grow``, a folder of another config is taken over for ``cfg`` without
    removing anything (:mod:`implicit_bias.grow` has checked that ``cfg`` only
    adds values to its sweep, and rewrites its chunks).

    Args:
        base_dir: where ``cfg``'s relative data paths were resolved; recorded in
            the marker when ``cfg`` reads data files (None keeps the recorded one).

    Raises:
        UserInputError: the folder is not ours (see :func:`check_writable_folder`),
            or holds results of another config (and not ``overwrite``).
    """
    out = Path(out)
    check_writable_folder(out)
    cfg_path = out / CONFIG_FILE
    fmt: int | None = CHUNK_FORMAT
    if base_dir is None:
        base_dir = data_base_dir(out)
    if out.is_dir() and is_results_folder(out):
        # a config.yaml that was deleted or mangled is rewritten from the marker's record
        old_hash = folder_config_hash(out)
        if old_hash and not _marker(out) and not config_yaml_matches_hash(out):
            old_hash = None  # no marker, and config.yaml edited under its hash line
        if old_hash != cfg.config_hash() and not grow:
            if not overwrite:
                what = f"holds another config (hash {old_hash})"
                if not old_hash:
                    what = (
                        f"has lost the record of its config ({CONFIG_FILE} and marker, "
                        f"or a {CONFIG_FILE} edited by hand)"
                    )
                raise UserInputError(
                    f"results folder {out} {what}; use --overwrite or another --out"
                )
            _clear(out)
        elif not grow:
            # a folder whose chunks were signed the older way keeps that (its chunks
            # stay valid); new chunks are signed over every attribute all the same
            old = _marker(out)
            if old or any((out / CHUNK_DIR).glob("*.nc")):
                fmt = old.get("chunk_format") if isinstance(old.get("chunk_format"), int) else None
        _check_subfolders(out, remove=overwrite)
    # marker first: a run killed at any point below leaves a folder that is ours (the
    # marker records the config.yaml it goes with, so an edited one is noticed, and a
    # missing one is rewritten by the same run)
    out.mkdir(parents=True, exist_ok=True)
    text = to_yaml(cfg, {"config_hash": cfg.config_hash()})
    marker: dict[str, Any] = {
        "tool": "implicit-bias",
        "version": _version(),
        "config_hash": cfg.config_hash(),
        "config_sha256": _sha256_text(text),
    }
    if fmt is not None:
        marker["chunk_format"] = fmt
    if base_dir is not None and reads_data_files(cfg):
        marker[DATA_BASE_KEY] = str(Path(base_dir).resolve())
    _atomic_write_text(out / MARKER_FILE, json.dumps(marker, sort_keys=True) + "\n")
    try:
        same = _read_text(cfg_path) == text
    except OSError:
        same = False
    if not same:
        _atomic_write_text(cfg_path, text)
    (out / CHUNK_DIR).mkdir(exist_ok=True)
    (out / DATA_DIR).mkdir(exist_ok=True)


#: the marker's record of where relative data paths were resolved
DATA_BASE_KEY = "data_base_dir"


def reads_data_files(cfg: ExperimentConfig) -> bool:
    """Whether ``cfg`` (or a point of its sweep) may read a data file by path."""
    return cfg.data.kind in ("file", "torchvision") or any(
        k == "data" or k.startswith("data.") for k in map(str, cfg.sweep)
    )


def data_base_dir(out: Path) -> Path | None:
    """The folder a results folder's relative data paths were resolved against, as
    its marker records it (None: no record, or that folder is gone)."""
    if not _is_file(Path(out) / MARKER_FILE):
        return None
    rec = _marker(out).get(DATA_BASE_KEY)
    if not isinstance(rec, str) or not Path(rec).is_absolute() or not Path(rec).is_dir():
        return None
    return Path(rec)


def _version() -> str:
    from . import __version__

    return __version__


def _is_own_tmp(name: str, finals: Iterable[str] | re.Pattern[str]) -> bool:
    """Whether ``name`` is a temporary file this tool writes for one of ``finals``."""
    m = _TMP_NAME.match(name)
    if m is None:
        return False
    final = m.group("final")
    if isinstance(finals, re.Pattern):
        return finals.match(final) is not None
    return final in finals


def _clear(out: Path) -> None:
    """Remove what this tool wrote in ``out``, by name; keep everything else.

    Its files (marker, ``config.yaml``, ``chunking.json``) and their temporary
    files; in ``chunks/`` and ``data/`` the files named like a chunk or a data
    set (and their temporary files); in ``report/`` the files its manifest lists.
    A sub-folder is removed only once empty: a user's notes there stay.
    """
    check_no_links(out)
    for child in out.iterdir():
        if child.name in _OWN_FILES or _is_own_tmp(child.name, (*_OWN_FILES, OWNER_FILE)):
            if not child.is_dir():
                child.unlink()
    for sub, pattern in ((CHUNK_DIR, _CHUNK_NAME), (DATA_DIR, _DATA_NAME)):
        d = out / sub
        if not d.is_dir():
            continue
        for child in d.iterdir():
            own = pattern.match(child.name) or _is_own_tmp(child.name, pattern)
            if own and not child.is_dir():
                child.unlink()
        _rmdir_if_empty(d)
    remove_report_files(out / REPORT_DIR)


def report_manifest(report: Path) -> list[str]:
    """Names of the files ``report`` wrote in ``report`` (from its manifest)."""
    try:
        names = json.loads(_read_text(report / REPORT_MANIFEST))
    except (OSError, ValueError):
        return []
    if not isinstance(names, list):
        return []
    return [n for n in names if isinstance(n, str) and n and "/" not in n and n not in (".", "..")]


def remove_report_files(report: Path) -> None:
    """Remove the files a previous ``report`` wrote in ``report`` (by its manifest),
    the manifest, and the folder if nothing else is left in it."""
    if report.is_symlink() or not report.is_dir():
        return
    for name in report_manifest(report):
        p = report / name
        if p.is_symlink() or p.is_file():
            p.unlink()
    for child in report.iterdir():
        if child.name == REPORT_MANIFEST or _is_own_tmp(child.name, re.compile(r".*")):
            if not child.is_dir():
                child.unlink()
    _rmdir_if_empty(report)


def _rmdir_if_empty(d: Path) -> None:
    with contextlib.suppress(OSError):
        d.rmdir()


def _atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8", errors="surrogateescape"))


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
    except PermissionError:
        raise UserInputError(
            f"cannot take the lock {out / LOCK_FILE} (permission denied: another user's "
            "folder, or a read-only one); use another --out"
        ) from None
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
    for sub, pattern in ((CHUNK_DIR, _CHUNK_NAME), (DATA_DIR, _DATA_NAME)):
        d = Path(out) / sub
        if d.is_dir() and not d.is_symlink():
            for p in d.glob("*.tmp"):
                if _is_own_tmp(p.name, pattern):
                    with contextlib.suppress(OSError):
                        p.unlink()


def done_chunks(out: Path) -> set[str]:
    """Names of the chunk files present (not verified: see :func:`verified_chunks`)."""
    return {p.name for p in _chunk_files(Path(out) / CHUNK_DIR)}


def _chunk_files(d: Path) -> list[Path]:
    """The entries of ``chunks/`` named like a chunk (other files there are not ours:
    never read, never removed)."""
    if d.is_symlink() or not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if _CHUNK_NAME.match(p.name))


# ---------------------------------------------------------------- chunking
def read_chunking(out: Path) -> dict[str, dict[int, int]] | None:
    """The folder's ``chunking.json``: ``{"chunk_runs": {group: runs per chunk},
    "group_runs": {group: runs}}`` (``group_runs`` may be empty: older folders),
    or None when absent or not a well-formed record (a damaged record is not
    trusted: the sizes are then read off the chunks)."""
    try:
        raw = json.loads(_read_text(Path(out) / CHUNKING_FILE))
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict):
        return None
    rec: dict[str, dict[int, int]] = {}
    for key in ("chunk_runs", "group_runs"):
        part = raw.get(key, {})
        if not isinstance(part, dict) or (key == "chunk_runs" and not part):
            return None
        try:
            sizes = {int(g): k for g, k in part.items()}
        except (TypeError, ValueError):
            return None
        if not all(type(k) is int and k > 0 and g >= 0 for g, k in sizes.items()):
            return None
        rec[key] = sizes
    return rec


def write_chunking(out: Path, chunk_runs: dict[int, int], group_runs: dict[int, int]) -> None:
    """Record the chunk sizes (and the planned runs) of each group in ``chunking.json``."""
    text = json.dumps(
        {
            "chunk_runs": {str(g): int(k) for g, k in chunk_runs.items()},
            "group_runs": {str(g): int(k) for g, k in group_runs.items()},
        },
        indent=1,
    )
    _atomic_write_text(Path(out) / CHUNKING_FILE, text + "\n")


def chunk_run_count(out: Path, group: int, verify_hash: str | None = None) -> int | None:
    """Runs in chunk 0 of ``group`` (None: absent or unreadable). With
    ``verify_hash``, only a chunk that passes :func:`read_chunk` counts."""
    f = Path(out) / CHUNK_DIR / ChunkPlan(group=group, chunk=0, runs=()).filename
    if f.is_symlink() or not f.is_file():
        return None
    if verify_hash is not None:
        ds, _ = read_chunk(f, config_hash=verify_hash, signing=_signing(Path(out)))
        return None if ds is None else int(ds.sizes["run"])
    import h5py

    try:
        with h5py.File(f, "r") as h:
            return int(h["run"].shape[0])
    except Exception:  # absent, damaged or foreign: verification will redo it
        return None


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
    if str(ds.attrs.get("checksum_scope")) == "all":
        # every attribute but the sum itself: a flipped group_config or data_* attribute
        # would otherwise describe another net than the one these runs trained
        for key in sorted(k for k in ds.attrs if k != "sha256"):
            h.update(f"{key}={_canonical_attr(ds.attrs[key])}\n".encode())
    else:  # chunks signed before the scope was widened keep their sums
        for key in ("group", "chunk", "runs"):
            h.update(f"{key}={ds.attrs.get(key)!s}\n".encode())
        if "config_hash" in ds.attrs:
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


def _canonical_attr(value: Any) -> str:
    """An attribute's value in a form that survives the netCDF round trip."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, bool):
        value = int(value)
    return json.dumps(value, sort_keys=True, default=str)


def _parse_name(name: str) -> tuple[int, int] | None:
    m = _CHUNK_NAME.match(name)
    return (int(m.group(1)), int(m.group(2))) if m else None


def read_chunk(
    path: Path,
    runs: Iterable[int] | None = None,
    config_hash: str | None = None,
    signing: tuple[bool, bool] = (False, False),
) -> tuple[xr.Dataset | None, str]:
    """Open a chunk file and check it: returns ``(dataset, "")``, or ``(None, why)``.

    Checks that the file is a regular file (not a link), opens, that its
    ``group``/``chunk`` attributes match its name, that it has a ``run``
    coordinate matching its ``runs`` attribute (and ``runs`` when given: the
    plan's), that it was made for ``config_hash`` (when given, and recorded in
    the chunk), and its ``sha256``. ``signing`` is the folder's
    :func:`_signing`: in a folder with a marker a chunk must be signed (and
    carry its ``config_hash``, signed over every attribute, where the marker
    says so); a chunk of a folder from before checksums is checked for its place only.
    """
    path = Path(path)
    place = _parse_name(path.name)
    if place is None:
        return None, "is not named like a chunk (g<group>-c<chunk>.nc)"
    if path.is_symlink() or not path.is_file():
        return None, "is not a regular file (a link, or a folder)"
    try:
        with xr.open_dataset(path, engine="h5netcdf") as opened:
            # a small file that declares huge arrays (a forged or corrupt header) is
            # refused before its arrays are allocated
            declared, size = int(opened.nbytes), path.stat().st_size
            if declared > MAX_EXPANSION * size + (64 << 20):
                return None, (
                    f"declares {declared:.3g} bytes of arrays in a file of {size} bytes "
                    "(damaged or forged)"
                )
            ds = opened.load()
    except Exception as err:  # any failure to read is a damaged chunk
        return None, f"does not open ({type(err).__name__})"
    try:
        got = (int(ds.attrs["group"]), int(ds.attrs["chunk"]))
    except (KeyError, TypeError, ValueError):
        return None, "has no group/chunk attributes"
    if got != place:
        return None, f"holds chunk g{got[0]:03d}-c{got[1]:05d}, not its own"
    if "run" not in ds.coords or ds["run"].dims != ("run",) or ds.sizes["run"] == 0:
        return None, "has no runs (no run coordinate)"
    try:
        have = [int(r) for r in np.asarray(ds["run"].values)]
    except (TypeError, ValueError):
        return None, "has an unreadable run coordinate"
    missing = [v for v in ("X_train", "y_train", "X_test", "y_test") if v not in ds]
    if missing:
        return None, f"has no {', '.join(missing)} (a chunk keeps its runs' data)"
    from .results_data import draws_ok

    if not draws_ok(ds):
        return None, "has a data_draw index that names no data set of its draw dim"
    signed, whole = signing
    if signed and "sha256" not in ds.attrs:
        return None, "is not signed (no sha256), in a folder whose chunks all are"
    if whole and (str(ds.attrs.get("checksum_scope")) != "all" or "config_hash" not in ds.attrs):
        return None, "is not signed over its attributes and config, as this folder's chunks are"
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
    if "sha256" in ds.attrs and chunk_checksum(ds) != str(ds.attrs["sha256"]):
        return None, "fails its checksum (sha256)"
    return ds, ""


def verified_chunks(out: Path, plans: Iterable[ChunkPlan]) -> set[str]:
    """The planned chunks of ``out`` that pass :func:`read_chunk`; every other
    ``.nc`` file in ``chunks/`` is named in one :class:`ChunkWarning` and
    removed, so that the run redoes it (call under :func:`folder_lock`)."""
    d = Path(out) / CHUNK_DIR
    planned = {p.filename: p for p in plans}
    mine = folder_config_hash(Path(out))
    signing = _signing(Path(out))
    good: set[str] = set()
    bad: list[str] = []
    for f in _chunk_files(d):
        plan = planned.get(f.name)
        if f.is_dir() and not f.is_symlink():
            raise UserInputError(
                f"{f} is a folder where a chunk belongs; it is not something this tool "
                "wrote: move it away and run again"
            )
        if plan is None:
            why = "is not a chunk of this config's plan"
        else:
            _, why = read_chunk(f, plan.runs, mine, signing)
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
    from .metrics import geometry_per_run

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
    ds = xr.Dataset(data_vars=data_vars, coords=coords)
    return with_chunk_data(ds, runs, plan, group_attrs)


def with_chunk_data(
    ds: xr.Dataset, runs: list[Any], plan: ChunkPlan, group_attrs: dict[str, Any]
) -> xr.Dataset:
    """``ds`` with the data of its ``runs`` (shared, or each distinct data set once on
    a ``draw`` dim: :mod:`implicit_bias.results_data`) and the chunk's attributes
    (group config, data fingerprint and geometry)."""
    from .metrics import data_geometry
    from .results_data import PER_DRAW, assign_data

    R = len(runs)
    # each distinct data set once: shared (no run dim) or on a draw dim (results_data)
    ds, fingerprint = assign_data(ds, [r.data for r in runs])
    shared = fingerprint != PER_DRAW
    ds.attrs = {
        "group": plan.group,
        "chunk": plan.chunk,
        "data_fingerprint": fingerprint,
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
    ds = ds.copy()
    ds.attrs.update(
        group=int(plan.group),
        chunk=int(plan.chunk),
        runs=json.dumps([int(r) for r in plan.runs]),
        checksum_scope="all",
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
    # encoded in memory, then written by plain file I/O: a full disk is then an
    # ordinary OSError, with no half-written HDF5 file left open in the library
    # (whose clean-up at exit crashed the process)
    with _local_scheduler():
        blob = ds.to_netcdf(None, engine="h5netcdf", encoding=enc, invalid_netcdf=True)
    delay = os.environ.get(_WRITE_DELAY_ENV)

    def pause(_tmp: Path) -> None:
        if delay:
            import time

            time.sleep(float(delay))

    atomic_write_bytes(final, blob, sync=True, before_rename=pause)
    return final


def _local_scheduler() -> contextlib.AbstractContextManager[Any]:
    """On a Dask worker, xarray would guard an in-memory write with a cluster-wide
    lock named after the buffer (unknown to the scheduler: the write fails); the
    buffer is this process's alone, so a local lock is right."""
    if "dask" not in sys.modules:
        return contextlib.nullcontext()
    import dask

    return dask.config.set(scheduler="synchronous")


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
    if out.is_dir():
        check_no_links(out)
    if not _is_file(out / CONFIG_FILE):
        if is_results_folder(out):
            raise UserInputError(
                f"results folder {out} has lost its {CONFIG_FILE}; to restore it, {redo}"
            )
        raise UserInputError(f"not a results folder (no {CONFIG_FILE}): {out}")
    text = _read_text(out / CONFIG_FILE, limit=1 << 30)
    marker = _marker(out)
    recorded = marker.get("config_sha256")
    if (recorded and recorded != _sha256_text(text)) or (
        not marker and not config_yaml_matches_hash(out)
    ):
        raise UserInputError(
            f"{out / CONFIG_FILE} was changed after the run (it no longer matches the "
            f"folder's record, so it may not describe these results); to restore it, {redo}"
        )
    _check_subfolders(out)
    files = _chunk_files(out / CHUNK_DIR)
    if not files:
        raise UserInputError(f"no finished chunks in {out} yet; to make them, {redo}")
    mine = folder_config_hash(out)
    signing = _signing(out)
    groups: dict[int, list[xr.Dataset]] = {}
    bad: list[str] = []
    owner: dict[tuple[int, int], str] = {}  # (group, run) -> file: a run in two chunks
    for f in files:
        ds, why = read_chunk(f, config_hash=mine, signing=signing)
        if ds is None:
            bad.append(f"{f.name} {why}")
            continue
        g = int(ds.attrs["group"])
        for r in np.asarray(ds["run"].values).tolist():
            if (g, r) in owner:
                bad.append(f"{f.name} repeats run {r} of {owner[(g, r)]}")
                break
            owner[(g, r)] = f.name
        if "run" in ds["X_train"].dims:  # the old layout: one copy per run, compacted now
            ds = _concat_chunks([ds])
        groups.setdefault(g, []).append(ds)
    if bad:
        raise UserInputError(
            f"damaged chunk(s) in {out / CHUNK_DIR}: {'; '.join(bad)}; to redo them, {redo}"
        )
    children: dict[str, xr.Dataset] = {}
    for g, parts in sorted(groups.items()):
        children[f"group_{g:03d}"] = _concat_chunks(parts)
    attrs: dict[str, Any] = {"config": text, "n_chunks": len(files), "path": str(out)}
    planned = read_chunking(out)
    if planned is not None and planned.get("group_runs"):
        # a partial folder (a run interrupted, or still going) says what it lacks
        attrs["n_runs_planned"] = int(sum(planned["group_runs"].values()))
        attrs["n_runs"] = len(owner)
    root = xr.Dataset(attrs=attrs)
    tree = xr.DataTree.from_dict({"/": root, **{f"/{k}": v for k, v in children.items()}})
    return tree


def _concat_chunks(parts: list[xr.Dataset]) -> xr.Dataset:
    """One group's chunks along ``run``, each distinct data set stored once."""
    from .results_data import merge_data

    return merge_data(parts, _concat_runs)


def _concat_runs(parts: list[xr.Dataset]) -> xr.Dataset:
    return xr.concat(
        parts,
        dim="run",
        data_vars="minimal",
        coords="minimal",
        compat="override",
        join="outer",
        combine_attrs="drop_conflicts",
    )
