"""Momentum catapults and the minibatch edge: derived rows (ours) on the catapult
window of heavy ball, and Andreyev & Beneventano 2024 (arXiv 2412.20553) on the
batch sharpness of minibatch SGD.

Heavy ball in PyTorch's form (v ← βv + g, w ← w − ηv) is stable on a quadratic
iff ηλ < 2 + 2β (SPEC §2.1). On the solvable two-layer linear NTK model of
Lewkowycz et al. 2020 (arXiv 2003.02218, §2) plain GD catapults between 2/λ₀ and
≈ 4/λ₀, twice its threshold. With momentum the threshold moves up to
(2 + 2β)/λ₀, but the window above it — where the loss spikes, the NTK falls below
the threshold and training converges — narrows as β grows (a simulation at width
2000 in issue 18 put its upper edge near 1.1–1.2× the threshold at β 0.9, ≈ 1.45×
at β 0.5, 2× at β 0; derived, ours, measured here, not assumed). Heavy ball's
transient growth below its threshold is no catapult: the phase rule
(:mod:`implicit_bias.phases`) requires the initial curvature above the
optimizer's threshold.

Under minibatch SGD the relevant curvature is the *batch sharpness*
E_B[g_Bᵀ H_B g_B / ‖g_B‖²] (a mean of per-batch ratios; ``batch_sharpness``,
:func:`implicit_bias.metrics._batch_sharpness`): Andreyev & Beneventano report it
sitting at 2/η while the full-batch λ_max stays below.
"""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from ._base import Configs, Paper, Runs, Verdict, g, gl, not_judged, with_
from ._figures import colors, figure, save

#: β swept for the catapult window (the issue's three)
BETAS = [0.0, 0.5, 0.9]
#: rates in units of heavy ball's critical rate (2 + 2β)/λ₀ (``lr_units: critical``)
WINDOW_RATES = [0.9, 1.05, 1.2, 1.5, 2.0, 2.4]
LINEAR = "two-layer linear net (NTK parametrization), squared loss, full-batch heavy ball"
#: minibatch SGD's setting (batch sharpness)
SGD_SETTING = "depth-3 ReLU MLP (width 32), square loss, minibatch SGD (batch 8 of 64)"
SGD_RATES = [0.2, 0.4]
#: "sits at 2/η": the last-half median of η·batch_sharpness/2 within ±AT of 1 …
AT = 0.2
#: … "while λ_max stays below": the last-half median of η·λ_max/2 ≤ BELOW
BELOW = 0.85


def _experiments(quick: bool) -> Configs:
    seeds = [0] if quick else [0, 1, 2]
    # width 512: at width 256 heavy ball β 0.9 diverged at every rate ≥ 1.01× its
    # threshold (measured): the window is a wide-net statement
    window = {
        "name": "momentum-window",
        "data": {"kind": "overlap", "shift": 2.0, "n_train": 64, "n_test": 200, "d": 20},
        "model": {
            "depth": 2,
            "width": 512 if quick else 1024,
            "activation": "linear",
            "parametrization": "ntk",
        },
        "train": {
            "loss": "mse",
            "steps": 200 if quick else 500,
            "optimizer": "momentum",
            "lr_units": "critical",
            "dtype": "float64",
        },
        "metrics": {"every": 25, "sharpness": {"iters": 15}, "dense_early": False},
        "sweep": {"train.lr": WINDOW_RATES, "train.momentum": BETAS, "seed": seeds},
    }
    sgd = {
        "name": "momentum-sgd-batch-sharpness",
        "data": {"kind": "overlap", "n_train": 64, "n_test": 200, "d": 10},
        "model": {"depth": 3, "width": 32, "activation": "relu", "parametrization": "standard"},
        "train": {"loss": "mse", "steps": 400 if quick else 2000, "batch_size": 8},
        "metrics": {"every": 25, "sharpness": {"iters": 20}},
        "sweep": {"train.lr": SGD_RATES, "seed": seeds},
    }
    return {"window": window, "sgd": sgd}


PAPER = Paper(
    "momentum",
    "Momentum catapults (derived, ours) and the minibatch edge (Andreyev & Beneventano "
    "2024, arXiv 2412.20553)",
    _experiments,
)


# ------------------------------------------------------------------ the catapult window
def _window_by_beta(r: Runs) -> dict[float, tuple[float, bool, str]]:
    """Per β: (upper edge = largest rate above 1 at which every run converged, NaN if
    none; some run above the threshold is a catapult; phases by rate as text)."""
    beta = r.coord("train.momentum").astype(float)
    rates, ph, conv = r.rates, r.phases(), r.converged()
    out: dict[float, tuple[float, bool, str]] = {}
    for b in sorted(set(beta.tolist())):
        m = beta == b
        ok = [x for x in sorted(set(rates[m & (rates > 1)])) if conv[m & (rates == x)].all()]
        cat = bool(np.any(ph[m & (rates > 1)] == "catapult"))
        text = ", ".join(
            f"{x:g}: {'/'.join(sorted(set(ph[m & (rates == x)])))}" for x in sorted(set(rates[m]))
        )
        out[b] = (max(ok) if ok else float("nan"), cat, text)
    return out


def _below_rise(r: Runs) -> str:
    """Loss rise and phase of runs below the threshold (heavy ball's transient growth)."""
    below = r.rates < 1
    if not below.any():
        return ""
    beta = r.coord("train.momentum").astype(float)[below]
    rise, ph = r.loss_rise()[below], r.phases()[below]
    return "; below threshold (rate < 1) max L/L₀ − 1 " + ", ".join(
        f"β {b:g}: {g(x)} ({p})" for b, x, p in zip(beta, rise, ph, strict=True)
    )


def _depth1(cfgs: Configs) -> Configs:
    """A linear model (depth 1): constant curvature, no catapult — above the threshold diverges."""
    return {
        "window": with_(
            cfgs["window"],
            model__depth=1,
            train__steps=100,
            sweep={"train.lr": [1.05, 1.5]},
        )
    }


@PAPER.claim(
    "K1",
    claim="Heavy ball catapults above its own threshold (2 + 2β)/λ₀ on the two-layer "
    "linear NTK model, and the catapult window above the threshold narrows as β grows "
    "(issue 18: closes near 1.1–1.2× the threshold at β 0.9, ≈ 1.45× at β 0.5, 2× at β 0).",
    source="derived (ours; issue 18's simulation at width 2000), on the solvable model of "
    "Lewkowycz et al. 2020 §2 with PyTorch's heavy ball",
    setting=f"{LINEAR}, β ∈ {BETAS}, rates {WINDOW_RATES} × (2 + 2β)/sharpness₀; width "
    "512 (1024 in the full run), overlapping Gaussian classes (n 64, d 20), float64",
    criterion="at every β some run above the threshold is a 'catapult' (rule v2), and the "
    "window's upper edge (largest rate > 1 at which every run converged) falls strictly "
    "with β",
    uses="window",
    control=_depth1,
    control_note="depth 1 (a linear model): constant curvature, no catapult at any β",
)
def _k1(r: Runs) -> Verdict:
    if not (r.rates > 1).any():
        return not_judged("no run above the threshold")
    win = _window_by_beta(r)
    betas = sorted(win)
    if len(betas) < 2:
        return not_judged("fewer than two β")
    edges = [win[b][0] for b in betas]
    cat = all(win[b][1] for b in betas)
    falls = bool(np.all(np.isfinite(edges))) and all(a > b for a, b in pairwise(edges))
    text = "; ".join(
        f"β {b:g}: edge {g(win[b][0])}×, catapult {'yes' if win[b][1] else 'no'} ({win[b][2]})"
        for b in betas
    )
    return bool(cat and falls), text + _below_rise(r)


# ------------------------------------------------------------------ the minibatch edge
def _sgd_small_rate(cfgs: Configs) -> Configs:
    return {"sgd": with_(cfgs["sgd"], train__steps=100, sweep={"train.lr": [0.005]})}


@PAPER.claim(
    "B1",
    claim="Under minibatch SGD the batch sharpness E_B[g_Bᵀ H_B g_B/‖g_B‖²] sits at 2/η "
    "while the full-batch sharpness λ_max stays below it.",
    source="Andreyev & Beneventano 2024 (arXiv 2412.20553), abstract",
    setting=f"{SGD_SETTING}, η ∈ {SGD_RATES}; batch sharpness a mean of per-batch "
    "ratios over 8 fresh batches per eval step; paper: CIFAR-10 subsets, several nets",
    criterion=f"every run that neither diverged nor died: the median over the last half of "
    f"η·batch_sharpness/2 within ±{AT} of 1, and that of η·λ_max/2 ≤ {BELOW}",
    uses="sgd",
    control=_sgd_small_rate,
    control_note="η 0.005 for 100 steps: far below the edge, the batch sharpness stays "
    "well under 2/η",
)
def _b1(r: Runs) -> Verdict:
    if not r.has("batch_sharpness"):
        return not_judged("no batch_sharpness (not a minibatch run?)")
    last = r.steps >= r.steps[-1] / 2
    alive = ~np.isin(r.phases(), ("diverged", "dead"))
    if not alive.any():
        return False, "every run diverged or died"
    bs = np.nanmedian(r.trace("batch_sharpness")[:, last] * r.eta[:, None] / 2, axis=1)
    lam = np.nanmedian(r.trace("sharpness")[:, last] * r.eta[:, None] / 2, axis=1)
    ok = bool(np.all((np.abs(bs[alive] - 1) <= AT) & (lam[alive] <= BELOW)))
    return ok, (
        f"η = {gl(r.eta)}: last-half median η·batch_sharpness/2 {gl(bs)}, "
        f"η·λ_max/2 {gl(lam)}; phases {', '.join(r.phases())}"
    )


# ------------------------------------------------------------------ figure
@PAPER.figure("window", "sgd")
def _fig(results: dict[str, Any], folder: Path) -> list[Path]:
    """Left: max L/L₀ against the rate in units of (2 + 2β)/λ₀, one line per β (the
    catapult window). Right: η·batch_sharpness/2 and η·λ_max/2 against steps."""
    fig, ax = figure(2)
    a, b = ax[0]
    ds = results["window"]
    loss = np.asarray(ds["loss"].values, dtype=float)
    rise = np.nanmax(np.where(np.isfinite(loss), loss, np.nan), axis=1) / loss[:, 0]
    rates = np.asarray(ds["train.lr"].values, dtype=float)
    beta = np.asarray(ds["train.momentum"].values, dtype=float)
    diverged = np.asarray(ds["phase"].values).astype(str) == "diverged"
    for bv, color in zip(sorted(set(beta.tolist())), colors(len(set(beta.tolist()))), strict=True):
        m = (beta == bv) & ~diverged
        order = np.argsort(rates[m])
        a.semilogy(rates[m][order], rise[m][order], "o-", color=color, label=f"β = {bv:g}")
    a.axvline(1.0, color="0.4", ls=":", lw=0.8)
    a.set(xlabel="η / ((2 + 2β)/λ₀)", ylabel="max L / L₀ (diverged runs left out)")
    a.set_title("heavy ball catapult window (linear NTK net)", fontsize=8)
    a.legend(fontsize=6)
    ds = results["sgd"]
    steps = np.asarray(ds["step"].values)
    eta = np.asarray(ds["lr"].values, dtype=float)
    bs = np.asarray(ds["batch_sharpness"].values, dtype=float)
    lam = np.asarray(ds["sharpness"].values, dtype=float)
    for r, color in zip(range(bs.shape[0]), colors(bs.shape[0]), strict=True):
        b.plot(steps, bs[r] * eta[r] / 2, color=color, lw=1, label=f"batch, η = {g(eta[r])}")
        b.plot(
            steps, lam[r] * eta[r] / 2, color=color, lw=1, ls="--", label=f"λ_max, η = {g(eta[r])}"
        )
    b.axhline(1.0, color="0.4", ls=":", lw=0.8)
    b.set(xlabel="step", ylabel="η · curvature / 2")
    b.set_title("minibatch SGD: batch sharpness vs λ_max", fontsize=8)
    b.legend(fontsize=6)
    return [save(fig, folder / "momentum-window-and-batch-sharpness.png")]
