"""The phase of a run (SPEC §3), from stored per-run numbers only.

Numpy only (the report reads :data:`PHASES` without importing torch). Two steps,
both on whole chunks (leading dim R = runs):

1. :func:`phase_inputs` turns the traces into the rule's inputs, each stored per
   run under the name it has here (:data:`INPUT_NAMES`), so anyone can recheck
   a label from the results folder.
2. :func:`classify` applies the rule to those inputs and the thresholds of
   ``metrics.phase`` (:class:`implicit_bias.config.PhaseConfig`).

The rule, decided in this order (L₀ = loss at step 0, η_t the rate at step t,
"curvature" the top Hessian eigenvalue, see *curvature* below):

``diverged``
    the engine flagged the run (``divergence_step`` ≥ 0: non-finite loss or
    loss > ``diverge_factor``·L₀).
``dead``
    not diverged, and the trained net no longer learns: every unit of some
    hidden ReLU layer is inactive on every training point
    (``dead_units`` == 1), or its outputs are constant
    (``output_spread`` ≤ ``dead_spread``), or its final training accuracy is at
    chance (``final_train_acc`` ≤ ``chance_acc`` + ``dead_acc_margin``). A run
    that never learned to classify (too few steps, too small a rate) is at
    chance too: it is not converged either.
``catapult`` (Lewkowycz et al. 2020, arXiv 2003.02218)
    above the critical rate at init (``critical_ratio`` = η·λ₀/2 > 1), a loss
    spike (``spike_height`` = max_t (L_t − min_{s≤t} L_s)/L₀ > ``catapult_rise``),
    the curvature below 2/η at the end (``sharpness_after_ratio`` =
    λ_T·η_T/2 < 1 + ``eos_tolerance``) and convergence (``final_loss`` < L₀).
``edge_of_stability`` (Cohen et al. 2021, arXiv 2103.00065)
    below the critical rate at init (``critical_ratio`` ≤ 1), the curvature
    rises to 2/η (``max_sharpness_ratio`` = max over eval steps of λ_t·η_t/2
    ≥ 1 − ``eos_tolerance``; ``eos_step`` the first such eval step) and the loss
    rises above its running minimum there (``eos_rise`` = max (L_t − min_{s≤t}
    L_s)/L₀ over t from the eval step before ``eos_step`` on, > ``eos_rise``
    threshold).
``lazy``
    none of the above (on separable data even rates far above critical can be
    lazy: the curvature falls before it can destabilise).

*Curvature*: the Hessian sharpness when ``metrics.sharpness`` is on
(``curvature_source`` = ``sharpness``); else, for the squared loss with
``metrics.ntk`` on, the NTK top eigenvalue (``ntk``: for ½·mean (f − y)² the
Gauss–Newton part of the Hessian is (1/n)JᵀJ, whose top eigenvalue is the
NTK's, and near a fit the Hessian is its Gauss–Newton part); else none
(``none``). Without a curvature trace the curvature conditions cannot be
checked: ``catapult`` then needs only a known ``critical_ratio`` > 1 (it is
known under ``lr_units: critical``, which measures λ₀ anyway), a spike and
convergence; ``edge_of_stability`` is never decided, and a run that would
need it is ``lazy``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np

#: every label, in the order tables and legends show them (roughly: growing rate)
PHASES = ("lazy", "edge_of_stability", "catapult", "dead", "diverged")
#: the order in which the rule decides (the first that holds wins)
PRECEDENCE = ("diverged", "dead", "catapult", "edge_of_stability", "lazy")
PHASE_DTYPE = f"<U{max(map(len, PHASES))}"
CURVATURE_SOURCES = ("sharpness", "ntk", "none")

#: per-run inputs of the rule, as stored (besides ``final_loss`` and ``loss``)
INPUT_NAMES = (
    "spike_step",
    "spike_height",
    "sharpness_before",
    "sharpness_after",
    "sharpness_after_ratio",
    "critical_ratio",
    "max_sharpness_ratio",
    "eos_step",
    "eos_rise",
    "final_train_acc",
    "chance_acc",
    "output_spread",
    "dead_units",
    "curvature_source",
)


@dataclass(frozen=True)
class Thresholds:
    """Per-run thresholds ``(R,)`` of ``metrics.phase`` (see :class:`PhaseConfig`)."""

    catapult_rise: np.ndarray
    eos_tolerance: np.ndarray
    eos_rise: np.ndarray
    dead_acc_margin: np.ndarray
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
    """L_t − min_{s≤t} L_s ``(R, T)``, −∞ where the loss is not finite."""
    fin = np.isfinite(loss)
    run_min = np.minimum.accumulate(np.where(fin, loss, np.inf), axis=1)
    return np.where(fin, loss - run_min, -np.inf)


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
) -> dict[str, np.ndarray]:
    """The rule's inputs per run.

    Args:
        loss: training loss ``(R, T+1)`` at every iteration (NaN after divergence).
        train_acc: training accuracy ``(R, T+1)``.
        lr_t: the rate η_t ``(R, T+1)`` (absolute).
        diverged: ``(R,)`` bool.
        eval_steps: the S eval steps, ascending, the last = T.
        curvature: ``(R, S)`` curvature at the eval steps, or ``None`` if not measured.
        curvature_source: ``sharpness``, ``ntk`` or ``none`` (one for all runs, or ``(R,)``).
        critical_ratio: η·λ₀/2 ``(R,)`` with the absolute base rate (NaN if unknown).
        chance_acc: majority-class fraction of the training labels ``(R,)``.
        output_spread: std over training points of f at θ_T / rms(y) ``(R,)``.
        dead_units: fraction of hidden units inactive on every training point, max
            over hidden layers ``(R,)`` (0 for nets without inactive units).
        th: thresholds (``eos_tolerance`` is read here).

    Returns:
        Arrays ``(R,)`` named as in :data:`INPUT_NAMES`.
    """
    R = loss.shape[0]
    steps = np.asarray(eval_steps, dtype=np.int64)
    L0 = loss[:, 0]
    rise = _rise(loss) / L0[:, None]
    spike_height = np.max(rise, axis=1)
    spike_at = np.argmax(rise, axis=1)
    spike = spike_height > th.catapult_rise
    spike_step = np.where(spike, spike_at, -1).astype(np.int64)

    nan = np.full(R, np.nan)
    before, after, after_ratio, max_ratio = nan.copy(), nan.copy(), nan.copy(), nan.copy()
    eos_step = np.full(R, -1, dtype=np.int64)
    eos_rise = nan.copy()
    if curvature is not None:
        curv = np.asarray(curvature, dtype=np.float64)
        ratio = curv * lr_t[:, steps] / 2  # (R, S)
        for r in range(R):
            fin = np.isfinite(ratio[r])
            if not fin.any():
                continue
            max_ratio[r] = np.max(ratio[r][fin])
            after[r], after_ratio[r] = curv[r, -1], ratio[r, -1]
            if spike[r]:
                k = np.searchsorted(steps, spike_step[r], side="right") - 1
                before[r] = curv[r, k]
            band = np.flatnonzero(fin & (ratio[r] >= 1 - th.eos_tolerance[r]))
            if band.size:
                eos_step[r] = steps[band[0]]
                start = steps[max(band[0] - 1, 0)]  # it crossed in somewhere after this one
                eos_rise[r] = np.max(rise[r, start:])
    src = np.broadcast_to(np.asarray(curvature_source, dtype="<U9"), (R,)).copy()
    return {
        "spike_step": spike_step,
        "spike_height": spike_height.astype(np.float64),
        "sharpness_before": before,
        "sharpness_after": after,
        "sharpness_after_ratio": after_ratio,
        "critical_ratio": np.asarray(critical_ratio, dtype=np.float64),
        "max_sharpness_ratio": max_ratio,
        "eos_step": eos_step,
        "eos_rise": eos_rise,
        "final_train_acc": np.where(diverged, np.nan, train_acc[:, -1]).astype(np.float64),
        "chance_acc": np.asarray(chance_acc, dtype=np.float64),
        "output_spread": np.where(diverged, np.nan, output_spread).astype(np.float64),
        "dead_units": np.where(diverged, np.nan, dead_units).astype(np.float64),
        "curvature_source": src,
    }


def classify(
    inp: dict[str, np.ndarray],
    diverged: np.ndarray,
    initial_loss: np.ndarray,
    final_loss: np.ndarray,
    th: Thresholds,
) -> np.ndarray:
    """The phase of each run ``(R,)`` from the stored inputs (module docstring's rule).

    Comparisons with NaN are false: an unknown number never proves a condition.
    """
    div = np.asarray(diverged, dtype=bool)
    dead = ~div & (
        (inp["dead_units"] >= 1.0)
        | (inp["output_spread"] <= th.dead_spread)
        | (inp["final_train_acc"] <= inp["chance_acc"] + th.dead_acc_margin)
    )
    live = ~div & ~dead
    has_curv = inp["curvature_source"] != "none"
    crit = inp["critical_ratio"]
    catapult = (
        live
        & (crit > 1)
        & (inp["spike_step"] >= 0)
        & (final_loss < initial_loss)
        & (~has_curv | (inp["sharpness_after_ratio"] < 1 + th.eos_tolerance))
    )
    eos = (
        live
        & ~catapult
        & has_curv
        & (crit <= 1)
        & (inp["max_sharpness_ratio"] >= 1 - th.eos_tolerance)
        & (inp["eos_rise"] > th.eos_rise)
    )
    out = np.full(div.shape, "lazy", dtype=PHASE_DTYPE)
    out[eos] = "edge_of_stability"
    out[catapult] = "catapult"
    out[dead] = "dead"
    out[div] = "diverged"
    return out
