"""The batched training engine: all runs of a chunk advance as one computation.

The model and loss are written for one run (:mod:`implicit_bias.models`);
here they are batched over a leading run dimension with ``torch.func.vmap``.
Within a step there is no Python loop over runs and no host synchronisation:
learning rates are a ``(runs, steps + 1)`` table, divergence is a mask, and
traces are written into preallocated device tensors.
"""

from __future__ import annotations

import ctypes
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.func import vmap

from . import _linalg, batched, curvature, metrics, precision
from .config import ExperimentConfig
from .data import Dataset
from .losses import accuracy, mean_loss
from .models import ModelSpec, Params, fixed_last_layer, forward, init_params
from .schedules import multipliers

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _tune_allocator() -> None:
    """Keep large temporaries on glibc's heap instead of fresh mmap/munmap pairs.

    Every step allocates and frees the same few MB-sized tensors. By default
    glibc serves them with mmap and returns them with munmap; with two or more
    OpenMP threads each munmap costs a TLB shootdown, and on the 2-core VMs we
    measured the first Hessian-vector products of a run 20-30× slower
    (27 ms vs 1 ms) until the dynamic threshold adapted. Raising the mmap and
    trim thresholds removes that; memory is reused, not returned to the OS.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


if not os.environ.get("IMPLICIT_BIAS_NO_MALLOPT"):  # escape hatch, for measuring
    _tune_allocator()


@dataclass
class RunSpec:
    """One run of a chunk: its index in the sweep, swept coordinates, resolved config, data."""

    index: int
    coords: dict[str, Any]
    config: ExperimentConfig
    data: Dataset


@dataclass
class ChunkResult:
    """Raw numpy results of one chunk (the store turns them into xarray)."""

    runs: list[RunSpec]
    eval_steps: list[int]
    per_iteration: dict[str, np.ndarray] = field(default_factory=dict)  # (R, steps+1)
    per_step: dict[str, np.ndarray] = field(default_factory=dict)  # (R, S, ...)
    per_run: dict[str, np.ndarray] = field(default_factory=dict)  # (R, ...)
    weights: dict[str, np.ndarray] = field(default_factory=dict)  # (R, out, in)
    fixed: dict[str, np.ndarray] = field(default_factory=dict)  # (out, in), shared


#: with ``metrics.dense_early``: every step up to this one is an eval step
DENSE_UNTIL = 10
#: then log-spaced eval steps, this many per decade
LOG_PER_DECADE = 8


def eval_steps_of(cfg: ExperimentConfig) -> list[int]:
    """The eval steps of a run, ascending, within 0…steps.

    {0} ∪ {k·every} ∪ ``at`` ∪ {steps}, and with ``metrics.dense_early`` (the
    default) also every step 1…10 and the log-spaced steps round(10^(j/8)) from 10
    up to 3·every, where the multiples of ``every`` become at least as dense
    (relative spacing every/t < 1/3 ≈ 10^(1/8) − 1). A catapult's loss spike and
    sharpness drop happen within the first ~10 steps (Lewkowycz et al. 2020,
    arXiv 2003.02218); an evaluation every 10 or 20 steps alone misses them.
    """
    steps = cfg.train.steps
    every = cfg.metrics.every
    s = set(range(0, steps + 1, every)) | {0, steps}
    s |= {t for t in cfg.metrics.at if t <= steps}
    if getattr(cfg.metrics, "dense_early", False):
        s |= set(range(min(DENSE_UNTIL, steps) + 1))
        j = LOG_PER_DECADE  # 10^(j/8) from 10 on
        while (t := round(10 ** (j / LOG_PER_DECADE))) < min(3 * every, steps + 1):
            s.add(t)
            j += 1
    return sorted(s)


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        from ._errors import UserInputError

        raise UserInputError("train.device: 'cuda' requested but no CUDA device is available")
    return torch.device(name)


def _stack(tensors: Sequence[Tensor]) -> Tensor:
    return torch.stack(list(tensors), dim=0)


def _shared_or_stacked(arrays: list[np.ndarray], dtype, device) -> tuple[Tensor, int | None]:
    """One tensor for all runs when the arrays are identical, else stacked with a run dim."""
    first = arrays[0]
    if all(a is first or (a.shape == first.shape and np.array_equal(a, first)) for a in arrays):
        return torch.as_tensor(first, dtype=dtype, device=device), None
    return torch.as_tensor(np.stack(arrays), dtype=dtype, device=device), 0


def _to_device(t: Tensor, device: torch.device) -> Tensor:
    """``t`` (on the host) on ``device``; to a GPU through pinned memory, asynchronously
    (a pageable host→device copy synchronises the stream)."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def _run_generator(seed: int, salt: int) -> torch.Generator:
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + salt) & 0x7FFF_FFFF_FFFF_FFFF)


def minibatch_order(seed: int, n: int, epoch: int) -> Tensor:
    """The sample order of one run's SGD epoch: a permutation drawn from (seed, epoch)."""
    return torch.randperm(n, generator=_run_generator(seed, 7919 + epoch))


class Trainer:
    """Trains one chunk of runs that share a :class:`ModelSpec` and train settings."""

    def __init__(self, runs: list[RunSpec], progress: Callable[[int], None] | None = None):
        if not runs:
            raise ValueError("a chunk needs at least one run")
        self.runs = runs
        self.cfg = cfg = runs[0].config
        self.progress = progress
        self.dtype = DTYPES[cfg.train.dtype]
        self.device = resolve_device(cfg.train.device)
        self.R = len(runs)
        data = [r.data for r in runs]
        self.X: Tensor
        self.Xt: Tensor
        self.X, self.y, self.x_dim = self._layout(
            [d.X_train for d in data], [d.y_train for d in data]
        )
        self.Xt, self.yt, self.xt_dim = self._layout(
            [d.X_test for d in data], [d.y_test for d in data]
        )
        self.n, self.d = self.X.shape[-2], self.X.shape[-1]
        self.spec = ModelSpec.from_config(cfg.model, self.d)
        self.a = fixed_last_layer(self.spec, self.dtype, self.device)
        self.loss_kind = cfg.train.loss
        self.eval_steps = eval_steps_of(cfg)

    def _layout(
        self, Xs: list[np.ndarray], ys: list[np.ndarray]
    ) -> tuple[Tensor, Tensor, int | None]:
        """X ``(n, d)`` and y ``(n,)`` shared by all runs, or both with a run dim."""
        X, x_dim = _shared_or_stacked(Xs, self.dtype, self.device)
        y, y_dim = _shared_or_stacked(ys, self.dtype, self.device)
        if (x_dim is None) != (y_dim is None):  # keep X and y in the same layout
            X = X.expand(self.R, *X.shape[-2:]) if x_dim is None else X
            y = y.expand(self.R, y.shape[-1]) if y_dim is None else y
            x_dim = 0
        return X, y, x_dim

    # ------------------------------------------------------------------ pieces
    def loss_single(self, params: Params, X: Tensor, y: Tensor) -> Tensor:
        """Mean training loss of one run (the function everything else batches)."""
        return mean_loss(forward(params, X, self.spec, self.a), y, self.loss_kind)

    def output_single(self, params: Params, X: Tensor) -> Tensor:
        return forward(params, X, self.spec, self.a)

    def value_and_grad(self, params: Params, X: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Params]:
        """Loss ``(R,)``, outputs ``(R, n)`` and gradients of every run (hand-written backward)."""
        return batched.value_and_grad(params, X, y, self.spec, self.a, self.loss_kind)

    def hessian_operator(
        self, params: Params, gauss_newton: bool = False
    ) -> Callable[[Tensor], Tensor]:
        """Batched Hessian-vector product of the full-batch loss, ``(R, P) → (R, P)``.

        Forward-over-reverse by hand (:func:`batched.hvp_operator`), the
        primal pass cached once per eval step.
        """
        hvp = batched.hvp_operator(
            params, self.X, self.y, self.spec, self.a, self.loss_kind, gauss_newton=gauss_newton
        )

        def mv(v: Tensor) -> Tensor:
            return curvature.flatten(hvp(curvature.unflatten(v, params)))

        return mv

    def init(self) -> Params:
        # drawn and stacked on the host, then moved once per layer: one host→device
        # copy per layer rather than one per run and layer (1024 runs × 3 layers were
        # 3072 synchronising pageable copies in the H200 profile)
        def one(r: RunSpec) -> Params:
            return init_params(self.spec, r.config.seed, r.config.model.init_scale, self.dtype)

        # torch's CPU normal sampler is serial and releases the GIL: draw the
        # runs' weights on a few threads (Frei et al.-sized first layers are
        # millions of float64 draws per run)
        if len(self.runs) > 1 and self.spec.n_params >= 1 << 18:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(min(len(self.runs), torch.get_num_threads())) as pool:
                per_run = list(pool.map(one, self.runs))
        else:
            per_run = [one(r) for r in self.runs]
        return tuple(
            _to_device(_stack([p[i] for p in per_run]), self.device) for i in range(len(per_run[0]))
        )

    def outputs(self, params: Params, X: Tensor, x_dim: int | None) -> Tensor:
        """f on every run: ``(R, n)``."""
        return vmap(self.output_single, in_dims=(0, x_dim))(params, X)

    def start_vectors(self) -> Tensor:
        P = self.spec.n_params
        v = [
            torch.randn(P, generator=_run_generator(r.config.seed, 17), dtype=torch.float64)
            for r in self.runs
        ]
        return _to_device(_stack(v).to(self.dtype), self.device)

    # -------------------------------------------------------------------- train
    def train(self) -> ChunkResult:
        # Logistic gradients decay into float32 subnormals late in training; on
        # CPUs those are ~100× slower, and flushing them changes nothing we measure.
        torch.set_flush_denormal(True)
        try:
            return self._train()
        finally:
            torch.set_flush_denormal(False)

    def _train(self) -> ChunkResult:
        cfg, R, steps = self.cfg, self.R, self.cfg.train.steps
        dev, dt = self.device, self.dtype
        params = self.init()  # updated in place below
        init_weights = tuple(p.clone() for p in params)

        ctx = metrics.EvalContext(chunk=self, params=params, state={}, step=0)
        # Sharpness at θ₀: reported always when on, and needed for lr_units=critical.
        need_init_sharp = cfg.metrics.sharpness is not None or any(
            r.config.train.lr_units == "critical" for r in self.runs
        )
        sharp0 = torch.full((R,), math.nan, dtype=dt, device=dev)
        # A curvature / linear-algebra step that breaks for a run (_linalg) is a failed
        # measurement, not a divergence (SPEC §3): the run keeps training, its value
        # there is NaN, and the first failure's step and name go to measurement_cause.
        causes = [""] * R
        with _linalg.recording() as init_broke, precision.full(dev):
            if need_init_sharp:
                sharp0 = metrics.top_sharpness(ctx)[0][:, 0]  # kept in ctx.state for step 0

        lr_base = torch.tensor([r.config.train.lr for r in self.runs], dtype=torch.float64)
        critical = torch.tensor([r.config.train.lr_units == "critical" for r in self.runs])
        s0 = sharp0.detach().to("cpu", torch.float64)
        # η = lr × 2/λ₀ (Liu et al. 2023 critical units); λ₀ ≤ 0 has no critical rate → NaN (diverged).
        s0 = torch.where(s0 > 0, s0, torch.nan)
        lr_abs = torch.where(critical, lr_base * 2.0 / s0, lr_base)
        mult = np.stack([multipliers(r.config.train.schedule, steps) for r in self.runs])
        lr_table = _to_device((lr_abs[:, None] * torch.as_tensor(mult)).to(dt), dev)  # (R, steps+1)
        neg_lr = -lr_table  # the update's scale per step (negation is exact)
        nan = torch.full((), math.nan, dtype=dt, device=dev)  # made once: no tensor per step

        loss_tr = torch.full((steps + 1, R), math.nan, dtype=dt, device=dev)
        acc_tr = torch.full((steps + 1, R), math.nan, dtype=dt, device=dev)
        active = torch.ones(R, dtype=torch.bool, device=dev)
        div_step = torch.full((R,), -1, dtype=torch.long, device=dev)
        # why: 1 loss non-finite or above diverge_factor × L₀, 2 update non-finite
        div_kind = torch.zeros(R, dtype=torch.long, device=dev)
        pending = torch.zeros(R, dtype=torch.bool, device=dev)  # update went non-finite
        factor = torch.tensor(
            [r.config.metrics.phase.diverge_factor for r in self.runs], dtype=dt, device=dev
        )
        step_vals: dict[str, list[Tensor]] = {}
        eval_set = set(self.eval_steps)
        L0: Tensor | None = None

        sgd = cfg.train.batch_size is not None and cfg.train.batch_size < self.n
        bs = cfg.train.batch_size or self.n
        per_epoch = self.n // bs if sgd else 1
        order: Tensor | None = None
        ar = torch.arange(R, device=dev)[:, None]

        # the training GEMMs at train.matmul_precision (TF32 with `high` on CUDA)
        with precision.matmul_precision(cfg.train.matmul_precision, dev):
            for t in range(steps + 1):
                if sgd:
                    full_f = self.outputs(params, self.X, self.x_dim)
                    loss_t = mean_loss(full_f, self.y, self.loss_kind)
                    acc_t = accuracy(full_f, self.y)
                else:
                    loss_t, f_t, pas = batched.forward_loss(
                        params, self.X, self.y, self.spec, self.a, self.loss_kind
                    )
                    acc_t = accuracy(f_t, self.y)
                if L0 is None:
                    L0 = loss_t.detach().clone()
                # Divergence: a non-finite loss, a loss above diverge_factor × L₀, or an update
                # gone non-finite. All of it stays on the device: masks, no host reads.
                bad = active & (pending | ~torch.isfinite(loss_t) | (loss_t > factor * L0))
                div_step.masked_fill_(bad, t)
                div_kind = torch.where(bad, torch.where(pending, 2, 1), div_kind)
                was_active = active  # = active | bad after the update below
                active = active & ~bad
                torch.where(was_active, loss_t, nan, out=loss_tr[t])
                torch.where(was_active, acc_t, nan, out=acc_tr[t])

                if t in eval_set:
                    ctx.params, ctx.step, ctx.active = params, t, active
                    # curvature always in full precision
                    with _linalg.recording() as broke, precision.full(dev):
                        vals = metrics.step_metrics(ctx)
                    if t == 0:
                        broke = init_broke + broke
                    if broke:  # a Python list: no host read unless a step broke
                        self._broke(broke, active, t, causes)
                    for name, val in vals.items():
                        mask = active.reshape(-1, *([1] * (val.dim() - 1)))
                        if val.dtype == torch.bool:
                            val = val & mask
                        else:
                            val = torch.where(mask, val, torch.nan)
                        step_vals.setdefault(name, []).append(val)
                if t == steps:
                    break
                if sgd:
                    epoch, pos = divmod(t, per_epoch)
                    if pos == 0:
                        order = _to_device(
                            _stack(
                                [minibatch_order(r.config.seed, self.n, epoch) for r in self.runs]
                            ),
                            dev,
                        )
                    assert order is not None
                    idx = order[:, pos * bs : (pos + 1) * bs]
                    Xb = self.X[idx] if self.x_dim is None else self.X[ar, idx]
                    yb = self.y[idx] if self.x_dim is None else self.y[ar, idx]
                    _, _, pas = batched.forward_loss(
                        params, Xb, yb, self.spec, self.a, self.loss_kind
                    )
                y_step = yb if sgd else self.y
                # Backward fused with the in-place update. A non-finite gradient (or rate)
                # leaves the run's weights as they were (the last finite ones) and flags
                # it diverged at t + 1.
                scale = torch.where(active, neg_lr[:, t], 0.0)
                finite = batched.descend(pas, params, y_step, self.spec, self.loss_kind, scale)
                pending = active & ~finite
                if self.progress is not None and (t + 1) % 50 == 0:
                    self.progress(50)
        if self.progress is not None:
            self.progress(steps % 50 + 1)

        ctx.params, ctx.active = params, active
        with _linalg.recording() as broke, precision.full(dev):
            final_vals = metrics.final_metrics(ctx)
        if broke:
            self._broke(broke, active, steps, causes)
        res = self._collect(
            loss_tr, acc_tr, lr_table, step_vals, final_vals, div_step, sharp0, lr_abs,
            init_weights, params,
        )  # fmt: skip
        kinds = div_kind.cpu().tolist()
        no_rate = (~torch.isfinite(lr_abs)).tolist()
        names = {0: "", 1: "loss", 2: "non-finite update"}
        res.per_run["divergence_cause"] = np.array(
            [
                "no critical rate (λ₀ not positive or not measured)" if k == 2 and bad else names[k]
                for k, bad in zip(kinds, no_rate, strict=True)
            ],
            dtype=str,
        )
        res.per_run["measurement_failed"] = np.array([bool(c) for c in causes], dtype=bool)
        res.per_run["measurement_cause"] = np.array(causes, dtype=str)
        return res

    def _broke(
        self, records: list[tuple[str, Tensor]], active: Tensor, t: int, causes: list[str]
    ) -> Tensor:
        """Runs still active that a curvature / linear-algebra step broke at step t, as
        an ``(R,)`` mask; the first failure of each run is written into ``causes``."""
        hit = torch.zeros_like(active)
        for what, mask in records:
            if mask.shape != active.shape:  # not over runs: nothing to attribute
                continue
            new = active & mask.to(active.device) & ~hit
            for r in torch.nonzero(new).flatten().tolist():
                causes[r] = causes[r] or f"{what} at step {t}"
            hit |= new
        return hit

    # ------------------------------------------------------------------ collect
    def _collect(
        self, loss_tr, acc_tr, lr_table, step_vals, final_vals, div_step, sharp0, lr_abs,
        init_weights, params,
    ) -> ChunkResult:  # fmt: skip
        def np_(x: Tensor) -> np.ndarray:
            return x.detach().to("cpu").numpy()

        res = ChunkResult(runs=self.runs, eval_steps=self.eval_steps)
        loss = np_(loss_tr).T.astype(np.float64)
        res.per_iteration = {
            "loss": loss,
            "train_acc": np_(acc_tr).T.astype(np.float64),
            "lr_t": np_(lr_table).astype(np.float64),
        }
        for name, vals in step_vals.items():
            arr = np_(torch.stack(vals, dim=1))
            res.per_step[name] = arr if arr.dtype == np.bool_ else arr.astype(np.float64)
        diverged = np_(div_step) >= 0
        finals = {}
        for name, val in final_vals.items():
            arr = np_(val)
            finals[name] = arr if arr.dtype == np.bool_ else arr.astype(np.float64)
        sharp0_np = np_(sharp0).astype(np.float64)
        lr_np = np_(lr_abs).astype(np.float64)
        res.per_run = metrics.summaries(
            loss=loss,
            diverged=diverged,
            per_step=res.per_step,
            runs=self.runs,
            train_acc=res.per_iteration["train_acc"],
            lr_t=res.per_iteration["lr_t"],
            eval_steps=self.eval_steps,
            sharpness_init=sharp0_np,
            lr=lr_np,
            final=finals,
        )
        res.per_run["divergence_step"] = np_(div_step)
        res.per_run["sharpness_init"] = sharp0_np
        res.per_run["lr"] = lr_np
        res.per_run.update({k: v for k, v in finals.items() if k not in res.per_run})
        keep = set(self.cfg.store.weights)
        for i, (w0, w1) in enumerate(zip(init_weights, params, strict=True)):
            if "init" in keep:
                res.weights[f"init_W{i + 1}"] = np_(w0)
            if "final" in keep:
                res.weights[f"final_W{i + 1}"] = np_(w1)
        if self.a is not None:
            res.fixed["a"] = np_(self.a)
        return res
