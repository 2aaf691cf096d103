"""Cohen, Damian, Talwalkar, Kolter & Lee 2024 (arXiv 2410.24206, ICLR 2025): central
flows; with Damian, Nichani & Lee 2022 (arXiv 2209.15594): self-stabilization.

At the edge of stability GD's iterates oscillate, but their *time average*
follows a differential equation, the central flow (abstract). For GD with one
unstable direction (as stated in issue 19, read from the authors' companion
pages and code): dw/dt = −η[∇L + ½σ²∇S], S the top Hessian eigenvalue,
σ² = 2⟨−∇L, ∇S⟩/‖∇S‖² while S = 2/η and the gradient flow would raise S
(σ² = 0 below the edge), which keeps S at 2/η; it predicts GD's time-averaged
loss as L(w) + tr Σ/η (Σ = σ² u uᵀ) and GD's oscillation along the top
eigenvector u as E[(uᵀ(w_GD − w))²] ≈ σ². Damian et al. 2022 (abstract): GD
*self-stabilizes* — it implicitly follows projected gradient descent under the
constraint S ≤ 2/η, not gradient flow.

Here: the workbench's central flow (``train.flow: central``) beside each GD run,
started from the run's θ₀, Euler with a few substeps per GD step (the flow time
of one GD step is one unit at rate η), and the plain gradient flow (Σ = 0) from
the same θ₀. Network and data as :mod:`.cohen2021`: scikit-learn's 8×8 digits,
even vs odd as ±1, fc-tanh (depth 3, width 32, no biases), square loss,
float64. The paper: CIFAR-10 subsets, several architectures (CNNs, ViT, …),
with GD, RMSProp and Adam.

GD's time average: a centred moving average of the per-iteration ``loss`` over
2·:data:`HALF` iterations with half weight at both ends
(:func:`implicit_bias.smoothing.centred_average`, which removes a period-2
flip-flop exactly), sampled at the eval steps. "After the edge": eval steps at
least :data:`SETTLE` iterations after ``cf_edge_step`` (the first GD step at
which the central flow's constraint became active); a run whose flow never
reached the edge is judged over every eval step where the average fits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..smoothing import at_steps, centred_average
from ._base import Configs, Paper, Runs, Verdict, g, gl, not_judged, with_
from ._figures import figure, save
from .cohen2021 import fc_tanh_digits

SETTING = (
    "fc-tanh (depth 3, width 32, no biases, one output), 128 digits even vs odd (±1), "
    "square loss, full-batch GD in float64 with its central flow and gradient flow from θ₀ "
    "(train.flow: central, one tracked direction); paper: CIFAR-10 subsets, CNNs/ViT/…"
)
#: GD's rate at the edge (η·S₀/2 ≈ 0.76–0.83; its central flow reaches 2/η at step 7–19) and
#: below it (2/η = 40, far above any sharpness reached)
ETA = 0.4
TINY = 0.05
#: Euler substeps per GD step
SUBSTEPS = 4
#: GD's time average: centred over 2·HALF iterations. Here GD oscillates in bursts
#: (the sharpness overshoots 2/η, then GD catapults), ≈ 50–120 iterations apart: the
#: window smooths a burst's flip-flop, but not across bursts, where the loss falls ≈ 3×
HALF = 20
#: judge from SETTLE iterations after the flow's edge (the onset transient of GD is
#: not part of the prediction)
SETTLE = 20
#: "tracks": mean relative error |avg − prediction| / avg over the judged steps ≤ TRACK
TRACK = 0.25
#: "far below": median over the judged steps of ‖w_GD − w_CF‖ / ‖w_GD − w_GF‖ ≤ RATIO
RATIO = 0.5
#: σ² against the time-averaged squared displacement: within a factor FACTOR
FACTOR = 3.0
#: "equals": relative difference of the central flow's and gradient flow's numbers ≤ SAME;
#: their sharpness, from separate warm-started Lanczos solves (relative residual 1e-3),
#: within SAME_S
SAME = 1e-6
SAME_S = 1e-4
#: Damian et al.'s self-stabilization: GD's sharpness within BAND of the flow's
#: (relative median over the judged steps), the gradient flow's beyond it
BAND = 0.15
#: a loss "rises" on an eval interval when it grows by more than this relative amount
RISE = 1e-9


def _experiments(quick: bool) -> Configs:
    seeds = [0] if quick else [0, 1]

    def cfg(name: str, rate: float, steps: int, every: int) -> dict[str, Any]:
        return {
            "name": f"cohen2024-{name}",
            **fc_tanh_digits(),
            "train": {
                "loss": "mse",
                "steps": steps,
                "dtype": "float64",
                "flow": "central",
                "flow_substeps": SUBSTEPS,
                "flow_eigs": 1,
            },
            "metrics": {"every": every, "sharpness": {"iters": 20}, "dense_early": False},
            "sweep": {"train.lr": [rate], "seed": seeds},
        }

    return {
        "eos": cfg("eos", ETA, 300 if quick else 800, 5),
        "below": cfg("below", TINY, 60 if quick else 200, 5),
    }


PAPER = Paper(
    "cohen2024",
    "Cohen, Damian et al. 2024 (arXiv 2410.24206), central flows; with Damian et al. 2022 "
    "(arXiv 2209.15594), self-stabilization",
    _experiments,
)


# ------------------------------------------------------------------ shared measurements
def smoothed_loss(r: Runs) -> np.ndarray:
    """(run, step) GD's centred time-averaged loss at the eval steps (NaN where it does not fit)."""
    return at_steps(centred_average(r.trace("loss"), HALF), r.steps)


def judged_steps(r: Runs) -> tuple[np.ndarray, list[str]]:
    """(run, step) mask of the eval steps judged "after the edge", and per-run text.

    From ``cf_edge_step`` + :data:`SETTLE` on; every eval step when the flow
    never reached the edge (``cf_edge_step`` −1). Only steps where GD's time
    average fits (not within :data:`HALF` of either end).
    """
    steps = r.steps
    edge = r.scalar("cf_edge_step")
    avg_ok = np.isfinite(smoothed_loss(r))
    mask = np.zeros(avg_ok.shape, dtype=bool)
    text = []
    for i, e in enumerate(edge):
        start = e + SETTLE if e >= 0 else 0
        mask[i] = avg_ok[i] & (steps >= start)
        text.append(f"edge at step {int(e)}" if e >= 0 else "no edge")
    return mask, text


def masked(fn: Any, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per run, ``fn`` (np.mean, np.median) of ``x[i]`` over ``mask[i]``; NaN without any step."""
    return np.array([float(fn(v[m])) if m.any() else np.nan for v, m in zip(x, mask, strict=True)])


def _rel_err(avg: np.ndarray, pred: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per run: mean |avg − pred| / avg over the masked steps (NaN without any)."""
    return masked(np.mean, np.abs(avg - pred) / np.abs(avg), mask)


def tracking_errors(r: Runs) -> dict[str, np.ndarray]:
    """Per run, the mean relative error of each prediction against GD's time-averaged loss.

    Keys: ``cf_predicted_loss`` (L + tr Σ/η), ``cf_loss`` (L alone), ``gf_loss``.
    """
    avg = smoothed_loss(r)
    mask, _ = judged_steps(r)
    return {v: _rel_err(avg, r.trace(v), mask) for v in ("cf_predicted_loss", "cf_loss", "gf_loss")}


def _signed_gap(r: Runs, var: str) -> np.ndarray:
    """Per run: mean (avg − var) / avg over the judged steps (> 0: var underestimates)."""
    avg = smoothed_loss(r)
    mask, _ = judged_steps(r)
    return masked(np.mean, (avg - r.trace(var)) / np.abs(avg), mask)


def _counts(mask: np.ndarray) -> str:
    return gl(mask.sum(axis=1))


# ------------------------------------------------------------------ controls
def _below_edge(cfgs: Configs) -> Configs:
    """The ``eos`` experiment at the small rate: 2/η far above any sharpness reached."""
    return {"eos": with_(cfgs["eos"], train__steps=50, sweep={"train.lr": [TINY]})}


def _at_edge(cfgs: Configs) -> Configs:
    """The ``below`` experiment at the edge-of-stability rate (long enough to reach it)."""
    return {"below": with_(cfgs["below"], train__steps=30, sweep={"train.lr": [ETA]})}


_BELOW_NOTE = (
    f"η = {TINY}: 2/η = {2 / TINY:g} is never reached, so σ² = 0 and the central flow is "
    "the gradient flow"
)


# ------------------------------------------------------------------ claims
@PAPER.claim(
    "CF1",
    claim="The central flow predicts GD's time-averaged loss at the edge of stability, "
    "L(w_CF) + tr Σ/η, where the gradient flow's loss does not.",
    source="Cohen et al. 2024, abstract (the time-averaged trajectory); the predicted loss "
    "L + tr Σ/η as stated in issue 19 from the authors' companion pages",
    setting=f"{SETTING}; η = {g(ETA)}",
    criterion=f"per run, over the eval steps ≥ {SETTLE} iterations after the flow's edge, the "
    f"mean |avg − p| / avg of GD's centred {2 * HALF}-iteration average loss avg is ≤ {TRACK} "
    f"for p = cf_predicted_loss and > {TRACK} for p = gf_loss (cf_loss, dropping tr Σ/η, "
    "is shown beside: see CF2)",
    uses="eos",
    control=_below_edge,
    control_note=_BELOW_NOTE + ": the gradient flow predicts GD as well as the central flow",
)
def _cf1(r: Runs) -> Verdict:
    err = tracking_errors(r)
    mask, edge = judged_steps(r)
    cf, gf, bare = err["cf_predicted_loss"], err["gf_loss"], err["cf_loss"]
    if not np.isfinite(cf).any():
        return not_judged("no eval step where GD's time average fits")
    ok = bool(np.all(cf <= TRACK) and np.all(gf > TRACK))
    return ok, (
        f"η = {gl(r.eta)} ({', '.join(edge)}; {_counts(mask)} steps judged): mean rel. error "
        f"of L + tr Σ/η {gl(cf)}, of the gradient flow's loss {gl(gf)} (of L(w_CF) alone {gl(bare)})"
    )


@PAPER.claim(
    "CF2",
    claim="Dropping tr Σ/η underestimates: at the edge of stability GD's time-averaged loss "
    "lies above the central flow's own loss L(w_CF).",
    source="Cohen et al. 2024 as stated in issue 19 (the predicted loss is L + tr Σ/η, "
    "from the companion pages); derived: L(w_CF) alone is then too low",
    setting=f"{SETTING}; η = {g(ETA)}",
    criterion=f"per run, over the eval steps ≥ {SETTLE} iterations after the flow's edge, GD's "
    f"centred {2 * HALF}-iteration average loss avg lies above cf_loss by more than {TRACK} "
    "relative on average (mean (avg − cf_loss)/avg > "
    f"{TRACK}): CF1's criterion with cf_loss for the prediction fails, on the low side",
    uses="eos",
    control=_below_edge,
    control_note=_BELOW_NOTE + ", tr Σ/η = 0 and L(w_CF) itself tracks GD",
)
def _cf2(r: Runs) -> Verdict:
    err = tracking_errors(r)
    gap = _signed_gap(r, "cf_loss")
    mask, edge = judged_steps(r)
    if not np.isfinite(gap).any():
        return not_judged("no eval step where GD's time average fits")
    ok = bool(np.all(gap > TRACK))
    return ok, (
        f"η = {gl(r.eta)} ({', '.join(edge)}; {_counts(mask)} steps judged): mean (avg − L(w_CF))"
        f"/avg {gl(gap)}; mean rel. error of L(w_CF) {gl(err['cf_loss'])}, of L + tr Σ/η "
        f"{gl(err['cf_predicted_loss'])}"
    )


@PAPER.claim(
    "CF3",
    claim="After the edge GD stays close to the central flow and drifts away from the "
    "gradient flow: ‖w_GD − w_CF‖ stays far below ‖w_GD − w_GF‖.",
    source="Cohen et al. 2024, abstract (central flows predict long-term trajectories); "
    "Damian et al. 2022, abstract (GD follows the constrained flow, not gradient flow)",
    setting=f"{SETTING}; η = {g(ETA)}; norms over all trained weights",
    criterion=f"per run, the median over the eval steps ≥ {SETTLE} iterations after the flow's "
    f"edge of gd_cf_distance / gd_gf_distance is ≤ {RATIO}",
    uses="eos",
    control=_below_edge,
    control_note=_BELOW_NOTE + ": both distances are GD's discretisation error, ratio 1",
)
def _cf3(r: Runs) -> Verdict:
    mask, edge = judged_steps(r)
    cf, gf = r.trace("gd_cf_distance"), r.trace("gd_gf_distance")
    mask = mask & (gf > 0)
    if not mask.any():
        return not_judged("no judged eval step with ‖w_GD − w_GF‖ > 0")
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = cf / gf
    med = masked(np.median, ratio, mask)
    last = [float(cf[i, -1]) for i in range(r.n_runs)], [float(gf[i, -1]) for i in range(r.n_runs)]
    ok = bool(np.all(med <= RATIO))
    return ok, (
        f"η = {gl(r.eta)} ({', '.join(edge)}): median ‖w_GD − w_CF‖/‖w_GD − w_GF‖ {gl(med)}; "
        f"at the last step {gl(last[0])} against {gl(last[1])}"
    )


@PAPER.claim(
    "CF4",
    claim="The central flow's σ² = tr Σ is the variance of GD's oscillation along the "
    "unstable direction: E[(uᵀ(w_GD − w_CF))²] ≈ σ².",
    source="Cohen et al. 2024 as stated in issue 19 (Σ predicts the covariance of GD's "
    "oscillation, from the companion pages)",
    setting=f"{SETTING}; η = {g(ETA)}; u the flow's top Hessian eigenvector, displacement "
    "measured at the eval steps",
    criterion=f"per run, over the eval steps ≥ {SETTLE} iterations after the flow's edge, the "
    f"mean of cf_displacement_sq over the mean of cf_sigma2 is within [1/{g(FACTOR)}, "
    f"{g(FACTOR)}]",
    uses="eos",
    control=_below_edge,
    control_note=_BELOW_NOTE + ", while GD still deviates from the flow by its discretisation "
    "error: the displacement is not σ²",
)
def _cf4(r: Runs) -> Verdict:
    mask, edge = judged_steps(r)
    if not mask.any():
        return not_judged("no eval step where GD's time average fits")
    disp, s2 = r.trace("cf_displacement_sq"), r.trace("cf_sigma2")
    d, s = masked(np.mean, disp, mask), masked(np.mean, s2, mask)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = d / s
    ok = bool(np.all(np.isfinite(q) & (q >= 1 / FACTOR) & (q <= FACTOR)))
    return ok, (
        f"η = {gl(r.eta)} ({', '.join(edge)}): mean (uᵀ(w_GD − w_CF))² {gl(d)}, "
        f"mean σ² {gl(s)}, ratio "
        + ", ".join(
            "∞ (σ² = 0)" if (x == 0 and y > 0) else g(y / x) for x, y in zip(s, d, strict=True)
        )
    )


def _rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    scale = np.maximum(np.abs(a), np.abs(b))
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.where(scale > 0, np.abs(a - b) / scale, 0.0)
    return float(np.nanmax(d)) if d.size else float("nan")


@PAPER.claim(
    "CF5",
    claim="Below the edge of stability (S < 2/η throughout) the central flow is the "
    "gradient flow: σ² = 0 and the two trajectories coincide.",
    source="Cohen et al. 2024 as stated in issue 19 (σ² = 0 below the edge); derived",
    setting=f"{SETTING}; η = {g(TINY)} (2/η = {2 / TINY:g})",
    criterion=f"per run: cf_sigma2 = 0 at every eval step, cf_loss and gd_cf_distance equal "
    f"gf_loss and gd_gf_distance within relative {SAME:g}, cf_sharpness equals gf_sharpness "
    f"within relative {SAME_S:g} (two eigen-solves)",
    uses="below",
    control=_at_edge,
    control_note=f"η = {g(ETA)}: GD reaches 2/η within the budget, the constraint becomes "
    "active and the central flow leaves the gradient flow",
)
def _cf5(r: Runs) -> Verdict:
    s2 = r.trace("cf_sigma2")
    diffs = {
        a: _rel_diff(r.trace(a), r.trace(b))
        for a, b in (
            ("cf_loss", "gf_loss"),
            ("cf_sharpness", "gf_sharpness"),
            ("gd_cf_distance", "gd_gf_distance"),
        )
    }
    tol = {"cf_sharpness": SAME_S}
    ok = bool(np.all(s2 == 0) and all(d <= tol.get(k, SAME) for k, d in diffs.items()))
    edge = r.scalar("cf_edge_step")
    return ok, (
        f"η = {gl(r.eta)}: max σ² {g(float(np.nanmax(s2)))}, cf_edge_step {gl(edge)}; max rel. "
        "difference CF vs GF: " + ", ".join(f"{k} {g(v)}" for k, v in diffs.items())
    )


@PAPER.claim(
    "CF6",
    claim="GD's loss goes up on some iterations, yet the central flow's loss L(w_CF) falls "
    "monotonically: the flow explains how GD makes progress while its loss sometimes rises.",
    source="Cohen et al. 2024, abstract ('how gradient descent makes progress even as the "
    "loss sometimes goes up'); monotone L(w_CF) as stated in issue 19",
    setting=f"{SETTING}; η = {g(ETA)}",
    criterion=f"per run: GD's loss rises (by > {RISE:g} relative) on some iteration after the "
    f"flow's edge, and cf_loss never rises by more than {RISE:g} relative between eval steps",
    uses="eos",
    control=_below_edge,
    control_note=_BELOW_NOTE + ": GD's loss falls monotonically too",
)
def _cf6(r: Runs) -> Verdict:
    loss, cf, steps = r.trace("loss"), r.trace("cf_loss"), r.steps
    edge = r.scalar("cf_edge_step")
    oks, texts = [], []
    for i in range(r.n_runs):
        t0 = int(edge[i]) if edge[i] >= 0 else 0
        tail = loss[i, t0:]
        rises = int(np.sum(np.diff(tail) > RISE * np.abs(tail[:-1])))
        dc = np.diff(cf[i]) / np.abs(cf[i, :-1])
        worst = float(np.nanmax(dc)) if dc.size else float("nan")
        oks.append(rises > 0 and worst <= RISE)
        texts.append(
            f"η {g(r.eta[i])}: GD's loss rose on {rises} of {tail.size - 1} iterations from "
            f"step {t0}; largest relative rise of L(w_CF) between eval steps {g(worst)} "
            f"({int(steps.size)} eval steps)"
        )
    return bool(all(oks)), "; ".join(texts)


@PAPER.claim(
    "SS1",
    claim="Self-stabilization: GD's sharpness follows the constrained flow's, held at 2/η, "
    "while the unconstrained gradient flow keeps sharpening past 2/η.",
    source="Damian, Nichani & Lee 2022, abstract (GD implicitly follows projected gradient "
    "descent under S ≤ 2/η)",
    setting=f"{SETTING}; η = {g(ETA)}",
    criterion=f"per run, over the eval steps ≥ {SETTLE} iterations after the flow's edge: the "
    f"median |S_GD − S_CF| / S_CF ≤ {BAND} and the median |S_GD − S_GF| / S_GF > {BAND}",
    uses="eos",
    control=_below_edge,
    control_note=_BELOW_NOTE + ": the three sharpness traces coincide",
)
def _ss1(r: Runs) -> Verdict:
    mask, edge = judged_steps(r)
    if not mask.any():
        return not_judged("no judged eval step")
    s, cf, gf = r.trace("sharpness"), r.trace("cf_sharpness"), r.trace("gf_sharpness")
    to_cf = masked(np.median, np.abs(s - cf) / cf, mask)
    to_gf = masked(np.median, np.abs(s - gf) / gf, mask)
    ok = bool(np.all(to_cf <= BAND) and np.all(to_gf > BAND))
    ratio_gf = gf[:, -1] * r.eta / 2
    return ok, (
        f"η = {gl(r.eta)} ({', '.join(edge)}): median |S_GD − S_CF|/S_CF {gl(to_cf)}, "
        f"|S_GD − S_GF|/S_GF {gl(to_gf)}; η·S/2 at the last step: GD "
        f"{gl(s[:, -1] * r.eta / 2)}, CF {gl(cf[:, -1] * r.eta / 2)}, GF {gl(ratio_gf)}"
    )


# ------------------------------------------------------------------ the paper's figure
@PAPER.figure("eos")
def _fig_flows(results: dict, folder: Path) -> list[Path]:
    """Cohen et al. 2024-style: GD's loss, its time average, the central flow's predicted
    loss and the gradient flow's loss (left); sharpness of GD, CF and GF with 2/η (right).
    The first run of the first data draw."""
    from ..plots_flow import draw_flow_run

    ds = results["eos"]
    fig, ax = figure(2)
    draw_flow_run(ax[0][0], ax[0][1], ds, 0, HALF)
    eta = float(np.asarray(ds["lr"].values, dtype=float)[0])
    fig.suptitle(
        f"Cohen et al. 2024: GD at the edge of stability (η = {g(eta)}) against its central "
        "flow and gradient flow",
        fontsize=8,
    )
    return [save(fig, folder / "cohen2024-central-flow.png")]
