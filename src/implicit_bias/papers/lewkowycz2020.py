"""Lewkowycz, Bahri, Dyer, Sohl-Dickstein & Gur-Ari 2020 (arXiv 2003.02218): the catapult
phase of wide networks trained with squared loss.

The paper's solvable model (§2) is a two-layer linear net in NTK
parametrization with squared loss and full-batch GD: for η < 2/λ₀ the NTK
barely moves (lazy); for 2/λ₀ < η < 4/λ₀ the loss grows, the top NTK
eigenvalue λ falls until λ < 2/η, and training converges (catapult); beyond
4/λ₀ it diverges — statements of the large-width limit. For ReLU nets the
paper reports the window reaching further (η_max ≈ 12/λ₀). Rates here are in
units of 2/sharpness₀; for squared loss sharpness₀ ≈ λ₀ (measured ratio
reported in W1), so 2 units ≈ 4/λ₀.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._base import Configs, Paper, Runs, Verdict, g, gl, with_

RATES = [0.5, 0.9, 1.3, 1.7, 1.9, 2.2, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
#: the linear net's width scan (W3): the 4/λ₀ edge is an infinite-width statement
LINEAR_WIDTHS = (256, 1024)
EDGE_RATES = [1.7, 1.9, 2.0, 2.1, 2.2, 2.4, 2.7, 3.0, 3.5]
SETTING = "two-layer net (NTK), squared loss, full-batch GD"
SOLVABLE = "Lewkowycz et al. 2020, §2 (the solvable two-layer linear model)"
#: a converged ReLU net classifies its training set well above chance
ACC_MARGIN = 0.2


def _experiments(quick: bool) -> Configs:
    # The linear net on two overlapping Gaussian classes; the ReLU net on bundled
    # digits (0–4 vs 5–9).
    data = {
        "linear": {"kind": "overlap", "shift": 2.0, "n_train": 64, "n_test": 500, "d": 20},
        "relu": {
            "kind": "sklearn",
            "name": "digits",
            "n_train": 128,
            "n_test": 500,
            "normalize": "unit",
        },
    }
    steps = 300 if quick else 1000
    seeds = [0] if quick else [0, 1, 2]

    def cfg(name: str, activation: str, width: int, rates: list[float], **over: Any) -> dict:
        base = {
            "name": f"lewkowycz2020-{name}",
            "data": data[activation],
            "model": {
                "depth": 2,
                "width": width,
                "activation": activation,
                "parametrization": "ntk",
            },
            "train": {"loss": "mse", "steps": steps, "lr_units": "critical", "dtype": "float64"},
            "metrics": {"every": 20, "sharpness": {"iters": 20}, "ntk": True},
            "sweep": {"train.lr": rates, "seed": seeds},
        }
        return with_(base, **over)

    wide = 1024 if quick else 4096
    out = {
        "linear": cfg("linear", "linear", wide, RATES),
        "relu": cfg("relu", "relu", wide, [*RATES, 10.0, 12.0, 16.0]),
    }
    for w in LINEAR_WIDTHS if quick else (*LINEAR_WIDTHS, 4096):
        out[f"linear_w{w}"] = cfg(f"linear-w{w}", "linear", w, EDGE_RATES, metrics__ntk=False)
    return out


PAPER = Paper(
    "lewkowycz2020",
    "Lewkowycz et al. 2020 (arXiv 2003.02218): the catapult phase, squared loss",
    _experiments,
)


def _depth1(cfgs: Configs, name: str, rates: list[float]) -> Configs:
    """A linear model (depth 1): constant NTK, no catapult — η > 2/λ diverges."""
    return {name: with_(cfgs[name], model__depth=1, train__steps=150, sweep={"train.lr": rates})}


# ------------------------------------------------------------------ linear net
@PAPER.claim(
    "W1",
    claim="Lazy phase η < 2/λ₀: the NTK barely moves and the loss falls without a spike.",
    source=f"{SOLVABLE}; abstract ('small learning rate phase … infinitely wide' theory)",
    setting=f"{SETTING}; linear, width 1024, overlapping Gaussian classes (n 64, d 20)",
    criterion="every run below 2/λ₀ is 'lazy' with |λ_end/λ₀ − 1| < 0.1 (λ = top NTK "
    "eigenvalue)",
    uses="linear",
    control=lambda c: {
        "linear": with_(c["linear"], model__width=4, sweep={"train.lr": [0.5, 0.9]})
    },
    control_note="width 4: far from the wide limit, the NTK moves even below 2/λ₀ (width 16 "
    "is no control: the NTK moved 9 %)",
)
def _w1(r: Runs) -> Verdict:
    ph, ntk0, ntk = r.phases(), r.at("ntk_max", 0), r.scalar("final_ntk_max")
    lazy = r.rates < 1
    if not lazy.any():
        return None, "no run below 2/λ₀"
    ok = bool((ph[lazy] == "lazy").all() and np.all(np.abs(ntk[lazy] / ntk0[lazy] - 1) < 0.1))
    ratio = float(np.median(r.scalar("sharpness_init") / ntk0))
    return ok, (
        f"phases {r.phase_text()}; NTK λ_end/λ₀ {gl(ntk[lazy] / ntk0[lazy])}; "
        f"sharpness₀/λ₀ = {g(ratio)} (so critical units ≈ 2/λ₀)"
    )


@PAPER.claim(
    "W2",
    claim="Catapult phase 2/λ₀ < η < 4/λ₀: the loss grows, the NTK falls and training "
    "converges with λ_end < 2/η.",
    source=SOLVABLE,
    setting=f"{SETTING}; linear, width 1024, overlapping Gaussian classes (n 64, d 20)",
    criterion="every run at 1.05–1.95 critical units is 'catapult', its loss rose above L₀, "
    "and λ_end·η/2 < 1",
    uses="linear",
    control=lambda c: _depth1(c, "linear", [1.3, 1.7]),
    control_note="a depth-1 linear model: constant NTK, rates above 2/λ diverge",
)
def _w2(r: Runs) -> Verdict:
    rates, ph, eta = r.rates, r.phases(), r.eta
    ntk = r.scalar("final_ntk_max")
    win = (rates > 1.05) & (rates < 1.95)
    if not win.any():
        return None, "no run inside the window"
    ratio, rise = ntk * eta / 2, r.loss_rise()
    ok = bool((ph[win] == "catapult").all() and np.all(rise[win] > 0) and np.all(ratio[win] < 1))
    return ok, (
        f"rates {gl(rates[win])}: phases {[str(x) for x in ph[win]]}, loss peak/L₀ − 1 "
        f"{gl(rise[win])}, λ_end·η/2 {gl(ratio[win])}"
    )


@PAPER.claim(
    "W3",
    claim="The linear net's catapult window ends at η_max = 4/λ₀ in the wide limit: the "
    "measured edge approaches 2 critical units as the width grows.",
    source=f"{SOLVABLE} (η_max = 4/λ₀ at large width)",
    setting=f"{SETTING}; linear, widths " + ", ".join(map(str, LINEAR_WIDTHS))
    + " (quick; 4096 too in full), overlapping Gaussian classes",
    criterion="at the widest net the smallest diverging rate is within [1.9, 2.5] critical "
    "units and no farther from 2 than at the narrowest",
    uses=tuple(f"linear_w{w}" for w in LINEAR_WIDTHS),
    control=lambda c: {k: _depth1(c, k, EDGE_RATES)[k] for k in c},
    control_note="a depth-1 linear model: no catapult, the edge is 1 critical unit at every "
    "width",
)
def _w3(*widths: Runs) -> Verdict:
    edges = [r.limits()[1] for r in widths]
    narrow, wide = edges[0], edges[-1]
    ok = bool(1.9 <= wide <= 2.5 and abs(wide - 2) <= abs(narrow - 2))
    names = [r.name.removeprefix("linear_w") for r in widths]
    return ok, "smallest diverging rate (critical units): " + ", ".join(
        f"width {w}: {g(e)}" for w, e in zip(names, edges, strict=True)
    )


# ------------------------------------------------------------------ ReLU
@PAPER.claim(
    "W4",
    claim="For ReLU nets the catapult window reaches beyond 4/λ₀ (≈ 12/λ₀ in the paper).",
    source="Lewkowycz et al. 2020, §3 (experiments with ReLU nets: η_max ≈ 12/λ₀)",
    setting=f"{SETTING}; ReLU, width 1024 (quick), digits 0–4 vs 5–9 (n 128, unit norm)",
    criterion="some run above 2 critical units (η > 4/λ₀) converges: not diverged, not "
    f"dead, final loss < L₀ and train accuracy ≥ chance + {ACC_MARGIN}",
    uses="relu",
    control=lambda c: {
        "relu": with_(
            c["relu"],
            model__activation="linear",
            train__steps=150,
            sweep={"train.lr": [2.2, 3.0, 4.0]},
        )
    },
    control_note="the same net with a linear activation: divergence at 4/λ₀",
)
def _w4(r: Runs) -> Verdict:
    rates, ph = r.rates, r.phases()
    loss = r.trace("loss")
    acc = r.trace("train_acc")[:, -1]
    chance = r.scalar("chance_acc") if r.has("chance_acc") else np.full(len(rates), 0.5)
    real = (
        r.converged()
        & (loss[:, -1] < loss[:, 0])
        & (acc >= chance + ACC_MARGIN)
    )
    top = float(rates[real].max()) if real.any() else float("nan")
    return bool(top > 2), (
        f"phases {r.phase_text()}; largest really converging rate {g(top)} critical units "
        f"(η = {g(2 * top)}/λ₀); train acc by rate "
        + ", ".join(f"{x:g}: {g(a)}" for x, a in zip(rates, acc, strict=True))
    )


@PAPER.claim(
    "W5",
    claim="No dead or diverged ReLU net is counted as a catapult: every 'catapult' run "
    "converged.",
    source="SPEC §3 phase rules (sanity check of the labels, not a claim of the paper)",
    setting=f"{SETTING}; ReLU, width 1024 (quick), digits",
    criterion="every 'catapult' run ends with train accuracy ≥ chance + "
    f"{ACC_MARGIN} and a loss below L₀",
    uses="relu",
    kind="sanity",
)
def _w5(r: Runs) -> Verdict:
    cat = r.phases() == "catapult"
    loss, acc = r.trace("loss"), r.trace("train_acc")[:, -1]
    chance = r.scalar("chance_acc") if r.has("chance_acc") else np.full(len(cat), 0.5)
    ok = bool(np.all((acc[cat] >= chance[cat] + ACC_MARGIN) & (loss[cat, -1] < loss[cat, 0])))
    return ok, f"catapult at {gl(r.rates[cat])}; their train acc {gl(acc[cat])}"
