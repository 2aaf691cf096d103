"""Liu, Huang & Xu 2023 (Appl. Sci. 13(6):3961; arXiv 2011.12547, first as Huang, Du,
Xu & Liu 2020): large learning rates and data separability in deep linear nets.

The paper's setting: deep linear networks, logistic loss, full-batch gradient
descent; the catapult phase (Lewkowycz et al. 2020) exists on non-separable
data and lands in flatter minima; on separable data the loss and its Hessian
go to 0 along the max-margin direction. Proven on degenerate data
(x_i = s_i·u), confirmed on non-degenerate data. Rates are in critical units
2/sharpness₀ (``lr_units: critical``).

Rows marked ``derived`` come from the exact GD recursion of a two-layer linear
net on degenerate data (SPEC §1.1), not from the paper's text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..nonseparable import first_layer_subspace_curvature, nonseparable_basis, separable_part
from ._base import (
    Configs,
    Outcome,
    Paper,
    Runs,
    Verdict,
    g,
    gl,
    not_judged,
    test_acc_above_critical,
    with_,
)
from ._figures import figure, loss_and_curvature, nearest, runs_at, save

RATES = [0.5, 0.8, 1.2, 1.6, 2.3, 3.0, 4.0, 6.0]
DEGENERATE_P = 0.75  # fraction of points whose sign agrees with the label
#: predicted catapult onset on degenerate non-separable data, in critical units: 1/(4p(1−p))
ONSET = 1 / (4 * DEGENERATE_P * (1 - DEGENERATE_P))
DEGENERATE_RATES = [round(ONSET * f, 4) for f in (0.4, 0.75, 0.9, 1.1, 1.5, 3.0, 8.0, 15.0)]
WIDTHS = (1024, 4096)  # the width dependence of the degenerate window (L8)

SEPARABLE_DEGENERATE = {"kind": "degenerate", "separable": True}
OVERLAP = {"kind": "overlap", "shift": 1.0}
NONSEPARABLE_DEGENERATE = {
    "kind": "degenerate",
    "separable": False,
    "label_noise": 1 - DEGENERATE_P,
}
SETTING = "deep linear net (NTK), logistic loss, full-batch GD"
ANNEAL_TO = 0.5  # the small rate, critical units
#: a test-accuracy gain smaller than this (absolute) is not counted as better
ACC_GAIN = 0.005
ABSTRACT = "Liu et al. 2023, abstract and §1"
#: L15: the largest converged rate's restricted curvature over the smallest rate's must be below
#: this (chosen between the measured 0.20–0.31 at 3 critical units, quick, 2 draws, and the
#: depth-1 control's 0.83)
FLAT_S = 0.5


def _experiments(quick: bool) -> Configs:
    steps = 400 if quick else 2000
    seeds = [0] if quick else [0, 1, 2]
    model = {"depth": 2, "width": 256, "activation": "linear", "parametrization": "ntk"}
    train = {"loss": "logistic", "steps": steps, "lr_units": "critical", "dtype": "float64"}
    # dense_early off: the eval grid the claims were calibrated on (issue 21 item 7)
    metrics = {"every": 20 if quick else 50, "sharpness": {"iters": 20}, "dense_early": False}
    data = {"n_train": 200, "n_test": 1000, "d": 50}
    overlap = {**OVERLAP, **data}

    def exp(name: str, data: dict, model: dict, rates: list[float], **extra: Any) -> dict:
        return {
            "name": f"liu2023-{name}",
            "data": data,
            "model": model,
            "train": {**train, **extra.pop("train", {})},
            "metrics": metrics,
            "sweep": {"train.lr": rates, "seed": seeds, **extra.pop("sweep", {})},
        }

    out = {
        "nonseparable": exp("nonseparable", overlap, model, RATES),
        "separable_degenerate": exp(
            "separable-degenerate",
            {**SEPARABLE_DEGENERATE, **data},
            model,
            [0.5, 1.6, 2.3, 4.0, 8.0, 20.0],
        ),
    }
    for depth in (3, 4):
        out[f"depth{depth}"] = exp(
            f"depth{depth}", overlap, {**model, "depth": depth}, [0.5, 0.8, 1.6, 2.3, 3.0, 6.0]
        )
    # n < d (separable, so GD's direction is chosen by the dynamics) at a fixed step
    # budget: the setting where annealing could matter for a linear predictor
    out["annealing"] = exp(
        "annealing",
        {"kind": "overlap", "shift": 2.0, "n_train": 50, "n_test": 1000, "d": 200},
        model,
        [2.3],
        sweep={"train.schedule.factor": [1.0, ANNEAL_TO / 2.3], "seed": [0, 1, 2]},
        train={"schedule": {"kind": "step", "at": [steps // 2], "factor": 1.0}},
    )
    out["annealing"]["sweep"]["train.lr"] = [2.3, ANNEAL_TO]
    for w in WIDTHS:
        out[f"degenerate_w{w}"] = exp(
            f"nonseparable-degenerate-w{w}",
            {**NONSEPARABLE_DEGENERATE, **data},
            {**model, "width": w},
            DEGENERATE_RATES,
        )
    # the NTK eigenvalue λ of the recursion, for L14's bound λ∞ ≤ 2/(η·p(1−p))
    out[f"degenerate_w{WIDTHS[-1]}"]["metrics"] = {**metrics, "ntk": True}
    return out


PAPER = Paper(
    "liu2023",
    "Liu, Huang & Xu 2023 (arXiv 2011.12547): large learning rates and data separability",
    _experiments,
)


#: the controls' data sizes (the experiments', with a smaller test set)
_CONTROL_SIZES = {"n_train": 200, "n_test": 200, "d": 50}


def _on(cfgs: Configs, name: str, data: dict) -> Configs:
    """Experiment ``name`` run for 150 steps on other data (a negative control)."""
    return {name: with_(cfgs[name], data={**data, **_CONTROL_SIZES}, train__steps=150)}


def _separable(cfgs: Configs, name: str) -> Configs:
    """The same runs on separable degenerate data (no catapult, no divergence)."""
    return _on(cfgs, name, SEPARABLE_DEGENERATE)


def _nonseparable_data(cfgs: Configs, name: str) -> Configs:
    return _on(cfgs, name, OVERLAP)


# ------------------------------------------------------------------ the three regimes
@PAPER.claim(
    "L1",
    claim="Below the critical rate 2/λ₀ training is lazy: the loss falls without a spike "
    "and the curvature stays near its initial value.",
    source=f"{ABSTRACT} (the small-rate phase, after Lewkowycz et al. 2020)",
    setting=f"{SETTING}; overlapping Gaussian classes, n 200, d 50, width 256",
    criterion="every run with η < 2/λ₀ is 'lazy' and ends with 0.6 λ₀ < λ_end ≤ 1.05 λ₀",
    uses="nonseparable",
    control=lambda c: _separable(c, "nonseparable"),
    control_note="separable data: the curvature vanishes as the margin grows",
)
def _l1(r: Runs) -> Verdict:
    s0, s_end, ph = r.scalar("sharpness_init"), r.scalar("final_sharpness"), r.phases()
    lazy = np.flatnonzero(r.rates < 1)
    if not lazy.size:
        return not_judged("no run below the critical rate")
    ok = all(ph[i] == "lazy" and 0.6 * s0[i] < s_end[i] <= 1.05 * s0[i] for i in lazy)
    return ok, f"phases {r.phase_text()}; λ_end/λ₀ at rate < 1: {gl(s_end[lazy] / s0[lazy])}"


@PAPER.claim(
    "L2",
    claim="On non-separable data a catapult phase exists above the critical rate: the loss "
    "first grows, then GD converges.",
    source=f"{ABSTRACT}: 'the loss grows at the early stage of training and eventually converges'",
    setting=f"{SETTING}; overlapping Gaussian classes, n 200, d 50, width 256",
    criterion="some rate in (1, 4) critical units at which every run (every seed) is "
    "'catapult' (rule v2: its loss rose above L₀ early, before the curvature fell below 2/η, "
    "then it converged below 2/η); the loss peak over L₀ is reported",
    uses="nonseparable",
    control=lambda c: _separable(c, "nonseparable"),
    control_note="separable degenerate data never catapults",
)
def _l2(r: Runs) -> Verdict:
    rates, ph, rise = r.rates, r.phases(), r.loss_rise()
    window = sorted({float(x) for x in rates[(rates > 1) & (rates < 4)]})
    hits = [x for x in window if (ph[rates == x] == "catapult").all()]
    cat = ph == "catapult"
    return bool(hits), (
        f"phases {r.phase_text()}; every seed catapults at {gl(hits) if hits else 'no rate'}; "
        "loss peak/L₀ − 1 at catapult runs: "
        + (", ".join(f"{x:g}: {g(y)}" for x, y in zip(rates[cat], rise[cat], strict=True)) or "-")
    )


@PAPER.claim(
    "L3",
    claim="The catapult lands in a flatter minimum: final curvature below 2/η and below "
    "that of a small-rate run at the same loss.",
    source=f"{ABSTRACT}: 'converge to a flatter minimum in the catapult phase'",
    setting=f"{SETTING}; overlapping Gaussian classes, n 200, d 50, width 256",
    criterion="at least one catapult run in (1, 4) critical units, and every one ends with "
    "λ_end·η/2 < 1 and λ_end < 0.75 × λ of the smallest-rate run at the same loss",
    uses="nonseparable",
    control=lambda c: {
        "nonseparable": with_(
            _nonseparable_data(c, "nonseparable")["nonseparable"],
            model__depth=1,
            sweep={"train.lr": [0.5, 1.2, 1.6, 2.3]},
        )
    },
    control_note="a depth-1 linear model: the logistic minimiser is unique, no flatter "
    "minimum to choose",
)
def _l3(r: Runs) -> Verdict:
    rates, ph = r.rates, r.phases()
    s_end, eta, loss = r.scalar("final_sharpness"), r.eta, r.scalar("final_loss")
    ref = int(np.argmin(rates))
    cat = np.flatnonzero((ph == "catapult") & (rates > 1) & (rates < 4))
    rows = [
        (rates[i], s_end[i] * eta[i] / 2, s_end[i] / r.sharpness_at_loss(ref, loss[i])) for i in cat
    ]
    ok = bool(rows) and all(a < 1 and b < 0.75 for _, a, b in rows)
    return ok, (
        "rate: (λ_end·η/2, λ_end/λ_small) "
        + (", ".join(f"{a:g}: ({g(b)}, {g(c)})" for a, b, c in rows) or "no catapult run")
    )


@PAPER.claim(
    "L4",
    claim="On non-degenerate overlapping data large rates diverge, a few times the critical rate.",
    source="derived (SPEC §1.1: divergence ≈ 4× critical on non-degenerate overlapping "
    "data; the paper's maximal rate, after Lewkowycz et al. 2020)",
    setting=f"{SETTING}; overlapping Gaussian classes, n 200, d 50, width 256",
    criterion="the smallest diverging rate is ≤ 6 critical units, and every run at or above "
    "it diverges",
    uses="nonseparable",
    control=lambda c: _separable(c, "nonseparable"),
    control_note="separable degenerate data: the curvature falls before it can destabilise",
)
def _l4(r: Runs) -> Verdict:
    rates, ph = r.rates, r.phases()
    first = r.limits()[1]
    ok = bool(first <= 6 and (ph[rates >= first] == "diverged").all())
    div = sorted({float(x) for x in rates[ph == "diverged"]})
    return ok, f"diverged at {div or 'none'}; smallest {g(first)}"


# ------------------------------------------------------------------ separable data
def _degenerate_nonseparable(cfgs: Configs, name: str) -> Configs:
    return _on(cfgs, name, NONSEPARABLE_DEGENERATE)


#: phases that contradict "never catapults and does not diverge"
_NOT_BENIGN = ("catapult", "diverged", "not_converged", "dead")


@PAPER.claim(
    "L5",
    claim="Separable degenerate data never catapults and does not diverge.",
    source="Liu et al. 2023, the separable-data analysis on degenerate data (abstract: "
    "'depending on the separation conditions of data')",
    setting=f"{SETTING}; degenerate separable data x_i = s_i·u, n 200, d 50",
    criterion="no run, up to 20 critical units, is 'catapult', 'diverged', 'not_converged' "
    "or 'dead' (rule v2 labels such runs 'sharpness_reduction' above critical: the curvature "
    "vanishes as the margin grows); the loss peak over L₀ is reported",
    uses="separable_degenerate",
    control=lambda c: _degenerate_nonseparable(c, "separable_degenerate"),
    control_note="non-separable degenerate data catapults above its onset",
)
def _l5(r: Runs) -> Verdict:
    ph = r.phases()
    return bool(not np.isin(ph, _NOT_BENIGN).any()), (
        f"phases {r.phase_text()}; loss peak/L₀ − 1 {gl(r.loss_rise())}"
    )


@PAPER.claim(
    "L6",
    claim="On separable data the loss Hessian vanishes as the margin grows.",
    source="Liu et al. 2023, the separable-data analysis (loss → 0 along the max-margin "
    "direction, Soudry et al. 2018)",
    setting=f"{SETTING}; degenerate separable data, n 200, d 50",
    criterion="every run ends with λ_end < 0.05 λ₀",
    uses="separable_degenerate",
    control=lambda c: _nonseparable_data(c, "separable_degenerate"),
    control_note="non-separable data: the logistic minimiser is finite, its curvature is not 0",
)
def _l6(r: Runs) -> Verdict:
    ratio = r.scalar("final_sharpness") / r.scalar("sharpness_init")
    return bool(np.all(ratio < 0.05)), f"λ_end/λ₀ {gl(ratio)} at rates {gl(r.rates)}"


# ------------------------------------------------------------------ degenerate non-separable
@PAPER.claim(
    "L7",
    claim="Degenerate non-separable data with a fraction p of agreeing labels has its "
    "catapult onset at η = 2/(λ₀·p(1−p)), λ₀ the top NTK eigenvalue at init; with the "
    "logistic loss sharpness₀ ≈ λ₀/4, so in critical units 2/sharpness₀ the onset is "
    f"1/(4p(1−p)) (= {ONSET:.3g} for p = {DEGENERATE_P}).",
    source="derived (SPEC §1.1, from the exact GD recursion of a two-layer linear net on "
    "degenerate data)",
    setting=f"{SETTING}; degenerate data, p = {DEGENERATE_P}, n 200, d 50, width 4096",
    criterion="no run at ≤ 0.9× that rate is 'catapult' (its loss did not rise above L₀), "
    "and every run at ≥ 1.1× is 'catapult' or 'diverged' (GD is unstable at init from 1 "
    "critical unit; the catapult, the rise of the loss, is what starts at the onset)",
    uses="degenerate_w4096",
    control=lambda c: {
        "degenerate_w4096": with_(
            c["degenerate_w4096"],
            data__label_noise=0.45,
            model__width=1024,
            train__steps=200,
            metrics__ntk=False,
            sweep={"train.lr": [round(ONSET * f, 4) for f in (0.4, 0.9, 1.1, 1.5)]},
        )
    },
    control_note="p = 0.55: the onset moves to 1.01 critical units, below 0.9 × 1.33",
)
def _l7(r: Runs) -> Verdict:
    rates, ph = r.rates, r.phases()
    below, above = rates <= 0.9 * ONSET, rates >= 1.1 * ONSET
    ok = bool((ph[below] != "catapult").all() and np.isin(ph[above], CATAPULT_OR_BEYOND).all())
    return ok, f"phases {r.phase_text()}; loss peak/L₀ − 1 {gl(r.loss_rise())}"


#: the labels a run above the catapult onset may carry (L7)
CATAPULT_OR_BEYOND = ("catapult", "diverged")


@PAPER.claim(
    "L8",
    claim="On degenerate non-separable data the catapult window's upper edge grows with the "
    "width (the η²g²f/m term of the recursion).",
    source="derived (SPEC §1.1: the exact GD recursion's η²g_t²f_t/m term; measured there: "
    "divergence between 4 and 10.7 critical units at width 1024, above 10.7 at 4096)",
    setting=f"{SETTING}; degenerate data, p = {DEGENERATE_P}, n 200, d 50, widths "
    + " and ".join(map(str, WIDTHS)),
    criterion=f"the smallest diverging rate at width {WIDTHS[1]} is larger than at width "
    f"{WIDTHS[0]}, where some rate diverges",
    uses=tuple(f"degenerate_w{w}" for w in WIDTHS),
    control=lambda c: {
        k: with_(
            c[k],
            model__depth=1,
            train__steps=150,
            metrics__ntk=False,
            sweep={"train.lr": [2.3, 4.0, 10.6667, 20.0]},
        )
        for k in c
    },
    control_note="a depth-1 linear model: no hidden layer, no width, no η²g²f/m term "
    "(non-degenerate overlapping data is no control: its edge grows with the width too, "
    "6 → 20 critical units from width 1024 to 4096 at 200 steps)",
)
def _l8(narrow: Runs, wide: Runs) -> Verdict:
    a, b = narrow.limits()[1], wide.limits()[1]
    ok = bool(np.isfinite(a) and not b <= a)  # b NaN: nothing diverged at the wider net
    return ok, (
        f"smallest diverging rate: width {WIDTHS[0]} {g(a)}, width {WIDTHS[1]} "
        f"{'none up to ' + g(max(wide.rates)) if not np.isfinite(b) else g(b)} (critical units)"
    )


@PAPER.claim(
    "L9",
    claim="GD ends at or below the edge of stability: final curvature ≤ 2/η.",
    source="a consequence of convergence (a GD fixed point with λ > 2/η is unstable); "
    "sanity check, not a claim",
    setting=f"{SETTING}; degenerate data, p = {DEGENERATE_P}, width 4096",
    criterion="every converged run: λ_end·η/2 ≤ 1.05",
    uses="degenerate_w4096",
    kind="sanity",
)
def _l9(r: Runs) -> Verdict:
    ratio = r.scalar("final_sharpness") * r.eta / 2
    conv = r.converged()
    return bool(np.all(ratio[conv] <= 1.05)), f"λ_end·η/2 {gl(ratio)} at rates {gl(r.rates)}"


def _agreeing_fraction(r: Runs) -> np.ndarray:
    """Per run: p, the fraction of points whose side of the origin agrees with the label.

    Degenerate data xᵢ = sᵢ·u: sᵢ is read off the top right singular vector of X.
    """
    X, y = r.data("X_train"), r.data("y_train")
    per_set: dict[bytes, float] = {}  # one SVD per distinct data set
    out = []
    for Xi, yi in zip(X, y, strict=True):
        key = Xi.tobytes() + yi.tobytes()
        if key not in per_set:
            s = Xi @ np.linalg.svd(Xi, full_matrices=False)[2][0]
            agree = float(np.mean(np.sign(s) == yi))
            per_set[key] = max(agree, 1 - agree)
        out.append(per_set[key])
    return np.asarray(out)


@PAPER.claim(
    "L14",
    claim="On degenerate non-separable data GD ends with λ∞ ≤ 2/(η·p(1−p)), λ the top NTK "
    "eigenvalue and p the fraction of agreeing labels: the catapult lands below the "
    "recursion's edge.",
    source="derived (SPEC §1.1, from the exact GD recursion of a two-layer linear net on "
    "degenerate data: at the non-separable minimum ∂g/∂f = p(1−p), so f is stable only for "
    "η·λ·p(1−p)/2 ≤ 1)",
    setting=f"{SETTING}; degenerate data, p = {DEGENERATE_P}, n 200, d 50, width 4096; NTK "
    "measured",
    criterion="every run that did not diverge ends with λ_end·η·p(1−p)/2 ≤ 1.05 (p measured "
    "on each draw's data); the ratio is reported",
    uses=f"degenerate_w{WIDTHS[-1]}",
    control=lambda c: {
        k: with_(
            c[k],
            model__width=1024,
            train__steps=1,
            metrics__every=1,
            sweep={"train.lr": [2.0, 4.0]},
        )
        for k in c
    },
    control_note="stopped after 1 step, before the catapult: the curvature has not come "
    "down yet (the bound is about where GD ends; after 4 steps at width 1024 it already "
    "has, 1.05 and 0.70 at 2 and 4 critical units)",
)
def _l14(r: Runs) -> Verdict:
    p = _agreeing_fraction(r)
    ratio = r.scalar("final_ntk_max") * r.eta * p * (1 - p) / 2
    alive = r.phases() != "diverged"
    if not alive.any():
        return not_judged("every run diverged")
    return bool(np.all(ratio[alive] <= 1.05)), (
        f"λ_end·η·p(1−p)/2 {gl(ratio)} at rates {gl(r.rates)} (p {gl(sorted(set(p.tolist())))})"
    )


# ------------------------------------------------------------------ the non-separable subspace
def _subspace_curvature(r: Runs) -> tuple[np.ndarray, list[str]]:
    """Per run: the W₁-curvature restricted to Ji & Telgarsky's non-separable subspace S.

    :func:`implicit_bias.nonseparable.first_layer_subspace_curvature` on the final
    weights (NTK multipliers 1/√fan_in; a depth-1 model is W₂ = 1, c₂ = 1); the
    split is computed once per data set. Also the text "|I_c|/n, dim S" per data set.
    """
    X, y = r.data("X_train"), r.data("y_train")
    W1 = np.asarray(r.ds["final_W1"].values, dtype=float)
    W2 = np.asarray(r.ds["final_W2"].values, dtype=float) if r.has("final_W2") else None
    d, m = W1.shape[-1], W1.shape[-2]
    c1, c2 = 1 / np.sqrt(d), (1 / np.sqrt(m) if W2 is not None else 1.0)
    split: dict[bytes, tuple[np.ndarray, str]] = {}
    out, texts = np.full(r.n_runs, np.nan), []
    for i in range(r.n_runs):
        key = X[i].tobytes() + y[i].tobytes()
        if key not in split:
            P = nonseparable_basis(X[i], y[i])
            n_c = int((~separable_part(X[i], y[i])).sum())
            split[key] = (P, f"|I_c| {n_c}/{len(y[i])}, dim S {P.shape[1]}")
            texts.append(split[key][1])
        w2 = W2[i] if W2 is not None else np.ones((1, 1))
        if np.all(np.isfinite(W1[i])) and np.all(np.isfinite(w2)):
            out[i] = first_layer_subspace_curvature(W1[i], w2, X[i], y[i], split[key][0], c1, c2)
    return out, texts


@PAPER.claim(
    "L15",
    claim="Large learning rates end flatter in the subspace spanned by the non-separable data.",
    source="Liu et al. 2023, abstract ('flatter … in the space spanned by non-separable "
    "data'); the subspace as Ji & Telgarsky 2019's split (arXiv 1803.07300 §2: S = "
    "span of the points no direction separates, where the loss is strongly convex) and the "
    "flatness as the top eigenvalue of the loss's Hessian in the first layer W₁ restricted "
    "to perturbations whose rows lie in S, c₁²c₂²‖W₂‖²·λ_max(Pᵀ H_x P): derived (SPEC §1.1; "
    "our reading, module implicit_bias.nonseparable)",
    setting=f"{SETTING}; overlapping Gaussian classes, n 200, d 50, width 256 (every point "
    "is in the non-separable part here, so S is the span of the data; |I_c| and dim S are "
    "measured per draw)",
    criterion="per init seed, over the converged runs above 1 critical unit the restricted "
    "curvature falls strictly as the rate grows, and at the largest of them it is < "
    f"{FLAT_S} × that of the smallest-rate run (same data, same init)",
    uses="nonseparable",
    control=lambda c: {
        "nonseparable": with_(
            _nonseparable_data(c, "nonseparable")["nonseparable"],
            model__depth=1,
            sweep={"train.lr": [0.5, 1.2, 1.6]},
        )
    },
    control_note="a depth-1 linear model: no layers whose balance a large rate could "
    "change, the runs move along one convex path (measured λ_S ratio 1.0 at 1.2 and 0.83 at "
    "1.6 critical units after 150 steps, not below 0.5)",
)
def _l15(r: Runs) -> Verdict:
    lam, texts = _subspace_curvature(r)
    rates, seeds, conv = r.rates, r.coord("seed"), r.converged()
    rows: list[tuple[float, float]] = []
    ok = True
    for s in sorted(set(seeds.tolist())):
        mine = np.flatnonzero((seeds == s) & conv)
        if not mine.size or rates[mine].min() >= 1:
            continue
        ref = mine[np.argmin(rates[mine])]
        if not (np.isfinite(lam[ref]) and lam[ref] > 0):  # no reference curvature to divide by
            continue
        big = sorted((rates[i], lam[i] / lam[ref]) for i in mine if rates[i] > 1)
        if big:
            q = np.array([b for _, b in big])
            ok &= bool(np.all(np.diff(q) < 0) and q[-1] < FLAT_S)
            rows += big
    if not rows:
        return not_judged(
            "no converged run above 1 critical unit beside a smaller-rate one with a "
            "positive restricted curvature"
        )
    return ok, (
        "; ".join(texts)
        + "; rate: λ_S/λ_S(smallest rate) "
        + ", ".join(f"{a:g}: {g(b)}" for a, b in rows)
        + f"; λ_S at the smallest rate {gl(lam[rates == rates.min()])}"
    )


# ------------------------------------------------------------------ depth
def _depth_claim(depth: int) -> None:
    name = f"depth{depth}"

    @PAPER.claim(
        f"L1{depth - 2}",
        claim=f"The three regimes hold for deeper linear nets (depth {depth}): lazy below the "
        "critical rate, a catapult above it, divergence beyond.",
        source=f"{ABSTRACT} ('deep linear networks', any depth)",
        setting=f"{SETTING}, depth {depth}, width 256; overlapping Gaussian classes",
        criterion="every run < 1 critical unit is 'lazy', some run in (1, 4) is 'catapult' "
        "(rule v2: the loss rose above L₀ early, then converged below 2/η; a bump above the "
        "running minimum that stays below L₀ is not a catapult), and the largest rate "
        "diverges; spike height and loss peak over L₀ reported",
        uses=name,
        control=lambda c: {
            name: with_(_separable(c, name)[name], sweep={"train.lr": [0.5, 2.3, 6.0]})
        },
        control_note="separable degenerate data: no catapult, no divergence",
    )
    def _judge(r: Runs) -> Verdict:
        rates, ph, rise = r.rates, r.phases(), r.loss_rise()
        lazy = bool((ph[rates < 1] == "lazy").all())
        cat = (ph == "catapult") & (rates > 1) & (rates < 4)
        div = bool((ph[rates == rates.max()] == "diverged").all())
        return lazy and bool(cat.any()) and div, (
            f"phases {r.phase_text()}; spike height/L₀ at catapult runs "
            f"{gl(r.scalar('spike_height')[cat])}, loss peak/L₀ − 1 {gl(rise[cat])}"
        )


for _d in (3, 4):
    _depth_claim(_d)


# ------------------------------------------------------------------ generalisation
def _mean_acc(r: Runs, mask: np.ndarray) -> float:
    acc = r.scalar("final_test_acc")
    return float(np.mean(acc[mask])) if mask.any() else float("nan")


@PAPER.claim(
    "L10",
    claim="Learning-rate annealing (a large rate first, then a small one) generalises better "
    "than a small rate throughout.",
    source="Liu et al. 2023 (Appl. Sci.), abstract: 'the benefits of learning rate "
    "annealing schemes using an initial large learning rate'",
    setting=f"{SETTING}, width 256; n 50 < d 200 (separable: the dynamics pick the "
    "direction), 400 steps (2000 in the full run), 3 seeds; 2.3 → 0.5 critical units at half "
    "time vs constant 0.5",
    criterion=f"per init seed, the annealed run's test accuracy minus the constant small "
    f"rate's (same data, same init): the mean gap over draws × seeds exceeds 2 standard "
    f"errors and {ACC_GAIN}",
    uses="annealing",
    control=lambda c: {
        "annealing": with_(
            c["annealing"],
            train__schedule={"kind": "step", "at": [0], "factor": 1.0},
            train__steps=150,
        )
    },
    control_note="the switch moved to step 0: the 'annealed' runs train at the small rate "
    "from the start, so the comparison runs and finds no gap",
    statistical=True,
    min_effect=ACC_GAIN,
)
def _l10(r: Runs) -> Verdict:
    fac = r.coord("train.schedule.factor").astype(float)
    rates, seeds = r.rates, r.coord("seed")
    acc = r.scalar("final_test_acc")
    ann = (rates > 1) & (fac < 1)
    small = (rates == ANNEAL_TO) & (fac == 1)
    if not (ann.any() and small.any()):
        return not_judged("no annealed run or no constant small-rate run")
    both = sorted(set(seeds[ann]) & set(seeds[small]))
    gaps = [float(acc[ann & (seeds == s)].mean() - acc[small & (seeds == s)].mean()) for s in both]
    tl = r.scalar("final_test_loss")
    return Outcome(
        bool(gaps) and float(np.mean(gaps)) >= ACC_GAIN,
        f"test acc {g(_mean_acc(r, ann))} (annealed) vs {g(_mean_acc(r, small))} (small); "
        f"gap per seed {gl(gaps)}; test loss {g(float(np.mean(tl[ann])))} vs "
        f"{g(float(np.mean(tl[small])))}",
        effects=tuple(gaps),
    )


@PAPER.claim(
    "L13",
    claim="The best test accuracy is found in the catapult phase: flatter minima found with "
    "a large rate generalise better.",
    source="Liu et al. 2023, abstract ('flatter minima … along with the learning rate in the "
    "catapult phase can lead to better generalization empirically')",
    setting=f"{SETTING}, width 256; the annealing experiment's constant-rate runs: n 50 < d "
    "200 (separable, so the dynamics choose the direction), 2.3 vs 0.5 critical units, 3 "
    "seeds. Tried before: n 200 > d 50 overlapping classes, where every converged rate "
    "reaches the unique minimiser (test accuracy equal at every rate, an honest FAIL that "
    "tests nothing)",
    criterion="per init seed, the best test accuracy over converged rates > 1 critical unit "
    f"minus the best below 1: the mean gap over draws × seeds exceeds 2 standard errors and "
    f"{ACC_GAIN}",
    uses="annealing",
    control=lambda c: {
        "annealing": with_(
            c["annealing"],
            data={**SEPARABLE_DEGENERATE, **_CONTROL_SIZES},
            train__steps=150,
            train__schedule={"kind": "step", "at": [75], "factor": 1.0},
            sweep={"seed": [0, 1]},
        )
    },
    control_note="separable degenerate data: no catapult phase, every rate reaches the same "
    "separating direction and generalises alike",
    statistical=True,
    min_effect=ACC_GAIN,
)
def _l13(r: Runs) -> Verdict:
    constant = np.asarray(r.coord("train.schedule.factor"), dtype=float) == 1
    return test_acc_above_critical(Runs(r.ds.isel(run=np.flatnonzero(constant)), r.name), ACC_GAIN)


# ------------------------------------------------------------------ the paper's figures
@PAPER.figure("nonseparable")
def _fig_regimes(results: dict, folder: Path) -> list[Path]:
    """Lazy vs catapult (Liu et al. 2023, the loss and curvature figures): loss and λη/2."""
    ds = results["nonseparable"]
    rates = np.asarray(ds["train.lr"].values, dtype=float)
    fig, ax = figure(2)
    for target, color, what in ((0.5, "tab:blue", "lazy?"), (2.3, "tab:red", "catapult?")):
        rate = nearest(rates, target)
        idx = runs_at(ds, "train.lr", rate)
        phase = "/".join(sorted({str(p) for p in np.asarray(ds["phase"].values)[idx]}))
        label = f"{rate:g} critical units: {phase or what}"
        loss_and_curvature(ax[0, 0], ax[0, 1], ds, idx, label, color)
    ax[0, 0].legend(fontsize=7)
    fig.suptitle("Liu et al. 2023: below vs above the critical rate (overlapping classes)")
    return [save(fig, folder / "liu-lazy-vs-catapult.png")]


@PAPER.figure("nonseparable", "separable_degenerate")
def _fig_separability(results: dict, folder: Path) -> list[Path]:
    """The same rate on non-separable vs separable data: catapult vs vanishing curvature."""
    fig, ax = figure(2)
    for name, color, what in (
        ("nonseparable", "tab:red", "non-separable (overlap)"),
        ("separable_degenerate", "tab:green", "separable (degenerate)"),
    ):
        ds = results[name]
        rate = nearest(np.asarray(ds["train.lr"].values, dtype=float), 2.3)
        idx = runs_at(ds, "train.lr", rate)
        loss_and_curvature(ax[0, 0], ax[0, 1], ds, idx, f"{what}, {rate:g} critical units", color)
    ax[0, 1].set_yscale("log")
    ax[0, 0].legend(fontsize=7)
    fig.suptitle("Liu et al. 2023: separable vs non-separable data at the same rate")
    return [save(fig, folder / "liu-separable-vs-nonseparable.png")]
