"""Plan a sweep into groups and chunks: which runs batch together, how many per chunk.

Runs that share everything fixing shapes and code (architecture, loss, steps,
batch size, dtype, metrics, data sizes) form a *group* and are batched
together; seeds, learning rates, init scales, schedules, phase thresholds and
data content vary freely inside a group. A group is cut into chunks of
``store.chunk_runs`` runs (automatic: by the memory a run is estimated to
need); a chunk is the unit of work, of batching and of storage. Executing a
plan is :mod:`.sweep`'s.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._errors import UserInputError
from .config import ExperimentConfig
from .config_sweep import SweepSpace
from .data import Dataset, make_dataset
from .engine import ModelSize, RunSpec, describe_model
from .store import (
    CHUNKING_FILE,  # noqa: F401 - re-exported: where a folder records its chunking
    ChunkPlan,
    chunk_run_count,
    folder_config_hash,
    read_chunking,
    write_chunking,
)

#: Dask re-runs a chunk this many times when it fails (a lost worker, a crash).
# Keys that may differ between the runs of one batched group.
_PER_RUN_KEYS = {
    ("name",),
    ("seed",),
    ("data",),
    ("train", "lr"),
    ("train", "lr_units"),
    ("train", "schedule"),
    # the optimizer's hyperparameters are per-run tensors (the rule itself is not)
    ("train", "momentum"),
    ("train", "beta1"),
    ("train", "beta2"),
    ("train", "eps"),
    ("train", "bias_correction"),
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


@dataclass
class Plan:
    """A sweep cut into groups and chunks, built lazily.

    ``runs`` and ``chunks`` are sequences that build a run (its config and
    data) or a chunk (its run indices) only when asked for one, so a plan of
    10⁶ runs costs what its few distinct groups and data sets cost.
    """

    config: ExperimentConfig
    runs: Sequence[RunSpec]
    groups: list[dict[str, Any]]
    chunks: Sequence[ChunkPlan]
    #: per group: number of runs, runs per chunk, estimated bytes per run
    group_sizes: list[int] = field(default_factory=list)
    chunk_sizes: list[int] = field(default_factory=list)
    run_bytes: list[int] = field(default_factory=list)
    #: per group: estimated seconds per run from a known ``bench`` figure, else None
    run_seconds: list[float | None] = field(default_factory=list)
    #: the data sets built while planning (one per distinct shape-relevant data config)
    datasets: list[Dataset] = field(default_factory=list)

    @property
    def n_chunks(self) -> int:
        return len(self.chunks)

    def summary(self, with_time: bool = True) -> str:
        """One line: runs, groups, chunks, memory per chunk, time estimate (unless
        ``with_time`` is false: ``validate`` measures one, see :mod:`.estimate`)."""
        n = len(self.runs)
        chunk_mem = max(
            (b * k for b, k in zip(self.run_bytes, self.chunk_sizes, strict=True)), default=0
        )
        text = (
            f"plan: {n} run{'s' * (n != 1)} in {len(self.groups)} group(s), "
            f"{self.n_chunks} chunk(s) of up to {max(self.chunk_sizes, default=0)} runs; "
            f"about {_fmt_bytes(chunk_mem)} per chunk"
        )
        if not with_time:
            return text
        if self.run_seconds and all(t is not None for t in self.run_seconds):
            total = sum(t * g for t, g in zip(self.run_seconds, self.group_sizes, strict=True) if t)
            return (
                f"{text}; about {_fmt_seconds(total)} from the bench figure (a FLOP rate, "
                "rough; `implicit-bias validate CONFIG` measures this config)"
            )
        return f"{text}; time unknown (`implicit-bias validate CONFIG` measures an estimate)"


def _fmt_bytes(b: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if b < 1000 or unit == "PB":
            return f"{b:.3g} {unit}"
        b /= 1000
    return f"{b:.3g} PB"  # pragma: no cover


def _fmt_seconds(t: float) -> str:
    if t < 120:
        return f"{t:.3g} s"
    if t < 7200:
        return f"{t / 60:.3g} min"
    if t < 2 * 86400:
        return f"{t / 3600:.3g} h"
    return f"{t / 86400:.3g} days"


def _group_key(cfg: ExperimentConfig, data: Dataset) -> str:
    raw = cfg.model_dump(mode="json")
    raw.pop("sweep", None)
    for path in _PER_RUN_KEYS:
        node = raw
        for p in path[:-1]:
            node = node[p]
        node.pop(path[-1], None)
    raw["shapes"] = [data.X_train.shape, data.X_test.shape[0]]
    if data.multiclass or cfg.model.kind != "mlp":  # the model's shapes follow them
        raw["classes"] = data.n_classes if data.multiclass else 2
        raw["image_shape"] = data.image_shape
    return json.dumps(raw, sort_keys=True)


#: bytes a run keeps per training step (loss, accuracy and divergence traces, float64)
TRACE_BYTES_PER_STEP = 8 * 3


def estimate_run_bytes(
    cfg: ExperimentConfig, n: int, d: int, m: int, model: ModelSize | None = None
) -> int:
    """Rough peak bytes one run adds to a chunk (params, Lanczos basis, activations, traces).

    ``model`` (:func:`engine.describe_model`) is needed for models on the generic
    path; without it the model is the hand-written MLP of ``cfg``.
    """
    from .models import ModelSpec

    if model is not None and model.generic:
        return _estimate_generic_bytes(cfg, n, d, m, model)
    spec = ModelSpec.from_config(cfg.model, d)
    P = spec.n_params
    item = 4 if cfg.train.dtype == "float32" else 8
    per_param = _param_vectors(cfg)
    # the optimizer's state (velocity, moments) and its gradients and updates
    per_param += {"gd": 0, "momentum": 3, "nesterov": 3, "rmsprop": 3, "adam": 4}[
        cfg.train.optimizer
    ]
    act = (n + m) * max(spec.width, 1) * spec.depth
    per = item * (P * per_param + 8 * act + n * d) + TRACE_BYTES_PER_STEP * (cfg.train.steps + 1)
    if cfg.metrics.kkt or cfg.metrics.ntk:
        # the layer-wise Gram of per-sample gradients (models.mlp.jacobian_gram):
        # (n, n) blocks and (n, width) factors, never the (n, P) Jacobian
        per += 8 * (4 * n * n + 3 * n * max(spec.width, 1) * spec.depth)
    return int(per)


def _param_vectors(cfg: ExperimentConfig) -> int:
    """P-sized vectors a run keeps at once, on either path: the weights, two
    eval/warm-start vectors, the kept init/final weights, temporaries, the largest
    Lanczos basis of the curvature metrics that are on (or of the flows' eigen-solves)
    and the flows' own vectors."""
    mc = cfg.metrics
    sharp_iters = mc.sharpness.iters if mc.sharpness else 20
    basis = max(
        sharp_iters if (mc.sharpness or mc.gn_sharpness) else 0,
        (mc.trace.iters if mc.trace.density else 2) if mc.trace else 0,
    )
    return 6 + len(cfg.store.weights) + max(basis, _flow_basis(cfg)) + _flow_vectors(cfg)


def _flow_vectors(cfg: ExperimentConfig) -> int:
    """P-sized vectors per run the flows keep (``train.flow: central``): w_CF, w_GF,
    θ₀, two warm starts, the k eigenvectors, and the gradient, push, correction and
    difference temporaries of a substep (:mod:`implicit_bias.flows`)."""
    return 9 + 2 * cfg.train.flow_eigs if cfg.train.flow == "central" else 0


def _flow_basis(cfg: ExperimentConfig) -> int:
    """The Lanczos basis of the flows' eigen-solves (P-sized vectors), 0 without flows."""
    if cfg.train.flow != "central":
        return 0
    from .flows import EIG_ITERS

    return max(EIG_ITERS, 2 * cfg.train.flow_eigs + 2)


def _estimate_generic_bytes(cfg: ExperimentConfig, n: int, d: int, m: int, model: ModelSize) -> int:
    """:func:`estimate_run_bytes` of the torch.func path: parameters (weights, Lanczos
    basis, kept weights), the activations of a forward pass times 16 (primal and
    tangent, forward and backward of ``jvp(grad)``, and what ``vmap`` keeps
    besides), and for the NTK the (n·K, P) Jacobian ``jacrev`` forms per run."""
    item = 4 if cfg.train.dtype == "float32" else 8
    P, K = model.n_params, model.outputs
    per_param = _param_vectors(cfg)
    act = (n + m) * (model.act_per_sample + K)
    per = item * (P * per_param + 16 * act + n * d) + TRACE_BYTES_PER_STEP * (cfg.train.steps + 1)
    if cfg.metrics.ntk:
        per += item * (n * K * P + (n * K) ** 2)
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


def auto_chunk_runs(
    cfg: ExperimentConfig, n: int, d: int, m: int, group_size: int, model: ModelSize | None = None
) -> int:
    """``store.chunk_runs``, or as many runs as fit the device's budget (:func:`chunk_budget`)."""
    if cfg.store.chunk_runs is not None:
        return cfg.store.chunk_runs
    budget, cap = chunk_budget(cfg.train.device)
    fit = max(1, budget // max(estimate_run_bytes(cfg, n, d, m, model), 1))
    k = min(fit, group_size) if cap is None else min(fit, cap, group_size)
    # equal-sized chunks rather than one full and one small
    n_chunks = math.ceil(group_size / k)
    return math.ceil(group_size / n_chunks)


class _Runs(Sequence[RunSpec]):
    """The runs of a sweep as a sequence; each is built (config, data) when indexed."""

    def __init__(
        self, space: SweepSpace, base_dir: Path | None, datasets: dict[str, Dataset]
    ) -> None:
        self.space, self.base_dir, self.datasets = space, base_dir, datasets

    def __len__(self) -> int:
        return self.space.n_runs

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        coords, rc = self.space.run(i)
        if "seed" in coords:
            rc = rc.model_copy(update={"seed": int(coords["seed"])})
        return RunSpec(index=i, coords=coords, config=rc, data=self.data(rc))

    def __iter__(self) -> Iterator[RunSpec]:
        for i in range(len(self)):
            yield self[i]

    def data(self, rc: ExperimentConfig) -> Dataset:
        key = json.dumps(rc.data.model_dump(mode="json"), sort_keys=True)
        ds = self.datasets.get(key)
        if ds is None:
            check_data_size(rc)
            ds = self.datasets[key] = make_dataset(rc.data, self.base_dir)
        return ds


class _Chunks(Sequence[ChunkPlan]):
    """The chunks of a plan; a chunk's run indices are computed when it is asked for.

    Group ``g`` holds the runs whose digits on the dependent axes are one of
    ``members[g]`` (any digits on the independent axes), in index order; chunk
    ``c`` is its members ``c·k … c·k + k − 1`` with ``k = sizes[g]``.
    """

    def __init__(
        self, space: SweepSpace, members: list[list[tuple[int, ...]]], sizes: list[int]
    ) -> None:
        self.space, self.sizes, self.members = space, sizes, members
        free = [j for j in space.independent]
        self.group_runs = [len(m) * math.prod(space.sizes[j] for j in free) for m in members]
        self.counts = [math.ceil(r / k) for r, k in zip(self.group_runs, sizes, strict=True)]
        # how many of a group's dependent combos start with each prefix
        self.prefix: list[dict[tuple[int, ...], int]] = []
        for m in members:
            cnt: dict[tuple[int, ...], int] = {}
            for combo in m:
                for t in range(len(combo) + 1):
                    cnt[combo[:t]] = cnt.get(combo[:t], 0) + 1
            self.prefix.append(cnt)
        K = len(space.keys)
        # runs completing a prefix through axis j, per dependent combo: the free axes after j
        self.tail = [math.prod(space.sizes[i] for i in free if i > j) for j in range(K)]
        self.is_dep = [j in set(space.dependent) for j in range(K)]

    def __len__(self) -> int:
        return sum(self.counts)

    def ids(self) -> Iterator[tuple[int, int]]:
        """``(group, chunk)`` of every chunk, in order, without building any."""
        for g, n in enumerate(self.counts):
            for c in range(n):
                yield g, c

    def get(self, g: int, c: int) -> ChunkPlan:
        k = self.sizes[g]
        if not 0 <= c < self.counts[g]:
            raise IndexError((g, c))
        start = c * k
        runs = []
        for idx in self._members(g, start):
            runs.append(idx)
            if len(runs) == k:
                break
        return ChunkPlan(group=g, chunk=c, runs=tuple(runs))

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        for g, n in enumerate(self.counts):
            if i < n:
                return self.get(g, i)
            i -= n
        raise IndexError(i)

    def __iter__(self) -> Iterator[ChunkPlan]:
        for g, c in self.ids():
            yield self.get(g, c)

    def _members(self, g: int, skip: int) -> Iterator[int]:
        """Run indices of group ``g`` in ascending order, from its ``skip``-th on."""
        sp, cnt, K = self.space, self.prefix[g], len(self.space.keys)
        digits = [0] * K

        def rec(j: int, dprefix: tuple[int, ...], skip: int) -> Iterator[int]:
            if j == K:
                yield sp.index(digits)
                return
            for d in range(sp.sizes[j]):
                p = (*dprefix, d) if self.is_dep[j] else dprefix
                total = cnt.get(p, 0) * self.tail[j]
                if total == 0:
                    continue
                if skip >= total:
                    skip -= total
                    continue
                digits[j] = d
                yield from rec(j + 1, p, skip)
                skip = 0

        yield from rec(0, (), skip)


def available_memory() -> int:
    """Bytes of memory available now (MemAvailable on Linux; physical memory otherwise)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return 1 << 40


def check_data_size(rc: ExperimentConfig) -> None:
    """Refuse generated data whose arrays would not fit in memory (before drawing them).

    Raises:
        UserInputError: naming ``data.n_train`` (or ``n_test``/``d``) and the sizes.
    """
    from .data import DEFAULT_D, DEFAULT_N_TEST, DEFAULT_N_TRAIN

    dc = rc.data
    if dc.kind in ("file", "sklearn", "torchvision"):
        return
    n = DEFAULT_N_TRAIN if dc.n_train is None else dc.n_train
    m = DEFAULT_N_TEST if dc.n_test is None else dc.n_test
    d = DEFAULT_D if dc.d is None else dc.d
    need = 8 * (n + m) * d * 2  # float64 X and X_test, drawn then normalised
    have = available_memory()
    if need > have:
        key = "data.n_train" if n >= m else "data.n_test"
        key = "data.d" if d > max(n, m) else key
        raise UserInputError(
            f"{key}: data of n_train={n}, n_test={m}, d={d} needs about {_fmt_bytes(need)}, "
            f"more than the {_fmt_bytes(have)} of memory available"
        )


def _bench_gflops(device: str) -> float | None:
    """The GFLOP/s ``implicit-bias bench`` measured on this device, if it was run."""
    path = bench_record_path()
    try:
        rec = json.loads(path.read_text())
        value = float(rec[device]["gflops"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return value if value > 0 else None


def bench_record_path() -> Path:
    """Where ``implicit-bias bench`` keeps its figure (``$IMPLICIT_BIAS_BENCH`` overrides)."""
    env = os.environ.get("IMPLICIT_BIAS_BENCH")
    if env:
        return Path(env)
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "implicit-bias" / "bench.json"


def _run_seconds(rc: ExperimentConfig, n: int, d: int) -> float | None:
    gflops = _bench_gflops(rc.train.device)
    if gflops is None:
        return None
    from .bench import workload_flops

    raw = rc.model_dump(mode="json")
    raw["data"] |= {"n_train": n, "d": d}
    raw["metrics"]["sharpness"] = raw["metrics"]["sharpness"] or False
    raw.pop("sweep", None)
    return workload_flops(raw) / 1e9 / gflops


def make_plan(cfg: ExperimentConfig, base_dir: Path | None = None) -> Plan:
    """Count the runs, groups and chunks of a sweep; build each distinct data shape once.

    Runs are not materialised: ``plan.runs[i]`` and ``plan.chunks[j]`` build
    one run or one chunk when asked. Groups depend only on the swept keys that
    are not per-run (see :data:`implicit_bias.config_sweep.INDEPENDENT_KEYS`) and on
    the data's shapes, so planning costs one validation and one data set per
    combination of those keys, whatever the number of seeds, rates or scales.

    Raises:
        UserInputError: a run that cannot be built or would not fit in memory.
    """
    space = SweepSpace(cfg)
    datasets: dict[str, Dataset] = {}
    runs = _Runs(space, base_dir, datasets)
    group_of: dict[str, int] = {}
    members: list[list[tuple[int, ...]]] = []
    groups: list[dict[str, Any]] = []
    firsts: list[tuple[ExperimentConfig, Dataset]] = []
    for combo, rc in space.dependent_points():
        data = runs.data(rc)
        gk = _group_key(rc, data)
        if gk not in group_of:
            group_of[gk] = len(members)
            members.append([])
            groups.append(json.loads(gk))
            firsts.append((rc, data))
        members[group_of[gk]].append(combo)
    free = math.prod(space.sizes[j] for j in space.independent)
    sizes, run_bytes, seconds, group_sizes = [], [], [], []
    have = available_memory()
    for (rc, data), m in zip(firsts, members, strict=True):
        n, d = data.X_train.shape
        t = data.X_test.shape[0]
        bs = rc.train.batch_size
        if bs is not None and bs > n:
            raise UserInputError(
                f"train.batch_size={bs} exceeds the {n} training samples of the data"
            )
        model = describe_model(rc, data)  # a model that cannot run is refused here
        per = estimate_run_bytes(rc, n, d, t, model)
        if per > have:
            if 2 * TRACE_BYTES_PER_STEP * (rc.train.steps + 1) > per:  # the per-step traces
                what = f"train.steps: one run of {rc.train.steps} steps (its per-step traces)"
            else:
                what = (
                    f"model.width: one run of width {rc.model.width}, depth {rc.model.depth} "
                    f"on n_train={n}, d={d}"
                )
            raise UserInputError(
                f"{what} needs about {_fmt_bytes(per)}, more than the "
                f"{_fmt_bytes(have)} of memory available"
            )
        size = len(m) * free
        group_sizes.append(size)
        sizes.append(auto_chunk_runs(rc, n, d, t, size, model))
        run_bytes.append(per)
        seconds.append(_run_seconds(rc, n, d))
    chunks = _Chunks(space, members, sizes)
    return Plan(
        config=cfg,
        runs=runs,
        groups=groups,
        chunks=chunks,
        group_sizes=group_sizes,
        chunk_sizes=sizes,
        run_bytes=run_bytes,
        run_seconds=seconds,
        datasets=list(datasets.values()),
    )


def settle_chunking(plan: Plan, out: Path, write: bool = True) -> Plan:
    """The plan with the chunk sizes ``out`` was started with, which it records.

    Automatic chunk sizes depend on the device and its free memory; a folder
    resumed elsewhere (another GPU, the CPU, another budget) must keep the
    chunks it has, so the sizes per group are written to ``chunking.json`` the
    first time and reused afterwards (``write=False`` only reads). The chunks
    present win over the record: where chunk 0 of a group holds another number
    of runs than ``chunking.json`` says (an edited or damaged record), chunk 0
    is verified and, if sound, its size is kept and the record rewritten. A
    folder from before that file has its sizes read off its first chunk of each group.
    """
    out = Path(out)
    planned = _group_sizes(plan)
    chunks = plan.chunks
    assert isinstance(chunks, _Chunks)
    group_runs = dict(enumerate(chunks.group_runs))
    rec = read_chunking(out) if out.is_dir() else None
    recorded: dict[int, int] = dict(rec["chunk_runs"]) if rec else {}
    if out.is_dir():
        mine = folder_config_hash(out)
        for g in planned:
            n = group_runs[g]
            first = chunk_run_count(out, g)
            if first is None:
                continue
            want = recorded.get(g)
            if want is not None and min(want, n) == first:
                continue  # the record and the chunks agree
            if chunk_run_count(out, g, verify_hash=mine or "") == first:
                recorded[g] = first  # a sound chunk 0: its size is the folder's
    sizes = {g: recorded.get(g, k) for g, k in planned.items()}
    if sizes != planned:
        plan = _recut(plan, sizes)
    if write and (rec is None or rec["chunk_runs"] != sizes or rec["group_runs"] != group_runs):
        write_chunking(out, sizes, group_runs)
    return plan


def _group_sizes(plan: Plan) -> dict[int, int]:
    chunks = plan.chunks
    assert isinstance(chunks, _Chunks)
    return dict(enumerate(chunks.sizes))


def _recut(plan: Plan, sizes: dict[int, int]) -> Plan:
    """The plan's groups cut into chunks of ``sizes[group]`` runs (still lazily)."""
    import dataclasses

    old = plan.chunks
    assert isinstance(old, _Chunks)
    new = [sizes[g] for g in range(len(old.sizes))]
    return dataclasses.replace(plan, chunks=_Chunks(old.space, old.members, new), chunk_sizes=new)
