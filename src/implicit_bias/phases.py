"""The phase of a run (SPEC §3, rule v2), from stored per-run numbers only.

Numpy only (the report reads :data:`PHASES` without importing torch). Two steps,
both on whole chunks (leading dim R = runs):

1. :func:`phase_inputs` turns the traces into the rule's inputs, each stored per
   run under the name it has here (:data:`INPUT_NAMES`), so anyone can recheck
   a label from the results folder.
2. :func:`classify` applies the rule to those inputs and the thresholds of
   ``metrics.phase`` (:class:`implicit_bias.config.PhaseConfig`).

Notation: L₀ = loss at step 0, η_t the rate at step t, λ_t the curvature at eval
step t (see *curvature* below), c the optimizer's stability numerator
(``stability_numerator``: 2 for GD, whose threshold is 2/η), so the curvature
ratio is ρ_t = λ_t·η_t/c and "above critical" means ρ > 1. ``tol`` is
``eos_tolerance``. The rule, decided in this order (the first that holds wins):

``diverged``
    training diverged (``divergence_step`` ≥ 0): a non-finite loss or update, or a
    loss > ``diverge_factor``·L₀. A failed *measurement* (an eigen-solve that
    breaks) is not a phase: the run keeps training and carries
    ``measurement_failed`` / ``measurement_cause`` (set by the engine).
``dead``
    the net's outputs on the training set are constant: every unit of some hidden
    ReLU layer inactive on every training point (``dead_units`` == 1), or
    ``output_spread`` ≤ ``dead_spread``. Accuracy never enters.
``not_converged``
    alive but not converged: ``final_loss_ratio`` = L_T/L₀ > 1 − ``converged_margin``,
    or the loss still oscillates at the end (``final_oscillation`` = the largest rise
    of the loss above its running minimum over the last 10 % of the steps, / L₀,
    > ``oscillation_tol``), or the final curvature is above the threshold
    (``sharpness_after_ratio`` = ρ_T > 1 + tol). A net that has not learned yet is
    here.
``catapult`` (Lewkowycz et al. 2020, arXiv 2003.02218)
    above critical at init (``critical_ratio`` = λ₀·η/c > 1); the loss rose above L₀
    early — ``spike_height`` = max L_t/L₀ − 1 over t ≤ ``flatten_step`` (the first
    eval step with ρ_t < 1; the whole run if there is none) > ``catapult_rise``;
    then converged (above) with ρ_T ≤ 1 + tol.
``sharpness_reduction`` (Kalra & Barkeshli 2023, arXiv 2302.12250)
    above critical at init, no early rise above L₀, converged with ρ_T ≤ 1 + tol:
    the curvature fell before the loss could catapult (on separable data, the
    logistic curvature vanishing as the margin grows). Below critical, a converged
    run whose curvature fell below the lazy band (``min_sharpness_rel`` <
    ``lazy_low``) and that did not hover at the edge is here too: Kalra &
    Barkeshli's phase is "the sharpness decreases early", whatever the rate.
``edge_of_stability`` (Cohen et al. 2021, arXiv 2103.00065)
    below critical at init (``critical_ratio`` ≤ 1); |ρ_t − 1| ≤ tol at
    ``eos_hover_steps`` ≥ ``eos_hover`` consecutive eval steps (``eos_step`` the
    first of the longest such stretch), with a non-monotone loss there
    (``eos_rise`` = the largest rise of the loss above its running minimum over that
    stretch's iterations, / L₀, > ``eos_rise`` threshold).
``progressive_sharpening`` (Cohen et al. 2021 §3; Kalra & Barkeshli 2023)
    below critical, converged, no hover, and the curvature rose above the lazy band
    (``max_sharpness_rel`` > ``lazy_high``) without settling at the edge: the
    features moved, so the run is not lazy.
``lazy``
    below critical at init, converged, no hover, the curvature within
    [``lazy_low``, ``lazy_high``]·λ₀ at every eval step (``min_sharpness_rel``,
    ``max_sharpness_rel`` = min, max of λ_t/λ₀).

*Curvature*: the Hessian sharpness when ``metrics.sharpness`` is on
(``curvature_source`` = ``sharpness``); else, for the squared loss with
``metrics.ntk`` on, the NTK top eigenvalue (``ntk``: for ½·mean (f − y)² the
Gauss–Newton part of the Hessian is (1/n)JᵀJ, whose top eigenvalue is the
NTK's, and near a fit the Hessian is its Gauss–Newton part); else none
(``none``). Eval steps whose measurement failed (NaN) are skipped. Without a
curvature trace the curvature conditions cannot be checked and are not used
against a run: the early-rise window is the whole run, ``not_converged`` reads
the loss only, ``edge_of_stability`` and ``progressive_sharpening`` are never
decided, and a converged run below critical (or of unknown ``critical_ratio``)
is ``lazy`` with its band unchecked (``min_sharpness_rel`` NaN).

Other stored numbers: ``loss_bump`` (the largest rise of the loss above its
running minimum over the whole run, / L₀: the pre-v2 "spike", kept to show
bumps that never exceed L₀), ``sharpness_before`` (λ at the last eval step at or
before ``spike_step``), ``sharpness_after`` (λ_T), ``max_sharpness_ratio``
(max ρ_t), ``final_train_acc``, ``chance_acc`` (the majority-class fraction).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

#: every label, in the order tables and legends show them (roughly: growing rate)
PHASES = (
    "lazy",
    "progressive_sharpening",
    "edge_of_stability",
    "sharpness_reduction",
    "catapult",
    "not_converged",
    "dead",
    "diverged",
)
#: the order in which the rule decides (the first that holds wins)
PRECEDENCE = (
    "diverged",
    "dead",
    "not_converged",
    "catapult",
    "sharpness_reduction",
    "edge_of_stability",
    "progressive_sharpening",
    "lazy",
)
PHASE_DTYPE = f"<U{max(map(len, PHASES))}"
CURVATURE_SOURCES = ("sharpness", "ntk", "none")
#: the share of the steps, at the end, over which ``final_oscillation`` is read
OSCILLATION_WINDOW = 0.1

#: per-run inputs of the rule, as stored (besides ``final_loss`` and ``loss``)
INPUT_NAMES = (
    "stability_numerator",
    "critical_ratio",
    "final_loss_ratio",
    "final_oscillation",
    "flatten_step",
    "spike_step",
    "spike_height",
    "loss_bump",
    "sharpness_before",
    "sharpness_after",
    "sharpness_after_ratio",
    "max_sharpness_ratio",
    "min_sharpness_rel",
    "max_sharpness_rel",
    "eos_step",
    "eos_hover_steps",
    "eos_rise",
    "final_train_acc",
    "chance_acc",
    "output_spread",
    "dead_units",
    "curvature_source",
)


def stability_numerator(train: Any) -> float:
    """c in the optimizer's stability threshold c/η on a quadratic (SPEC §2.1).

    Plain (S)GD: 2. An optimizer with another threshold ((2 + 2β) for heavy ball, …)
    adds its numerator here; the phase rule reads only this number.
    """
    kind = getattr(train, "optimizer", "gd")
    if kind == "gd":
        return 2.0
    raise NotImplementedError(f"no stability threshold for train.optimizer {kind!r}")


@dataclass(frozen=True)
class Thresholds:
    """Per-run thresholds ``(R,)`` of ``metrics.phase`` (see :class:`PhaseConfig`)."""

    catapult_rise: np.ndarray
    eos_tolerance: np.ndarray
    eos_rise: np.ndarray
    eos_hover: np.ndarray
    converged_margin: np.ndarray
    oscillation_tol: np.ndarray
    lazy_low: np.ndarray
    lazy_high: np.ndarray
    dead_spread: np.ndarray

    @classmethod
    def from_configs(cls, cfgs: Sequence) -> Thresholds:
        """From each run's ``metrics.phase`` config."""
        return cls(
            **{
                f.name: np.array([getattr(c, f.name) for c in cfgs], dtype=np.float64)
                for f in fields(cls)
            }
        )


def _rise(loss: np.ndarray) -> np.ndarray:
    """L_t − min_{s≤t} L_s along the last axis, −∞ where the loss is not finite."""
    fin = np.isfinite(loss)
    run_min = np.minimum.accumulate(np.where(fin, loss, np.inf), axis=-1)
    return np.where(fin, loss - run_min, -np.inf)


def _max_or_nan(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(np.max(x)) if x.size else math.nan


def _longest_stretch(mask: np.ndarray) -> tuple[int, int]:
    """(start index, length) of the longest run of True in a 1-d mask; (−1, 0) if none."""
    best, start, cur = (-1, 0), 0, 0
    for i, m in enumerate(mask):
        if m:
            if cur == 0:
                start = i
            cur += 1
            if cur > best[1]:
                best = (start, cur)
        else:
            cur = 0
    return best


def phase_inputs(
    *,
    loss: np.ndarray,
    train_acc: np.ndarray,
    lr_t: np.ndarray,
    diverged: np.ndarray,
    eval_steps: Sequence[int],
    curvature: np.ndarray | None,
    curvature_source: str | np.ndarray,
    critical_ratio: np.ndarray,
    chance_acc: np.ndarray,
    output_spread: np.ndarray,
    dead_units: np.ndarray,
    th: Thresholds,
    numerator: np.ndarray | float = 2.0,
) -> dict[str, np.ndarray]:
    """The rule's inputs per run.

    Args:
        loss: training loss ``(R, T+1)`` at every iteration (NaN after divergence).
        train_acc: training accuracy ``(R, T+1)``.
        lr_t: the rate η_t ``(R, T+1)`` (absolute).
        diverged: ``(R,)`` bool.
        eval_steps: the S eval steps, ascending, the last = T.
        curvature: ``(R, S)`` curvature at the eval steps (NaN where a measurement
            failed), or ``None`` if not measured.
        curvature_source: ``sharpness``, ``ntk`` or ``none`` (one for all runs, or ``(R,)``).
        critical_ratio: λ₀·η/c ``(R,)`` with the absolute base rate (NaN if unknown).
        chance_acc: majority-class fraction of the training labels ``(R,)``.
        output_spread: std over training points of f at θ_T / rms(y) ``(R,)``.
        dead_units: fraction of hidden units inactive on every training point, max
            over hidden layers ``(R,)`` (0 for nets without inactive units).
        th: thresholds (``catapult_rise``, ``eos_tolerance`` are read here).
        numerator: the stability numerator c (2 for GD), scalar or ``(R,)``.

    Returns:
        Arrays ``(R,)`` named as in :data:`INPUT_NAMES`.
    """
    loss = np.asarray(loss, dtype=np.float64)
    R, T1 = loss.shape
    steps = np.asarray(eval_steps, dtype=np.int64)
    num = np.broadcast_to(np.asarray(numerator, dtype=np.float64), (R,)).copy()
    L0 = loss[:, 0]
    rise = _rise(loss) / L0[:, None]
    final_ratio = np.where(diverged, np.nan, loss[:, -1] / L0)
    win = max(1, math.ceil(OSCILLATION_WINDOW * (T1 - 1)))
    osc = np.max(_rise(loss[:, -(win + 1) :]), axis=1) / L0
    osc = np.where(diverged | ~np.isfinite(osc), np.nan, osc)

    nan = np.full(R, np.nan)
    before, after, after_ratio, max_ratio = nan.copy(), nan.copy(), nan.copy(), nan.copy()
    lo_rel, hi_rel, eos_rise = nan.copy(), nan.copy(), nan.copy()
    flatten = np.full(R, -1, dtype=np.int64)
    eos_step = np.full(R, -1, dtype=np.int64)
    hover = np.zeros(R, dtype=np.int64)
    spike_height, spike_step = nan.copy(), np.full(R, -1, dtype=np.int64)
    curv = None if curvature is None else np.asarray(curvature, dtype=np.float64)
    for r in range(R):
        ratio = None
        if curv is not None:
            ratio = curv[r] * lr_t[r, steps] / num[r]  # (S,)
        fin = np.zeros(len(steps), dtype=bool) if ratio is None else np.isfinite(ratio)
        end = T1 - 1  # the early-rise window: up to the first eval step below threshold
        if fin.any():
            assert ratio is not None and curv is not None
            max_ratio[r] = np.max(ratio[fin])
            after[r], after_ratio[r] = curv[r, -1], ratio[-1]
            below = np.flatnonzero(fin & (ratio < 1))
            if below.size:
                flatten[r] = end = steps[below[0]]
            lam0 = curv[r, 0]
            if np.isfinite(lam0) and lam0 > 0:
                rel = curv[r][fin] / lam0
                lo_rel[r], hi_rel[r] = np.min(rel), np.max(rel)
            start, length = _longest_stretch(fin & (np.abs(ratio - 1) <= th.eos_tolerance[r]))
            if length:
                hover[r], eos_step[r] = length, steps[start]
                a, b = steps[start], steps[start + length - 1]
                eos_rise[r] = _max_or_nan(_rise(loss[r, a : b + 1]) / L0[r])
        early = loss[r, : end + 1] / L0[r] - 1
        if np.isfinite(early).any():
            k = int(np.nanargmax(np.where(np.isfinite(early), early, -np.inf)))
            spike_height[r] = early[k]
            if early[k] > th.catapult_rise[r]:
                spike_step[r] = k
                if fin.any():
                    assert curv is not None
                    j = np.searchsorted(steps, k, side="right") - 1
                    before[r] = curv[r, j]
    src = np.broadcast_to(np.asarray(curvature_source, dtype="<U9"), (R,)).copy()
    return {
        "stability_numerator": num,
        "critical_ratio": np.asarray(critical_ratio, dtype=np.float64),
        "final_loss_ratio": final_ratio.astype(np.float64),
        "final_oscillation": osc.astype(np.float64),
        "flatten_step": flatten,
        "spike_step": spike_step,
        "spike_height": spike_height,
        "loss_bump": np.max(rise, axis=1).astype(np.float64),
        "sharpness_before": before,
        "sharpness_after": after,
        "sharpness_after_ratio": after_ratio,
        "max_sharpness_ratio": max_ratio,
        "min_sharpness_rel": lo_rel,
        "max_sharpness_rel": hi_rel,
        "eos_step": eos_step,
        "eos_hover_steps": hover,
        "eos_rise": eos_rise,
        "final_train_acc": np.where(diverged, np.nan, train_acc[:, -1]).astype(np.float64),
        "chance_acc": np.asarray(chance_acc, dtype=np.float64),
        "output_spread": np.where(diverged, np.nan, output_spread).astype(np.float64),
        "dead_units": np.where(diverged, np.nan, dead_units).astype(np.float64),
        "curvature_source": src,
    }


def classify(inp: dict[str, np.ndarray], diverged: np.ndarray, th: Thresholds) -> np.ndarray:
    """The phase of each run ``(R,)`` from the stored inputs (module docstring's rule).

    A comparison with NaN is false, so an unknown number never proves a condition;
    the curvature conditions that cannot be checked (no trace) are skipped, as
    the module docstring says.
    """
    div = np.asarray(diverged, dtype=bool)
    dead = ~div & ((inp["dead_units"] >= 1.0) | (inp["output_spread"] <= th.dead_spread))
    live = ~div & ~dead
    end_ratio = inp["sharpness_after_ratio"]
    unconverged = (
        ~(inp["final_loss_ratio"] <= 1 - th.converged_margin)
        | (inp["final_oscillation"] > th.oscillation_tol)
        | (end_ratio > 1 + th.eos_tolerance)
    )
    not_conv = live & unconverged
    conv = live & ~unconverged
    crit = inp["critical_ratio"]
    above = crit > 1
    early_rise = inp["spike_height"] > th.catapult_rise
    catapult = conv & above & early_rise
    reduction_above = conv & above & ~early_rise
    below = conv & ~above  # includes an unknown critical ratio (no curvature at all)
    eos = (
        below
        & (crit <= 1)
        & (inp["eos_hover_steps"] >= th.eos_hover)
        & (inp["eos_rise"] > th.eos_rise)
    )
    rest = below & ~eos  # NaN band (no curvature trace): neither test holds → lazy
    reduction_below = rest & (inp["min_sharpness_rel"] < th.lazy_low)
    sharpening = rest & ~reduction_below & (inp["max_sharpness_rel"] > th.lazy_high)
    out = np.full(div.shape, "lazy", dtype=PHASE_DTYPE)
    out[sharpening] = "progressive_sharpening"
    out[eos] = "edge_of_stability"
    out[reduction_above | reduction_below] = "sharpness_reduction"
    out[catapult] = "catapult"
    out[not_conv] = "not_converged"
    out[dead] = "dead"
    out[div] = "diverged"
    return out
