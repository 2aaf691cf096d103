"""Measurements at eval steps, per-run summaries and phases (SPEC §3).

A metric is a small function of an :class:`EvalContext` returning per-run
tensors (shape ``(R,)`` or ``(R, k)``); it is listed once in :data:`STEP_METRICS`
with the config switch that turns it on. Adding a metric is adding one entry.
Values at the last eval step (θ_steps) are also reported as ``final_<name>``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from . import _linalg, curvature, phases
from .config import MetricsConfig
from .losses import accuracy, mean_loss

if TYPE_CHECKING:
    from ._context import Chunk
    from .models import Params


@dataclass
class EvalContext:
    """What a metric may look at: the chunk (data, spec, operators; a
    :class:`~implicit_bias._context.Chunk`, not the engine), the batched params, state."""

    chunk: Chunk
    params: Params
    state: dict[str, Any] = field(default_factory=dict)
    step: int = 0
    active: Tensor | None = None

    @property
    def cfg(self) -> MetricsConfig:
        return self.chunk.cfg.metrics


# ----------------------------------------------------------------- curvature
def top_sharpness(ctx: EvalContext, k: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Top-k Hessian eigenvalues of the training loss by batched Lanczos.

    Warm-started from the previous eval step's top Ritz vector (stored in
    ``ctx.state``). Returns eigenvalues ``(R, k)`` (largest algebraic first),
    residuals ‖Hv − λv‖ ``(R, k)`` and converged flags ``(R, k)``.
    """
    tr = ctx.chunk
    sc = ctx.cfg.sharpness
    iters = sc.iters if sc is not None else 20
    k = k or (sc.top_k if sc is not None else 1)
    tol = sc.tol if sc is not None else 1e-3
    cached = ctx.state.get("lanczos_result")
    if cached is not None and cached[0] == ctx.step and cached[1] is ctx.params and cached[2] == k:
        return cached[3]  # θ₀ was measured before training (critical rate); reuse at step 0
    op = tr.hessian_operator(ctx.params)
    if "lanczos_v" not in ctx.state:  # drawn only when sharpness is measured at all
        ctx.state["lanczos_v"] = tr.start_vectors()
    res = curvature.lanczos(op, ctx.state["lanczos_v"], iters=iters, k=k, tol=tol, early_stop=True)
    v = res.eigenvectors[:, 0]
    ok = torch.isfinite(v).all(-1, keepdim=True)
    ctx.state["lanczos_v"] = torch.where(ok, v, ctx.state["lanczos_v"])
    out = (res.eigenvalues, res.residuals, res.converged)
    ctx.state["lanczos_result"] = (ctx.step, ctx.params, k, out)
    return out


def _sharpness(ctx: EvalContext) -> dict[str, Tensor]:
    vals, resid, conv = top_sharpness(ctx)
    out = {
        "sharpness": vals[:, 0],
        "sharpness_residual": resid[:, 0],
        "sharpness_converged": conv[:, 0],
    }
    if vals.shape[1] > 1:
        out["sharpness_topk"] = vals
    return out


def _gn_sharpness(ctx: EvalContext) -> dict[str, Tensor]:
    tr = ctx.chunk
    op = tr.hessian_operator(ctx.params, gauss_newton=True)
    v0 = ctx.state["gn_v"] if "gn_v" in ctx.state else tr.start_vectors()
    sc = ctx.cfg.sharpness
    res = curvature.lanczos(
        op, v0, iters=sc.iters if sc else 20, k=1, tol=sc.tol if sc else 1e-3, early_stop=True
    )
    ctx.state["gn_v"] = torch.where(
        torch.isfinite(res.eigenvectors[:, 0]), res.eigenvectors[:, 0], v0
    )
    return {"gn_sharpness": res.eigenvalues[:, 0]}


def _ntk(ctx: EvalContext) -> dict[str, Tensor]:
    tr = ctx.chunk
    if tr.n <= 2048:
        from .batched import jacobian_gram

        gram = jacobian_gram(ctx.params, tr.X, tr.spec, tr.a)[0] / tr.n
        out = {"ntk_max": _linalg.eigvalsh(gram, "NTK Gram linalg.eigvalsh")[0][:, -1]}
        if ctx.step in ctx.cfg.ntk_gram_at:
            ctx.state.setdefault("ntk_gram", {})[ctx.step] = gram
        return out
    op = curvature.ntk_operator(tr.output_single, ctx.params, tr.X, tr.x_dim)
    v0 = ctx.state.setdefault(
        "ntk_v", torch.ones(tr.R, tr.n, dtype=tr.dtype, device=tr.device) / tr.n**0.5
    )
    res = curvature.lanczos(op, v0, iters=30, k=1)
    ctx.state["ntk_v"] = torch.where(
        torch.isfinite(res.eigenvectors[:, 0]), res.eigenvectors[:, 0], v0
    )
    return {"ntk_max": res.eigenvalues[:, 0]}


def _trace(ctx: EvalContext) -> dict[str, Tensor]:
    tr = ctx.chunk
    tc = ctx.cfg.trace
    assert tc is not None
    op = tr.hessian_operator(ctx.params)
    gen = torch.Generator(device="cpu").manual_seed(1234 + ctx.step)
    # what one run's Hessian-vector product holds: primal and tangent signals of
    # every layer, forward and backward (sizes the vmapped blocks of probes)
    act = 8 * tr.n * max(tr.spec.width, 1) * tr.spec.depth
    out = {
        "hessian_trace": curvature.hutchinson_trace(
            op, tr.R, tr.spec.n_params, tc.probes, tr.dtype, tr.device, gen, act
        )
    }
    if tc.density:
        nodes, weights = curvature.spectral_density(
            op, tr.R, tr.spec.n_params, tc.probes, tc.iters, tr.dtype, tr.device, gen, act
        )
        out["density_nodes"], out["density_weights"] = nodes, weights
    return out


# ------------------------------------------------------------------ evaluation
def _test(ctx: EvalContext) -> dict[str, Tensor]:
    tr = ctx.chunk
    f = tr.outputs(ctx.params, tr.Xt, tr.xt_dim)
    return {"test_loss": mean_loss(f, tr.yt, tr.loss_kind), "test_acc": accuracy(f, tr.yt)}


def _stable_rank(ctx: EvalContext) -> dict[str, Tensor]:
    from . import diagnostics

    out = {}
    for i, W in enumerate(ctx.params):
        out[f"stable_rank_W{i + 1}"] = diagnostics.stable_rank(W)
        out[f"numerical_rank_W{i + 1}"] = diagnostics.numerical_rank(W, ctx.cfg.rank_tol).to(
            W.dtype
        )
    return out


def _margins(ctx: EvalContext) -> dict[str, Tensor]:
    from . import diagnostics

    tr = ctx.chunk
    return diagnostics.margins(ctx.params, tr.X, tr.y, tr.spec, tr.a)


def _kkt(ctx: EvalContext) -> dict[str, Tensor]:
    from . import diagnostics

    tr = ctx.chunk
    return diagnostics.kkt_residuals(ctx.params, tr.X, tr.y, tr.spec, tr.a)


MetricFn = Callable[[EvalContext], dict[str, Tensor]]

#: (enabled?, metric) pairs evaluated at every eval step, in this order.
STEP_METRICS: list[tuple[Callable[[EvalContext], bool], MetricFn]] = [
    (lambda c: c.cfg.sharpness is not None, _sharpness),
    (lambda c: c.cfg.gn_sharpness, _gn_sharpness),
    (lambda c: c.chunk.Xt.shape[-2] > 0, _test),
    (lambda c: c.cfg.ntk, _ntk),
    (lambda c: c.cfg.stable_rank, _stable_rank),
    (lambda c: c.cfg.margins, _margins),
    (lambda c: c.cfg.kkt, _kkt),
    (lambda c: c.cfg.trace is not None, _trace),
]

#: step metrics also reported at θ_steps as ``final_<name>``.
FINAL_FROM_STEP = (
    "sharpness",
    "gn_sharpness",
    "test_loss",
    "test_acc",
    "ntk_max",
    "margin",
    "normalized_margin",
    "kkt_stationarity",
    "kkt_slackness",
    "hessian_trace",
)


def step_metrics(ctx: EvalContext) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    with torch.no_grad():
        for enabled, fn in STEP_METRICS:
            if enabled(ctx):
                out.update(fn(ctx))
    return out


def output_stats(ctx: EvalContext) -> dict[str, Tensor]:
    """What the ``dead`` phase reads at θ_steps (SPEC §3), NaN for runs no longer active.

    Returns:
        ``output_spread`` ``(R,)``: the standard deviation of f(xᵢ) over the training
        points divided by rms(y) (0 for a constant output). ``dead_units`` ``(R,)``:
        for ReLU nets, the fraction of a hidden layer's units whose pre-activation is
        ≤ 0 on every training point (ReLU' = 0 there, so they never train again), max
        over hidden layers; 0 for activations without a flat part (linear, leaky).
    """
    from .models import activate

    tr = ctx.chunk
    params = ctx.params
    f = tr.outputs(params, tr.X, tr.x_dim)  # (R, n)
    y_rms = tr.y.square().mean(-1).sqrt()
    spread = f.std(-1, correction=0) / y_rms
    dead = torch.zeros(tr.R, dtype=f.dtype, device=f.device)
    if tr.spec.activation == "relu" and tr.spec.depth > 1:
        c = tr.spec.multipliers()
        h = tr.X  # (n, d) or (R, n, d)
        for layer in range(tr.spec.depth - 1):
            z = (h @ params[layer].transpose(-1, -2)) * c[layer]  # (R, n, width)
            inactive = (z <= 0).all(dim=-2).to(f.dtype).mean(-1)
            dead = torch.maximum(dead, inactive)
            h = activate(z, tr.spec)
    ok = ctx.active if ctx.active is not None else torch.ones_like(dead, dtype=torch.bool)
    nan = torch.full_like(dead, math.nan)
    return {"output_spread": torch.where(ok, spread, nan), "dead_units": torch.where(ok, dead, nan)}


def final_metrics(ctx: EvalContext) -> dict[str, Tensor]:
    """Run-level measurements at θ_steps that have no per-step trace."""
    tr = ctx.chunk
    with torch.no_grad():
        out: dict[str, Tensor] = output_stats(ctx)
    if not (ctx.cfg.stable_rank or ctx.cfg.margins):
        return out
    from . import diagnostics

    if ctx.cfg.stable_rank:
        for i, W in enumerate(ctx.params):
            out[f"singular_values_W{i + 1}"] = diagnostics.singular_values(W)
    if ctx.cfg.margins:
        v = diagnostics.linear_predictor_batched(ctx.params, tr.spec, tr.a)
        if v is not None:
            out["linear_predictor"] = v
            out["linear_margin"] = diagnostics.geometric_margin(v, tr.X, tr.y)
            svms = [data_geometry(r.data)[0] for r in tr.runs]
            svm = svms[0] if tr.x_dim is None else svms
            out.update(diagnostics.svm_metrics(v, svm, tr.X, tr.y))
            if tr.Xt.shape[-2] > 0:
                out["boundary_agreement"] = diagnostics.boundary_agreement(
                    ctx.params, v, tr.Xt, tr.spec, tr.a
                )
    if "ntk_gram" in ctx.state:
        for step, gram in ctx.state["ntk_gram"].items():
            out[f"ntk_gram_{step}"] = gram
    return out


# --------------------------------------------------------------- data geometry
_GEOMETRY_CACHE: dict[str, tuple[Any, dict[str, Any]]] = {}


def data_geometry(data) -> tuple[Any, dict[str, Any]]:
    """SVM and geometry of a training set, computed once per data fingerprint.

    Returns:
        ``(svm, geometry)``: a :class:`diagnostics.SVMResult` and the dict of
        :func:`diagnostics.data_geometry` (separable, svm_margin,
        near_orthogonality, rank, degenerate, class_overlap).
    """
    from . import diagnostics

    key = data.fingerprint()
    if key not in _GEOMETRY_CACHE:
        svm = diagnostics.svm_direction(data.X_train, data.y_train)
        geo = diagnostics.data_geometry(data.X_train, data.y_train, svm=svm)
        if len(_GEOMETRY_CACHE) > 64:
            _GEOMETRY_CACHE.clear()
        _GEOMETRY_CACHE[key] = (svm, geo)
    return _GEOMETRY_CACHE[key]


GEOMETRY_KEYS = (
    "separable",
    "svm_margin",
    "near_orthogonality",
    "rank",
    "degenerate",
    "class_overlap",
)


def geometry_per_run(runs) -> dict[str, np.ndarray]:
    """``data_<key>`` per run (the run summary of SPEC §3 data diagnostics)."""
    geos = [data_geometry(r.data)[1] for r in runs]
    out = {}
    for key in GEOMETRY_KEYS:
        vals = np.array([g[key] for g in geos])
        out[f"data_{key}"] = vals.astype(
            np.bool_ if key in ("separable", "degenerate") else np.float64
        )
    return out


# ------------------------------------------------------------------ summaries
PHASES = phases.PHASES


def summaries(
    loss: np.ndarray,
    diverged: np.ndarray,
    per_step: dict[str, np.ndarray],
    runs,
    *,
    train_acc: np.ndarray,
    lr_t: np.ndarray,
    eval_steps: list[int],
    sharpness_init: np.ndarray,
    lr: np.ndarray,
    final: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Per-run summaries: ``final_*``, the phase (SPEC §3) and every input of its rule.

    Args:
        loss, train_acc, lr_t: per-iteration traces ``(R, T+1)``.
        diverged: ``(R,)``.
        per_step: eval-step traces ``(R, S, ...)``.
        runs: the chunk's :class:`engine.RunSpec` (configs and data).
        eval_steps: the S eval steps.
        sharpness_init: λ₀ ``(R,)`` (NaN when not measured).
        lr: the absolute base rate η ``(R,)``.
        final: ``output_spread`` and ``dead_units`` ``(R,)`` from :func:`final_metrics`.
    """
    R = loss.shape[0]
    final = final or {}
    out: dict[str, np.ndarray] = {}
    # SPEC §3: a diverged run has no final loss or sharpness
    out["final_loss"] = np.where(diverged, np.nan, loss[:, -1])
    for name, arr in per_step.items():
        if name in FINAL_FROM_STEP or name.startswith(("stable_rank_W", "numerical_rank_W")):
            last = arr[:, -1].astype(np.float64)
            out[f"final_{name}"] = np.where(diverged, np.nan, last) if name == "sharpness" else last

    # the curvature trace the rule reads (phases module docstring)
    lr = np.asarray(lr, dtype=np.float64)
    num = np.array([phases.stability_numerator(r.config.train) for r in runs], dtype=np.float64)
    crit = lr * np.asarray(sharpness_init, dtype=np.float64) / num
    curv: np.ndarray | None = None
    source = "none"
    if "sharpness" in per_step:
        curv, source = per_step["sharpness"], "sharpness"
    elif "ntk_max" in per_step and runs[0].config.train.loss == "mse":
        curv, source = per_step["ntk_max"], "ntk"
        crit = np.where(np.isfinite(crit), crit, lr * curv[:, 0] / num)
    chance = np.empty(R)
    for i, r in enumerate(runs):
        y = np.asarray(r.data.y_train)
        chance[i] = max(np.mean(y > 0), np.mean(y < 0)) if y.size else np.nan
    th = phases.Thresholds.from_configs([r.config.metrics.phase for r in runs])
    inp = phases.phase_inputs(
        loss=loss,
        train_acc=train_acc,
        lr_t=lr_t,
        diverged=diverged,
        eval_steps=eval_steps,
        curvature=curv,
        curvature_source=source,
        critical_ratio=crit,
        chance_acc=chance,
        output_spread=final.get("output_spread", np.full(R, np.nan)),
        dead_units=final.get("dead_units", np.zeros(R)),
        th=th,
        numerator=num,
    )
    out["phase"] = phases.classify(inp, diverged, th)
    # SPEC §2.1: the threshold c/η at the base rate (2/η for GD)
    with np.errstate(divide="ignore", invalid="ignore"):  # η = 0: no threshold (inf)
        out["stability_threshold"] = num / lr
    out.update(inp)
    return out
