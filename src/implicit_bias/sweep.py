"""Plan a sweep into groups and chunks, and execute it locally or on Dask.

Runs that share everything fixing shapes and code (architecture, loss, steps,
batch size, dtype, metrics, data sizes) form a *group* and are batched
together; seeds, learning rates, init scales, schedules, phase thresholds and
data content vary freely inside a group. A group is cut into chunks of
``store.chunk_runs`` runs; a chunk is the unit of work, of batching and of
storage.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._errors import UserInputError
from .config import ExperimentConfig, expand_runs, load_config
from .data import Dataset, make_dataset, save_dataset
from .engine import RunSpec, Trainer
from .store import ChunkPlan, chunk_to_dataset, done_chunks, prepare_folder, write_chunk

# Keys that may differ between the runs of one batched group.
_PER_RUN_KEYS = {
    ("name",),
    ("seed",),
    ("data",),
    ("train", "lr"),
    ("train", "lr_units"),
    ("train", "schedule"),
    ("model", "init_scale"),
    ("metrics", "phase"),
    ("store",),
}

#: memory budget per chunk used to choose ``store.chunk_runs`` automatically on the
#: CPU (lowered where the available RAM is smaller); on CUDA only when set explicitly
CHUNK_BYTES = int(os.environ.get("IMPLICIT_BIAS_CHUNK_BYTES", 1 << 30))
_CHUNK_BYTES_SET = "IMPLICIT_BIAS_CHUNK_BYTES" in os.environ
#: most runs in one automatic chunk on the CPU (none on CUDA: memory decides)
MAX_CHUNK_RUNS = 512
#: share of the free device memory (CUDA) a chunk may plan for: the per-run
#: estimate is rough, and the allocator's caching and fragmentation need room
CUDA_MEMORY_FRACTION = 0.7
#: share of the available RAM (CPU) a chunk may plan for
RAM_FRACTION = 0.5
#: where a results folder records the chunk sizes it was started with
CHUNKING_FILE = "chunking.json"


@dataclass
class Plan:
    config: ExperimentConfig
    runs: list[RunSpec]
    groups: list[dict[str, Any]]
    chunks: list[ChunkPlan]


def _group_key(cfg: ExperimentConfig, data: Dataset) -> str:
    raw = cfg.model_dump(mode="json")
    raw.pop("sweep", None)
    for path in _PER_RUN_KEYS:
        node = raw
        for p in path[:-1]:
            node = node[p]
        node.pop(path[-1], None)
    raw["shapes"] = [data.X_train.shape, data.X_test.shape[0]]
    return json.dumps(raw, sort_keys=True)


def estimate_run_bytes(cfg: ExperimentConfig, n: int, d: int, m: int) -> int:
    """Rough peak bytes one run adds to a chunk (params, Lanczos basis, activations, traces)."""
    from .models import ModelSpec

    spec = ModelSpec.from_config(cfg.model, d)
    P = spec.n_params
    item = 4 if cfg.train.dtype == "float32" else 8
    mc = cfg.metrics
    # P-sized Lanczos vectors kept at once by the curvature metrics that are on
    sharp_iters = mc.sharpness.iters if mc.sharpness else 20
    basis = max(
        sharp_iters if (mc.sharpness or mc.gn_sharpness) else 0,
        (mc.trace.iters if mc.trace.density else 2) if mc.trace else 0,
    )
    # weights, two eval/warm-start vectors, the kept init/final weights, temporaries
    per_param = 6 + len(cfg.store.weights) + basis
    act = (n + m) * max(spec.width, 1) * spec.depth
    per = item * (P * per_param + 8 * act + n * d) + 8 * 3 * (cfg.train.steps + 1)
    if cfg.metrics.kkt or cfg.metrics.ntk:
        # the layer-wise Gram of per-sample gradients (batched.jacobian_gram):
        # (n, n) blocks and (n, width) factors, never the (n, P) Jacobian
        per += 8 * (4 * n * n + 3 * n * max(spec.width, 1) * spec.depth)
    return int(per)


def available_ram() -> int | None:
    """Bytes of RAM available to a new allocation (psutil, else /proc/meminfo), or None."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def chunk_budget(device: str) -> tuple[int, int | None]:
    """``(bytes, most runs or None)`` one chunk may plan for on ``device``.

    CUDA: 70 % of the free device memory (``torch.cuda.mem_get_info``), no run
    cap; ``IMPLICIT_BIAS_CHUNK_BYTES``, when set, is the budget instead. CPU (and
    CUDA configs planned on a machine without a GPU, e.g. a login node that
    submits to ``--scheduler``): ``CHUNK_BYTES`` (1 GiB) and at most
    ``MAX_CHUNK_RUNS`` runs, lowered to half the available RAM where that is smaller.
    """
    if device == "cuda":
        import torch

        if torch.cuda.is_available():
            if _CHUNK_BYTES_SET:
                return CHUNK_BYTES, None
            free, _total = torch.cuda.mem_get_info()
            return max(1, int(free * CUDA_MEMORY_FRACTION)), None
    ram = available_ram()
    budget = CHUNK_BYTES if ram is None else min(CHUNK_BYTES, int(ram * RAM_FRACTION))
    return max(1, budget), MAX_CHUNK_RUNS


def auto_chunk_runs(cfg: ExperimentConfig, n: int, d: int, m: int, group_size: int) -> int:
    """``store.chunk_runs``, or as many runs as fit the device's budget (:func:`chunk_budget`)."""
    if cfg.store.chunk_runs is not None:
        return cfg.store.chunk_runs
    budget, cap = chunk_budget(cfg.train.device)
    fit = max(1, budget // max(estimate_run_bytes(cfg, n, d, m), 1))
    k = min(fit, group_size) if cap is None else min(fit, cap, group_size)
    # equal-sized chunks rather than one full and one small
    n_chunks = math.ceil(group_size / k)
    return math.ceil(group_size / n_chunks)


def make_plan(cfg: ExperimentConfig, base_dir: Path | None = None) -> Plan:
    """Expand the sweep, build each distinct data set once, and cut groups into chunks."""
    expanded = expand_runs(cfg)
    datasets: dict[str, Dataset] = {}
    runs: list[RunSpec] = []
    for i, (coords, rc) in enumerate(expanded):
        if "seed" in coords:
            rc = rc.model_copy(update={"seed": int(coords["seed"])})
        key = json.dumps(rc.data.model_dump(mode="json"), sort_keys=True)
        if key not in datasets:
            datasets[key] = make_dataset(rc.data, base_dir)
        runs.append(RunSpec(index=i, coords=coords, config=rc, data=datasets[key]))
    group_of: dict[str, int] = {}
    members: list[list[int]] = []
    groups: list[dict[str, Any]] = []
    for r in runs:
        gk = _group_key(r.config, r.data)
        if gk not in group_of:
            group_of[gk] = len(members)
            members.append([])
            groups.append(json.loads(gk))
        members[group_of[gk]].append(r.index)
    chunks: list[ChunkPlan] = []
    for g, idx in enumerate(members):
        first = runs[idx[0]]
        n, d = first.data.X_train.shape
        m = first.data.X_test.shape[0]
        size = auto_chunk_runs(first.config, n, d, m, len(idx))
        for c, start in enumerate(range(0, len(idx), size)):
            chunks.append(ChunkPlan(group=g, chunk=c, runs=tuple(idx[start : start + size])))
    return Plan(config=cfg, runs=runs, groups=groups, chunks=chunks)


def settle_chunking(plan: Plan, out: Path) -> Plan:
    """The plan with the chunk sizes ``out`` was started with, which it records.

    Automatic chunk sizes depend on the device and its free memory; a folder
    resumed elsewhere (another GPU, the CPU, another budget) must keep the
    chunks it has, so the sizes per group are written to ``chunking.json`` the
    first time and reused afterwards. A folder from before that file has its
    sizes read off its first chunk of each group.
    """
    path = Path(out) / CHUNKING_FILE
    planned = _group_sizes(plan)
    recorded: dict[int, int] = {}
    if path.exists():
        raw = json.loads(path.read_text())
        recorded = {int(g): int(k) for g, k in raw["chunk_runs"].items()}
    else:
        recorded = _sizes_from_chunks(Path(out), planned)
    sizes = {g: recorded.get(g, k) for g, k in planned.items()}
    if sizes != planned:
        plan = _recut(plan, sizes)
    if not path.exists() or recorded != sizes:
        text = json.dumps({"chunk_runs": {str(g): k for g, k in sizes.items()}}, indent=1)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text + "\n")
        os.replace(tmp, path)
    return plan


def _group_sizes(plan: Plan) -> dict[int, int]:
    sizes: dict[int, int] = {}
    for c in plan.chunks:
        sizes[c.group] = max(sizes.get(c.group, 0), len(c.runs))
    return sizes


def _sizes_from_chunks(out: Path, planned: dict[int, int]) -> dict[int, int]:
    """Run counts of the chunks ``g<group>-c00000.nc`` already in ``out``."""
    import h5py

    found: dict[int, int] = {}
    for g in planned:
        f = out / "chunks" / ChunkPlan(group=g, chunk=0, runs=()).filename
        if f.exists():
            with h5py.File(f, "r") as h:
                found[g] = int(h["run"].shape[0])
    return found


def _recut(plan: Plan, sizes: dict[int, int]) -> Plan:
    """The plan's groups cut into chunks of ``sizes[group]`` runs."""
    members: dict[int, list[int]] = {}
    for c in plan.chunks:
        members.setdefault(c.group, []).extend(c.runs)
    chunks = [
        ChunkPlan(group=g, chunk=c, runs=tuple(idx[start : start + sizes[g]]))
        for g, idx in members.items()
        for c, start in enumerate(range(0, len(idx), sizes[g]))
    ]
    return Plan(config=plan.config, runs=plan.runs, groups=plan.groups, chunks=chunks)


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


def execute_chunk(plan: Plan, chunk: ChunkPlan, out: Path, progress=None) -> Path:
    """Train one chunk of a plan and write it atomically."""
    runs = [plan.runs[i] for i in chunk.runs]
    return train_chunk(runs, chunk, plan.groups[chunk.group], out, progress)


def run_sweep(
    config: str | Path | Mapping[str, Any] | ExperimentConfig,
    out: str | Path | None = None,
    overrides: Iterable[str] | Mapping[str, Any] | None = None,
    *,
    overwrite: bool = False,
    device: str | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: bool = False,
):
    """Run every missing chunk of a config; return the results as a DataTree.

    This is :func:`implicit_bias.run`; the CLI's ``run`` verb calls it too.
    """
    from .store import open_results

    if device is not None:
        overrides = _with(overrides, "train.device", device)
    cfg = load_config(config, overrides)
    base_dir = Path(config).resolve().parent if isinstance(config, str | Path) else Path.cwd()
    plan = make_plan(cfg, base_dir)  # all input errors surface here, before any folder exists
    if cfg.train.device == "cuda" and not scheduler:  # with --scheduler the workers have the GPUs
        from .engine import resolve_device

        resolve_device("cuda")
    out = Path(out) if out is not None else Path("results") / cfg.name
    prepare_folder(out, cfg, overwrite)
    plan = settle_chunking(plan, out)  # the chunking the folder was started with
    for ds in {id(r.data): r.data for r in plan.runs}.values():
        path = out / "data" / f"{ds.fingerprint()}.npz"
        if not path.exists():  # named by content: a resumed run has it already
            save_dataset(ds, path)
    have = done_chunks(out)
    todo = [c for c in plan.chunks if c.filename not in have]
    steps = cfg.train.steps
    if todo and (workers or scheduler):
        _run_dask(plan, todo, out, workers, scheduler, progress)
    elif todo:
        total = sum(len(c.runs) for c in todo) * (steps + 1)
        with _progress(progress, total, f"{cfg.name}: {len(plan.runs)} runs") as advance:
            for c in todo:
                R = len(c.runs)
                execute_chunk(plan, c, out, progress=lambda k, R=R: advance(k * R))
    return open_results(out)


def _with(overrides, key: str, value: Any):
    if overrides is None:
        return {key: value}
    if isinstance(overrides, Mapping):
        return {**overrides, key: value}
    return [*overrides, f"{key}={value}"]


class _progress:
    """A rich progress bar over run-steps (no-op when disabled)."""

    def __init__(self, enabled: bool, total: int, label: str):
        self.enabled, self.total, self.label = enabled, total, label

    def __enter__(self):
        if not self.enabled:
            return lambda k: None
        from rich.progress import (
            BarColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            transient=False,
        )
        self.bar.__enter__()
        task = self.bar.add_task(self.label, total=self.total)
        return lambda k: self.bar.advance(task, k)

    def __exit__(self, *exc):
        if self.enabled:
            self.bar.__exit__(*exc)
        return False


def _run_dask(plan: Plan, todo: list[ChunkPlan], out: Path, workers, scheduler, progress):
    try:
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise UserInputError(
            "--workers/--scheduler need dask: pip install 'implicit-bias[dask]'"
        ) from None
    if scheduler:  # workers started elsewhere (GPU workers too: nothing changes here)
        client = Client(scheduler)
        cluster = None
    elif plan.config.train.device == "cuda":  # one single-threaded worker per GPU
        from .dask_gpu import gpu_cluster

        cluster = gpu_cluster(workers)
        client = Client(cluster)
    else:
        cluster = LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
        )
        client = Client(cluster)
    try:
        # each task gets its runs (configs and data) as built here, once
        futures = [
            client.submit(
                train_chunk,
                [plan.runs[i] for i in c.runs],
                c,
                plan.groups[c.group],
                out.resolve(),
                pure=False,
            )
            for c in todo
        ]
        with _progress(
            progress, len(todo), f"{plan.config.name}: {len(todo)} chunks on dask"
        ) as adv:
            for fut in as_completed(futures):
                fut.result()
                adv(1)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
