"""Execute a sweep's plan (:mod:`.planning`) locally or on Dask, into a results folder.

Each chunk trains as one batched :class:`~.engine.Trainer` and is written
atomically (:mod:`.store`); a rerun finishes the missing chunks only.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from ._errors import ChunksFailed, UserInputError, disk_full, is_disk_full
from .config import ExperimentConfig, load_config
from .data import save_dataset
from .engine import RunSpec, Trainer
from .planning import (  # noqa: F401 - re-exported: the planning API lived here
    CHUNK_BYTES,
    MAX_CHUNK_RUNS,
    Plan,
    _Chunks,
    _fmt_seconds,
    _group_key,
    auto_chunk_runs,
    available_memory,
    available_ram,
    bench_record_path,
    check_data_size,
    chunk_budget,
    estimate_run_bytes,
    make_plan,
    settle_chunking,
)
from .progress import ProgressBoard, _progress
from .store import (
    CHUNKING_FILE,  # noqa: F401 - re-exported: where a folder records its chunking
    CONFIG_FILE,
    ChunkPlan,
    chunk_to_dataset,
    data_base_dir,
    done_chunks,
    folder_config_hash,
    folder_lock,
    prepare_folder,
    remove_stale_tmp,
    verified_chunks,
    write_chunk,
)

#: Dask re-runs a chunk this many times when it fails (a lost worker, a crash).
DASK_RETRIES = 2


def train_chunk(
    runs: list[RunSpec], chunk: ChunkPlan, group: dict[str, Any], out: Path, progress=None
) -> Path:
    """Train one chunk's runs and write the chunk atomically (locally or on a Dask worker).

    The chunk's ``train_seconds`` attribute is the wall time of the training
    itself (init, steps, eval metrics, final metrics; not imports or I/O).
    """
    t0 = time.perf_counter()
    res = Trainer(runs, progress=progress).train()
    seconds = time.perf_counter() - t0
    ds = chunk_to_dataset(res, chunk, group)
    ds.attrs["train_seconds"] = seconds
    return write_chunk(out, chunk, ds)


def config_base_dir(config: Any) -> Path:
    """Where the relative ``data.path``/``data.labels`` of ``config`` resolve.

    Against the config file's folder; for a mapping, the working directory. A
    results folder's own ``config.yaml`` resolves them where the config that made
    the folder did (its marker's record, :func:`implicit_bias.store.data_base_dir`),
    so ``run DIR/config.yaml --out NEW`` reads the same files from anywhere.
    """
    if not isinstance(config, str | Path):
        return Path.cwd()
    p = Path(config).resolve()
    if p.name == CONFIG_FILE:
        recorded = data_base_dir(p.parent)
        if recorded is not None:
            return recorded
    return p.parent


def run_sweep(
    config: str | Path | Mapping[str, Any] | ExperimentConfig,
    out: str | Path | None = None,
    overrides: Iterable[str] | Mapping[str, Any] | None = None,
    *,
    overwrite: bool = False,
    device: str | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: bool | ProgressBoard = False,
    echo: Callable[[str], None] | None = None,
):
    """Run every missing chunk of a config; return the results as a DataTree.

    This is :func:`implicit_bias.run`; the CLI's ``run`` verb calls it too.

    Args:
        progress: ``True`` for a progress bar over run-steps (rich, on stderr);
            a :class:`ProgressBoard` to show it on a display shared by several
            sweeps (``reproduce``).
        echo: called with the plan (one line) before any work starts.

    Raises:
        UserInputError: bad input, found before any results folder is written.
    """
    from .store import open_results

    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)):
        raise UserInputError(f"workers must be a whole number >= 1 (got {workers!r})")
    if workers is not None and workers < 1:
        raise UserInputError(f"workers must be >= 1 (got {workers})")
    if isinstance(overrides, str):  # one "key=value", not its characters
        overrides = [overrides]
    if device is not None:
        overrides = _with(overrides, "train.device", device)
    cfg = load_config(config, overrides)
    base_dir = config_base_dir(config)
    plan = make_plan(cfg, base_dir)  # all input errors surface here, before any folder exists
    if cfg.train.device == "cuda" and not scheduler:  # with --scheduler the workers have the GPUs
        from .engine import resolve_device

        resolve_device("cuda")
    if scheduler is not None:
        check_scheduler_address(scheduler)
    if out is None and (
        not cfg.name.strip() or cfg.name in (".", "..") or any(c in cfg.name for c in "/\\\0")
    ):
        raise UserInputError(
            f"name {cfg.name!r} is not a plain folder name, and the default results folder "
            "is results/<name>: choose a name without / or .., or give --out"
        )
    if isinstance(out, str) and not out.strip():  # Path("") would be the working directory
        raise UserInputError("out is empty: name a results folder ('.' for the current one)")
    out = Path(out) if out is not None else Path("results") / cfg.name
    done = settle_chunking(plan, out, write=False).chunks  # as the folder was cut
    assert isinstance(done, _Chunks)
    if _finished(out, cfg, done):
        # nothing left to do: read, never rewrite (the folder may be read-only); a
        # damaged chunk found on reading falls through to the repair below
        try:
            tree = open_results(out)
            if _complete(tree, len(plan.runs)):
                return tree
        except UserInputError:
            pass
    check_out_folder(out)
    # an unreachable scheduler is the user's error: found before the folder is written
    client = _connect(scheduler) if scheduler else None
    try:
        return _run_in_folder(plan, cfg, out, overwrite, workers, client, progress, echo, base_dir)
    finally:
        if client is not None:
            client.close()


def _run_in_folder(
    plan: Plan,
    cfg: ExperimentConfig,
    out: Path,
    overwrite: bool,
    workers: int | None,
    client: Any,
    progress: bool | ProgressBoard,
    echo: Callable[[str], None] | None,
    base_dir: Path | None = None,
) -> Any:
    """The locked part of :func:`run_sweep`: prepare ``out``, run its missing chunks."""
    from .store import open_results

    with folder_lock(out):  # one writer per folder; refuses folders that are not ours
        if not overwrite and _grows(out, cfg):
            from .grow import folder_config, grow_folder, value_positions

            old = folder_config(out)
            assert old is not None
            positions = value_positions(old, cfg)
            assert positions is not None
            if echo is not None:
                echo(f"{plan.summary()}; growing the sweep of {out}: only new runs are trained")
            grow_folder(plan, out, old, positions)
        prepare_folder(out, cfg, overwrite, base_dir=base_dir)
        plan = settle_chunking(plan, out)  # the chunking the folder was started with
        chunks = plan.chunks
        assert isinstance(chunks, _Chunks)
        remove_stale_tmp(out)
        ids = {ChunkPlan(g, c, ()).filename: (g, c) for g, c in chunks.ids()}
        present = done_chunks(out)
        # damaged or foreign chunks are named, removed and redone
        have = verified_chunks(out, [chunks.get(*ids[f]) for f in present if f in ids])
        todo_ids = [gc for f, gc in ids.items() if f not in have]
        if echo is not None:
            left = f"{len(todo_ids)} chunk(s) to run" if have else "starting"
            echo(f"{plan.summary()}; {left}")
        if todo_ids and (workers or client is not None):
            todo = [chunks.get(g, c) for g, c in todo_ids]
            for c in todo:
                _save_data(out, [plan.runs[i] for i in c.runs])
            _run_dask(plan, todo, out, workers, client, progress)
        elif todo_ids:
            _run_local(plan, todo_ids, out, progress)
        return open_results(out)


def _run_local(plan: Plan, todo_ids: list[tuple[int, int]], out: Path, progress) -> None:
    """Train the missing chunks one after the other in this process.

    As on Dask, a chunk that raises does not stop the others: the finished
    chunks are written and the failures are reported together at the end.

    Raises:
        ChunksFailed: naming every chunk that raised (chained to the first error).
    """
    chunks = plan.chunks
    assert isinstance(chunks, _Chunks)
    total = sum(
        min(chunks.sizes[g], chunks.group_runs[g] - c * chunks.sizes[g]) for g, c in todo_ids
    ) * (plan.config.train.steps + 1)
    failed: list[str] = []
    first: Exception | None = None
    with _progress(progress, total, f"{plan.config.name}: {len(plan.runs)} runs") as advance:
        for g, k in todo_ids:
            chunk = chunks.get(g, k)  # only the chunk being executed is built
            runs = [plan.runs[i] for i in chunk.runs]
            try:
                _save_data(out, runs)
            except OSError as err:
                if is_disk_full(err):
                    raise disk_full(err, out) from None
                raise
            R = len(runs)
            try:
                train_chunk(
                    runs, chunk, plan.groups[g], out, progress=lambda k, R=R: advance(k * R)
                )
            except UserInputError:
                raise
            except Exception as err:  # reported per chunk; the other chunks go on
                if is_disk_full(err):  # the next chunk would fail the same way
                    raise disk_full(err, out) from None
                failed.append(_failure(chunk, err))
                first = first or err
    if failed:
        raise _chunks_failed(failed, len(todo_ids), out) from first


def _failure(chunk: ChunkPlan, err: BaseException) -> str:
    """One chunk's failure as ``FILE (Type: message)`` for :class:`ChunksFailed`."""
    why = " ".join(str(err).split())[:200]
    return f"{chunk.filename} ({type(err).__name__}: {why})"


def _chunks_failed(failed: list[str], n: int, out: Path) -> ChunksFailed:
    return ChunksFailed(
        f"{len(failed)} of {n} chunk(s) failed in {out}: {'; '.join(sorted(failed))}; "
        "the finished chunks are kept: run the same command again to redo the failed ones"
    )


def _save_data(out: Path, runs: Iterable[RunSpec]) -> None:
    """Write each data set of ``runs`` once (named by content: a resumed run has it;
    a link or other entry planted under that name is replaced, never written through)."""
    for ds in {id(r.data): r.data for r in runs}.values():
        path = out / "data" / f"{ds.fingerprint()}.npz"
        if path.is_symlink() or not path.is_file():
            save_dataset(ds, path)


def _finished(out: Path, cfg: ExperimentConfig, chunks: _Chunks) -> bool:
    """Whether ``out`` already holds every chunk of ``cfg`` (so nothing is written)."""
    if folder_config_hash(out) != cfg.config_hash():
        return False
    have = done_chunks(out)
    return all(ChunkPlan(g, c, ()).filename in have for g, c in chunks.ids())


def _grows(out: Path, cfg: ExperimentConfig) -> bool:
    """Whether ``out`` is a folder of another config whose sweep ``cfg`` extends."""
    from .grow import folder_config, value_positions
    from .store import is_results_folder

    if not out.is_dir() or not is_results_folder(out):
        return False
    if folder_config_hash(out) in (None, cfg.config_hash()):
        return False
    old = folder_config(out)
    return old is not None and value_positions(old, cfg) is not None


def _complete(tree: Any, n_runs: int) -> bool:
    """Whether an opened results tree holds ``n_runs`` runs (every planned run)."""
    got = sum(int(node.ds.sizes.get("run", 0)) for node in tree.children.values())
    return got == n_runs


def check_out_folder(out: Path) -> None:
    """Refuse a results path that cannot be a writable folder, before anything is written.

    Raises:
        UserInputError: a file on the path, or a folder that is not writable.
    """
    p = Path(out)
    probe = p
    while not probe.exists() and not probe.is_symlink() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise UserInputError(f"--out {out}: {probe} is a file, not a folder")
    dirs = [probe, p / "chunks", p / "data"]
    for d in dirs:
        if d.is_dir() and not os.access(d, os.W_OK | os.X_OK):
            raise UserInputError(f"--out {out}: folder {d} is not writable (permission denied)")


_ADDRESS = re.compile(
    r"^(?:(?:tcp|tls|ucx|ws|wss)://)?[\w.\-\[\]:]+:\d{1,5}/?$"
    r"|^inproc://\S+$"  # an in-process scheduler (Dask's tests, notebooks)
)


def check_scheduler_address(address: str) -> None:
    """Refuse a ``--scheduler`` that is not a Dask address (``tcp://HOST:PORT``).

    Raises:
        UserInputError: naming ``--scheduler``.
    """
    if not _ADDRESS.match(address):
        raise UserInputError(
            f"--scheduler {address!r}: not a scheduler address (expected tcp://HOST:PORT)"
        )


#: seconds to wait for a ``--scheduler`` before giving up with one line
CONNECT_TIMEOUT = float(os.environ.get("IMPLICIT_BIAS_CONNECT_TIMEOUT", 10))


def _connect(scheduler: str):
    from dask.distributed import Client

    try:
        return Client(scheduler, timeout=CONNECT_TIMEOUT)
    except Exception as err:  # refused, timed out, or not a Dask scheduler at all (a
        # server that answers something else makes distributed read absurd frame sizes)
        raise UserInputError(
            f"--scheduler {scheduler}: cannot connect to a Dask scheduler within "
            f"{CONNECT_TIMEOUT:g} s ({type(err).__name__}); is the scheduler running?"
        ) from None


def _with(overrides, key: str, value: Any):
    if overrides is None:
        return {key: value}
    if isinstance(overrides, Mapping):
        return {**overrides, key: value}
    return [*overrides, f"{key}={value}"]


def _run_dask(plan: Plan, todo: list[ChunkPlan], out: Path, workers, client, progress):
    """Train the chunks ``todo`` on Dask: on ``client`` (``--scheduler``, connected and
    closed by the caller) or on a local cluster of ``workers`` started here."""
    try:
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise UserInputError(
            "--workers/--scheduler need dask: pip install 'implicit-bias[dask]'"
        ) from None
    own = client is None
    if not own:  # workers started elsewhere (GPU workers too: nothing changes here)
        cluster = None
    elif plan.config.train.device == "cuda":  # one single-threaded worker per GPU
        from .dask_gpu import gpu_cluster

        cluster = gpu_cluster(workers)
        client = Client(cluster)
    else:
        import logging

        # a failed chunk is reported once, in one line, at the end: not also as the
        # workers' "Compute Failed" warning blocks with their tracebacks
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
        client = Client(cluster)
    failed: list[str] = []
    try:
        # each task gets its runs (configs and data) as built here, once; a task
        # that fails (or whose worker is lost) is retried, then reported, while
        # the other chunks go on
        futures = {
            client.submit(
                train_chunk,
                [plan.runs[i] for i in c.runs],
                c,
                plan.groups[c.group],
                out.resolve(),
                pure=False,
                retries=DASK_RETRIES,
            ): c
            for c in todo
        }
        with _progress(
            progress, len(todo), f"{plan.config.name}: {len(todo)} chunks on dask"
        ) as adv:
            for fut in as_completed(futures):
                if fut.status == "error":
                    failed.append(_failure(futures[fut], fut.exception()))
                adv(1)
    finally:
        if own:
            client.close()
        if cluster is not None:
            cluster.close()
    if failed:
        raise _chunks_failed(failed, len(todo), out)
