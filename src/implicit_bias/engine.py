"""The batched training engine: all runs of a chunk advance as one computation.

The engine asks a model backend (:mod:`implicit_bias.models.backend`: the
hand-written MLP path or the ``torch.func`` path of any module) for the
batched forward pass, the gradient, Hessian-vector products and the NTK; it
never looks at the model's kind. A step is ``backend.forward_loss`` →
``backend.grad`` → an update rule (plain GD: :func:`gd_update`; the MLP path
fuses its backward pass with that update). Within a step there is no host
synchronisation: learning rates are a ``(runs, steps + 1)`` table,
divergence is a mask, and traces are written into preallocated device tensors.
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

from . import _linalg, curvature, metrics, optimizers, precision
from .config import ExperimentConfig
from .data import Dataset
from .flows import CentralFlows, FlowModel
from .losses import MULTICLASS_LOSSES, accuracy, mean_loss
from .models import ModelSpec, Params, fixed_last_layer
from .models.backend import Backend, activations_per_sample, make_backend
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


@dataclass(frozen=True)
class ModelSize:
    """What chunk sizing needs to know of a model (:func:`describe_model`)."""

    n_params: int  # trained parameters of one run
    act_per_sample: int  # activations one sample holds in a forward pass
    outputs: int  # 1 (±1 labels) or K
    generic: bool  # runs on the torch.func path


def describe_model(cfg: ExperimentConfig, data: Dataset) -> ModelSize:
    """Build the model a config asks for on its data once, as the engine will.

    Called when a sweep is planned, so a model that cannot run (a BatchNorm, an
    unknown factory, K outputs for other labels, a CNN on vectors) is refused
    with one line before any results folder is written.

    Raises:
        UserInputError: naming the key that is wrong.
    """
    K = _outputs_of([RunSpec(0, {}, cfg, data)])
    d, image = data.d, data.image_shape
    spec = ModelSpec.from_config(cfg.model, d, K) if cfg.model.kind == "mlp" else None
    a = fixed_last_layer(spec, torch.float64, "cpu") if spec is not None else None
    shape = image if image is not None else (d,)
    backend = make_backend(cfg.model, spec, a, cfg.train.loss, K, shape, cfg.train.device)
    if cfg.train.flow == "central" and cfg.train.flow_eigs > backend.n_params:
        from ._errors import UserInputError

        raise UserInputError(
            f"train.flow_eigs={cfg.train.flow_eigs} exceeds the model's {backend.n_params} "
            "trained parameters"
        )
    act = activations_per_sample(cfg.model, spec, image) or backend.n_params
    return ModelSize(backend.n_params, act, K, not backend.fused_descent)


def _outputs_of(runs: list[RunSpec]) -> int:
    """Outputs per sample of a chunk's model: 1 for ±1 labels, K for K classes;
    the loss and last layer checked against them (one line naming the key)."""
    from ._errors import UserInputError

    cfg, data = runs[0].config, runs[0].data
    ks = {r.data.n_classes if r.data.multiclass else 1 for r in runs}
    if len(ks) > 1:
        raise UserInputError(f"data: the runs of one chunk have different class counts {ks}")
    K = ks.pop()
    loss = cfg.train.loss
    if K == 1 and loss == "cross_entropy":
        raise UserInputError(
            "train.loss: cross_entropy needs class labels 0…K−1 (e.g. data.classes: all); "
            "the data has ±1 labels: use logistic"
        )
    if K > 1 and loss not in MULTICLASS_LOSSES:
        raise UserInputError(
            f"train.loss: {loss} is for ±1 labels; the data has {data.n_classes} classes: "
            "use cross_entropy or mse"
        )
    if K > 1 and cfg.model.last_layer == "fixed_sign":
        raise UserInputError(
            f"model.last_layer: fixed_sign needs ±1 labels; the data has {data.n_classes} classes"
        )
    return K


def gd_update(params: Params, grads: Params, scale: Tensor) -> tuple[Params, Tensor]:
    """The plain GD update θ ← θ + scale·∇loss of every run, in place.

    Runs whose gradient or ``scale`` is not finite keep their weights (the
    masks stay on the device: no host read).

    Args:
        scale: ``(R,)``, typically −η_t (0 for stopped runs).

    Returns:
        ``params`` and ``(R,)`` flags: the run's gradient and rate were finite.
    """
    finite = torch.isfinite(scale)
    for g in grads:
        finite = finite & torch.isfinite(g.reshape(g.shape[0], -1)).all(dim=1)
    s = torch.where(finite, scale, 0.0)
    for p, g in zip(params, grads, strict=True):
        shape = (-1,) + (1,) * (g.dim() - 1)
        p.add_(torch.where(finite.view(shape), g, 0.0) * s.view(shape))
    return params, finite


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
        #: outputs per sample: 1 for ±1 labels, K for class indices 0…K−1
        self.n_outputs = _outputs_of(runs)
        self.loss_kind = cfg.train.loss
        #: the MLP family's spec (what its diagnostics read); None for cnn and module
        self.spec: ModelSpec | None = None
        self.a: Tensor | None = None
        if cfg.model.kind == "mlp":
            self.spec = ModelSpec.from_config(cfg.model, self.d, self.n_outputs)
            self.a = fixed_last_layer(self.spec, self.dtype, self.device)
        image = runs[0].data.image_shape
        self.backend: Backend = make_backend(
            cfg.model,
            self.spec,
            self.a,
            self.loss_kind,
            self.n_outputs,
            image if image is not None else (self.d,),
            self.device.type,
        )
        self.n_params = self.backend.n_params
        self.param_names = self.backend.names
        self.act_per_sample = activations_per_sample(cfg.model, self.spec, image) or self.n_params
        self._order: Tensor | None = None  # this epoch's SGD sample order per run
        self._order_epoch = -1
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
        return mean_loss(self.backend.output_single(params, X), y, self.loss_kind, self.n_outputs)

    def output_single(self, params: Params, X: Tensor) -> Tensor:
        return self.backend.output_single(params, X)

    def value_and_grad(self, params: Params, X: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Params]:
        """Loss ``(R,)``, outputs ``(R, n)`` and gradients of every run (``X``, ``y``
        in the layout of the training set)."""
        loss, f, pas = self.backend.forward_loss(params, X, y, self.x_dim)
        return loss, f, self.backend.grad(pas, params, X, y, self.x_dim)

    def jacobian_gram(self, params: Params) -> tuple[Tensor, Tensor, Tensor]:
        """NTK Gram J Jᵀ ``(R, n, n)`` on the training inputs, J θ and f ``(R, n)``."""
        return self.backend.jacobian_gram(params, self.X, self.x_dim)

    def hessian_operator(
        self, params: Params, gauss_newton: bool = False
    ) -> Callable[[Tensor], Tensor]:
        """Batched Hessian-vector product of the full-batch loss, ``(R, P) → (R, P)``.

        Forward-over-reverse, by hand on the MLP path (the primal pass cached
        once per eval step), by ``torch.func`` on the generic one.
        """
        hvp = self.backend.hvp_operator(
            params, self.X, self.y, self.x_dim, gauss_newton=gauss_newton
        )

        def mv(v: Tensor) -> Tensor:
            return curvature.flatten(hvp(curvature.unflatten(v, params)))

        return mv

    def init(self) -> Params:
        # drawn and stacked on the host, then moved once per layer: one host→device
        # copy per layer rather than one per run and layer (1024 runs × 3 layers were
        # 3072 synchronising pageable copies in the H200 profile)
        def one(r: RunSpec) -> Params:
            return self.backend.init_one(r.config.seed, r.config.model.init_scale, self.dtype)

        # torch's CPU normal sampler is serial and releases the GIL: draw the
        # runs' weights on a few threads (Frei et al.-sized first layers are
        # millions of float64 draws per run)
        if len(self.runs) > 1 and self.backend.n_params >= 1 << 18:
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
        return self.backend.outputs(params, X, x_dim)

    def start_vectors(self) -> Tensor:
        P = self.n_params
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
        """The step loop: backend (loss, gradient) → update rule → measurements."""
        cfg, steps = self.cfg, self.cfg.train.steps
        params = self.init()  # updated in place below
        init_weights = tuple(p.clone() for p in params)
        ctx = metrics.EvalContext(chunk=self, params=params, state={}, step=0)
        # A curvature / linear-algebra step that breaks for a run (_linalg) is a failed
        # measurement, not a divergence (SPEC §3): the run keeps training, its value
        # there is NaN, and the first failure's step and name go to measurement_cause.
        causes = [""] * self.R
        # the optimizer (optimizers.py): plain GD keeps the fused step of the MLP path
        opt = _Optimizer(self, params) if cfg.train.optimizer != "gd" else None
        sharp0, relevant0, init_broke = self._initial_curvature(ctx, opt)
        lr_abs, lr_table = self._rates(relevant0, opt)
        neg_lr = -lr_table  # the update's scale per step (negation is exact)
        watch = _Watch(self)
        step_vals: dict[str, list[Tensor]] = {}
        eval_set = set(self.eval_steps)
        # the central flow and gradient flow of every run, from θ₀ (train.flow)
        flows = self._flows(init_weights) if cfg.train.flow == "central" else None

        # the training GEMMs at train.matmul_precision (TF32 with `high` on CUDA)
        with precision.matmul_precision(cfg.train.matmul_precision, self.device):
            for t in range(steps + 1):
                loss_t, acc_t, pas = self._full_batch_loss(params)
                watch.observe(t, loss_t, acc_t)
                if t in eval_set:
                    ctx.params, ctx.step, ctx.active = params, t, watch.active
                    broke = init_broke if t == 0 else []
                    extra = self._flow_traces(flows, t, lr_table, params)
                    self._measure(ctx, opt, watch.active, causes, broke, step_vals, extra)
                if t == steps:
                    break
                # a non-finite gradient (or rate) leaves the run's weights as they
                # were (the last finite ones) and flags it diverged at t + 1
                scale = torch.where(watch.active, neg_lr[:, t], 0.0)
                params, finite = self._step(
                    params, t, pas, scale, opt, lr_table[:, t], watch.active
                )
                watch.pending = watch.active & ~finite
                if flows is not None:
                    with precision.full(self.device):
                        flows.advance(t, lr_table[:, t])
                if self.progress is not None and (t + 1) % 50 == 0:
                    self.progress(50)
        if self.progress is not None:
            self.progress(steps % 50 + 1)

        ctx.params, ctx.active = params, watch.active
        with _linalg.recording() as broke, precision.full(self.device):
            final_vals = metrics.final_metrics(ctx)
        if broke:
            self._broke(broke, watch.active, steps, causes)
        res = self._collect(
            watch.loss, watch.acc, lr_table, step_vals, final_vals, watch.div_step, sharp0,
            lr_abs, init_weights, params, relevant0 if opt is not None else None,
        )  # fmt: skip
        if flows is not None:
            res.per_run.update(flows.per_run())
        res.per_run["divergence_cause"] = watch.causes(lr_abs)
        res.per_run["measurement_failed"] = np.array([bool(c) for c in causes], dtype=bool)
        res.per_run["measurement_cause"] = np.array(causes, dtype=str)
        return res

    def _initial_curvature(
        self, ctx: metrics.EvalContext, opt: _Optimizer | None
    ) -> tuple[Tensor, Tensor, list[tuple[str, Tensor]]]:
        """Sharpness at θ₀ ``(R,)`` (NaN when not needed), the curvature the critical
        rate is read from (λ₁(P⁻¹H) for adaptive rules, else the sharpness), and the
        measurements that broke on the way (attributed at step 0)."""
        cfg, R = self.cfg, self.R
        # Sharpness at θ₀: reported always when on, and needed for lr_units=critical.
        need = cfg.metrics.sharpness is not None or any(
            r.config.train.lr_units == "critical" for r in self.runs
        )
        sharp0 = torch.full((R,), math.nan, dtype=self.dtype, device=self.device)
        adaptive = opt is not None and opt.adaptive and need
        with _linalg.recording() as broke, precision.full(self.device):
            if need:
                sharp0 = metrics.top_sharpness(ctx)[0][:, 0]  # kept in ctx.state for step 0
            if adaptive:
                assert opt is not None
                # the relevant curvature of adaptive rules: λ₁(P⁻¹H) with the P of the
                # first update (from the full-batch g₀), at θ₀
                ctx.state["preconditioner"] = opt.first_preconditioner(ctx.params)
                return sharp0, metrics.top_preconditioned_sharpness(ctx)[0], broke
        return sharp0, sharp0, broke

    def _rates(self, relevant0: Tensor, opt: _Optimizer | None) -> tuple[Tensor, Tensor]:
        """The absolute base rate η per run ``(R,)`` (float64, host) and the rate of
        every step ``(R, steps + 1)`` (schedules applied, on the device)."""
        steps = self.cfg.train.steps
        numerator = (
            opt.numerator.cpu()
            if opt is not None
            else torch.full((self.R,), 2.0, dtype=torch.float64)
        )
        lr_base = torch.tensor([r.config.train.lr for r in self.runs], dtype=torch.float64)
        critical = torch.tensor([r.config.train.lr_units == "critical" for r in self.runs])
        s0 = relevant0.detach().to("cpu", torch.float64)
        # η = lr × c/λ₀ (Liu et al. 2023 critical units; c the optimizer's threshold
        # numerator, 2 for GD); λ₀ ≤ 0 has no critical rate → NaN (diverged).
        s0 = torch.where(s0 > 0, s0, torch.nan)
        lr_abs = torch.where(critical, lr_base * numerator / s0, lr_base)
        mult = np.stack([multipliers(r.config.train.schedule, steps) for r in self.runs])
        lr_table = _to_device((lr_abs[:, None] * torch.as_tensor(mult)).to(self.dtype), self.device)
        return lr_abs, lr_table

    def _measure(
        self,
        ctx: metrics.EvalContext,
        opt: _Optimizer | None,
        active: Tensor,
        causes: list[str],
        earlier: list[tuple[str, Tensor]],
        step_vals: dict[str, list[Tensor]],
        extra: dict[str, Tensor] | None = None,
    ) -> None:
        """The eval-step metrics at ``ctx.step`` (and the ``extra`` traces, the flows')
        appended to ``step_vals`` (NaN, or False, for stopped runs); failed
        measurements go to ``causes``."""
        t = ctx.step
        if opt is not None and opt.adaptive and t > 0:
            ctx.state["preconditioner"] = opt.preconditioner()
        # curvature always in full precision
        with _linalg.recording() as broke, precision.full(self.device):
            vals = metrics.step_metrics(ctx)
        broke = earlier + broke
        if broke:  # a Python list: no host read unless a step broke
            self._broke(broke, active, t, causes)
        vals.update(extra or {})
        for name, val in vals.items():
            mask = active.reshape(-1, *([1] * (val.dim() - 1)))
            if val.dtype == torch.bool:
                val = val & mask
            else:
                val = torch.where(mask, val, torch.nan)
            step_vals.setdefault(name, []).append(val)

    def _flow_traces(
        self, flows: CentralFlows | None, t: int, lr_table: Tensor, params: Params
    ) -> dict[str, Tensor]:
        """The flows' step traces at eval step t (none without flows); measured outside
        the linear-algebra recording, so a flow's failure is its own NaN, not GD's."""
        if flows is None:
            return {}
        with precision.full(self.device):
            return flows.measure(t, lr_table[:, t], params)

    def _flows(self, theta0: Params) -> CentralFlows:
        """The runs' central and gradient flows from ``theta0`` (:mod:`implicit_bias.flows`)."""
        tc = self.cfg.train

        def loss_and_grads(p: Params) -> tuple[Tensor, Params]:
            loss, _, grads = self.value_and_grad(p, self.X, self.y)
            return loss, grads

        # the backend's own gradient and (flat) HVP, so the MLP family keeps its
        # hand-written passes; the third derivative as a difference of those HVPs
        model = FlowModel(
            self.loss_single, theta0, self.X, self.y, self.x_dim, loss_and_grads,
            self.hessian_operator, third="fd",
        )  # fmt: skip
        return CentralFlows(
            model, theta0, self.start_vectors(), tc.flow_substeps, tc.flow_eigs,
            _run_generator(self.runs[0].config.seed, 31),
        )  # fmt: skip

    # ------------------------------------------------------------------- steps
    @property
    def _sgd(self) -> bool:
        bs = self.cfg.train.batch_size
        return bs is not None and bs < self.n

    def _full_batch_loss(self, params: Params) -> tuple[Tensor, Tensor, Any]:
        """Training loss and accuracy ``(R,)`` on the full set, and (full-batch GD)
        the forward pass the step completes; ``None`` under SGD."""
        if self._sgd:
            f = self.outputs(params, self.X, self.x_dim)
            K = self.n_outputs
            return mean_loss(f, self.y, self.loss_kind, K), accuracy(f, self.y, K), None
        loss, f, pas = self.backend.forward_loss(params, self.X, self.y, self.x_dim)
        return loss, accuracy(f, self.y, self.n_outputs), pas

    def _minibatch(self, t: int) -> tuple[Tensor, Tensor]:
        """Step t's minibatch of every run, ``(R, b, d)`` and ``(R, b)``: epoch
        orders drawn per run seed (:func:`minibatch_order`), cached per epoch."""
        bs = self.cfg.train.batch_size
        assert bs is not None
        epoch, pos = divmod(t, self.n // bs)
        if self._order is None or self._order_epoch != epoch:
            order = _stack([minibatch_order(r.config.seed, self.n, epoch) for r in self.runs])
            self._order, self._order_epoch = _to_device(order, self.device), epoch
        idx = self._order[:, pos * bs : (pos + 1) * bs]
        if self.x_dim is None:
            return self.X[idx], self.y[idx]
        ar = torch.arange(self.R, device=self.device)[:, None]
        return self.X[ar, idx], self.y[ar, idx]

    def _step(
        self,
        params: Params,
        t: int,
        pas: Any,
        scale: Tensor,
        opt: _Optimizer | None = None,
        lr: Tensor | None = None,
        active: Tensor | None = None,
    ) -> tuple[Params, Tensor]:
        """One update of every run: gradient from the backend, then the update rule.

        Args:
            pas: the full-batch forward pass of step t (``None`` under SGD).
            scale: ``(R,)``, −η_t (0 for stopped runs).
            opt: the update rule when it is not plain GD (with the rates η_t ``lr``
                and the ``active`` runs it needs).

        Returns:
            The new params and ``(R,)`` flags: the run's gradient was finite.
        """
        X, y, x_dim = self.X, self.y, self.x_dim
        if self._sgd:
            X, y = self._minibatch(t)
            x_dim = 0  # a minibatch is drawn per run
            pas = self.backend.forward_loss(params, X, y, x_dim)[2]
        if opt is not None:  # any rule but plain GD: grads → rule → params
            assert lr is not None and active is not None
            grads = self.backend.grad(pas, params, X, y, x_dim)
            return params, ~opt.step(grads, params, lr, active)
        if self.backend.fused_descent:
            # plain GD on the hand-written path: backward fused with the in-place update
            return params, self.backend.descend(pas, params, y, scale)
        grads = self.backend.grad(pas, params, X, y, x_dim)
        return gd_update(params, grads, scale)

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
        init_weights, params, relevant0,
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
            sharpness_init=sharp0_np if relevant0 is None else np_(relevant0).astype(np.float64),
            lr=lr_np,
            final=finals,
        )
        # (stability_numerator and stability_threshold c/η come from the summaries)
        if "preconditioned_sharpness" in res.per_step and relevant0 is not None:
            res.per_run["preconditioned_sharpness_init"] = np_(relevant0).astype(np.float64)
        res.per_run["divergence_step"] = np_(div_step)
        res.per_run["sharpness_init"] = sharp0_np
        res.per_run["lr"] = lr_np
        res.per_run.update({k: v for k, v in finals.items() if k not in res.per_run})
        keep = set(self.cfg.store.weights)
        for name, w0, w1 in zip(self.backend.names, init_weights, params, strict=True):
            if "init" in keep:
                res.weights[f"init_{name}"] = np_(w0)
            if "final" in keep:
                res.weights[f"final_{name}"] = np_(w1)
        if self.a is not None:
            res.fixed["a"] = np_(self.a)
        return res


class _Watch:
    """The loss and accuracy traces and the divergence masks of a chunk's runs.

    Divergence (SPEC §3): a non-finite loss, a loss above ``diverge_factor`` × L₀,
    or an update gone non-finite (``pending``, set by the loop after a step). All
    of it stays on the device: masks, no host reads within a step.
    """

    def __init__(self, tr: Trainer):
        R, steps, dt, dev = tr.R, tr.cfg.train.steps, tr.dtype, tr.device
        self.loss = torch.full((steps + 1, R), math.nan, dtype=dt, device=dev)
        self.acc = torch.full((steps + 1, R), math.nan, dtype=dt, device=dev)
        self.active = torch.ones(R, dtype=torch.bool, device=dev)
        self.div_step = torch.full((R,), -1, dtype=torch.long, device=dev)
        # why: 1 loss non-finite or above diverge_factor × L₀, 2 update non-finite
        self.kind = torch.zeros(R, dtype=torch.long, device=dev)
        self.pending = torch.zeros(R, dtype=torch.bool, device=dev)  # update went non-finite
        self.factor = torch.tensor(
            [r.config.metrics.phase.diverge_factor for r in tr.runs], dtype=dt, device=dev
        )
        self.nan = torch.full((), math.nan, dtype=dt, device=dev)  # made once: no tensor per step
        self.L0: Tensor | None = None

    def observe(self, t: int, loss_t: Tensor, acc_t: Tensor) -> None:
        """Record step t's loss and accuracy; stop the runs that diverged at t."""
        if self.L0 is None:
            self.L0 = loss_t.detach().clone()
        active, pending = self.active, self.pending
        bad = active & (pending | ~torch.isfinite(loss_t) | (loss_t > self.factor * self.L0))
        self.div_step.masked_fill_(bad, t)
        self.kind = torch.where(bad, torch.where(pending, 2, 1), self.kind)
        torch.where(active, loss_t, self.nan, out=self.loss[t])  # active = was active | bad
        torch.where(active, acc_t, self.nan, out=self.acc[t])
        self.active = active & ~bad

    def causes(self, lr_abs: Tensor) -> np.ndarray:
        """``divergence_cause`` per run: '', 'loss', 'non-finite update', or no critical rate."""
        kinds = self.kind.cpu().tolist()
        no_rate = (~torch.isfinite(lr_abs)).tolist()
        names = {0: "", 1: "loss", 2: "non-finite update"}
        return np.array(
            [
                "no critical rate (λ₀ not positive or not measured)" if k == 2 and bad else names[k]
                for k, bad in zip(kinds, no_rate, strict=True)
            ],
            dtype=str,
        )


class _Optimizer:
    """The update rules of :mod:`implicit_bias.optimizers` inside the engine.

    Plain GD does not come here (the MLP path fuses its backward with the
    update, the generic one uses :func:`gd_update`). Any other rule takes the gradients of the step's
    (mini)batch, computes the updates and adds them in place; a run that may
    not step (stopped, or a non-finite gradient) keeps its weights and state.
    """

    def __init__(self, trainer: Trainer, params: Params):
        cfg = trainer.cfg.train
        self.tr = trainer
        self.name = cfg.optimizer
        self.rule = optimizers.rule(self.name)
        self.adaptive = self.name in optimizers.ADAPTIVE
        per_run = [r.config.train.optimizer_hyper() for r in trainer.runs]
        self.hp = optimizers.hyper(
            trainer.R,
            **{k: [h[k] for h in per_run] for k in optimizers.Hyper._fields},
            device=trainer.device,
        )
        self.numerator = optimizers.threshold_numerator(self.name, self.hp)
        self.state = self.rule.init(params)

    def step(self, grads: Params, params: Params, lr: Tensor, active: Tensor) -> Tensor:
        """One update in place from the backend's gradients; returns ``(R,)`` runs to
        flag diverged (non-finite)."""
        finite = torch.isfinite(lr)
        for g in grads:
            finite &= torch.isfinite(g).flatten(1).all(1)
        ok = active & finite
        upd, new = self.rule.update(grads, self.state, torch.where(ok, lr, 0.0), self.hp)
        self.state = optimizers.select(ok, new, self.state)
        for p, u in zip(params, upd, strict=True):
            p.add_(torch.where(ok.view(-1, *([1] * (u.dim() - 1))), u, 0.0))
        return active & ~finite

    def first_preconditioner(self, params: Params) -> Tensor:
        """P at θ₀ from the full-batch g₀ (:func:`optimizers.initial_preconditioner`),
        flat ``(R, P)``."""
        tr = self.tr
        _, _, grads = tr.value_and_grad(params, tr.X, tr.y)
        P = optimizers.initial_preconditioner(self.name, grads, self.hp)
        assert P is not None
        return curvature.flatten(P)

    def preconditioner(self) -> Tensor:
        """P of the last update taken, flat ``(R, P)``."""
        P = optimizers.preconditioner(self.name, self.state, self.hp)
        assert P is not None
        return curvature.flatten(P)
