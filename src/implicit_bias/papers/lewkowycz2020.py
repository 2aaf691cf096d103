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

from pathlib import Path
from typing import Any

import numpy as np

from ._base import (
    Configs,
    Paper,
    Runs,
    Verdict,
    g,
    gl,
    not_judged,
    test_acc_above_critical,
    with_,
)
from ._figures import colors, figure, save

RATES = [0.5, 0.9, 1.3, 1.7, 1.9, 2.2, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
#: the linear net's width scan (W3): the 4/λ₀ edge is an infinite-width statement
LINEAR_WIDTHS = (256, 1024)
EDGE_RATES = [1.8, 1.9, 2.0, 2.7, 3.0]
#: a finite-width window edge: converging up to CONVERGE_UP_TO, diverging from DIVERGE_FROM
CONVERGE_UP_TO, DIVERGE_FROM = 2.0, 2.7
RELU_NARROW = 256
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
            # dense_early off: the eval grid the claims were calibrated on
            "metrics": {"every": 20, "sharpness": {"iters": 20}, "ntk": True, "dense_early": False},
            "sweep": {"train.lr": rates, "seed": seeds},
        }
        return with_(base, **over)

    wide = 1024 if quick else 4096
    out = {
        "linear": cfg("linear", "linear", wide, RATES),
        "relu": cfg("relu", "relu", wide, [*RATES, 10.0, 12.0, 16.0]),
    }
    for w in LINEAR_WIDTHS:
        out[f"linear_w{w}"] = cfg(f"linear-w{w}", "linear", w, EDGE_RATES, metrics__ntk=False)
    out["relu_narrow"] = cfg(
        "relu-narrow", "relu", RELU_NARROW, [0.5, 0.9, 1.3, 1.7, 1.9, 2.2, 3.0], metrics__ntk=False
    )
    # the same linear net with the logistic loss (cross-entropy for two classes)
    out["linear_logistic"] = cfg(
        "linear-logistic",
        "linear",
        wide,
        [2.0, 2.4, DIVERGE_FROM, 6.0, 8.0, 12.0],
        data={**data["linear"], "n_train": 256},
        train__loss="logistic",
        metrics__ntk=False,
    )
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
    setting=f"{SETTING}; linear, width 1024 (4096 in the full run), overlapping Gaussian classes (n 64, d 20)",
    criterion="every run below 2/λ₀ is 'lazy' with |λ_end/λ₀ − 1| < 0.1 (λ = top NTK eigenvalue)",
    uses="linear",
    control=lambda c: {
        "linear": with_(
            c["linear"], model__init_scale=0.1, train__steps=150, sweep={"train.lr": [0.5, 0.9]}
        )
    },
    control_note="init scale 0.1: the rich regime, the NTK grows as the features are learned "
    "(width 4 or 16 is no control: the NTK moved only 9–10 %)",
)
def _w1(r: Runs) -> Verdict:
    ph, ntk0, ntk = r.phases(), r.at("ntk_max", 0), r.scalar("final_ntk_max")
    lazy = r.rates < 1
    if not lazy.any():
        return not_judged("no run below 2/λ₀")
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
    setting=f"{SETTING}; linear, width 1024 (4096 in the full run), overlapping Gaussian classes (n 64, d 20)",
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
        return not_judged("no run inside the window")
    ratio, rise = ntk * eta / 2, r.loss_rise()
    ok = bool((ph[win] == "catapult").all() and np.all(rise[win] > 0) and np.all(ratio[win] < 1))
    return ok, (
        f"rates {gl(rates[win])}: phases {[str(x) for x in ph[win]]}, loss peak/L₀ − 1 "
        f"{gl(rise[win])}, λ_end·η/2 {gl(ratio[win])}"
    )


@PAPER.claim(
    "W3",
    claim="The linear net's catapult window ends near η_max = 4/λ₀ (2 critical units): "
    "rates up to it converge, rates well beyond it diverge, at every width.",
    source=f"{SOLVABLE} (η_max = 4/λ₀, a large-width statement)",
    setting=f"{SETTING}; linear, widths "
    + ", ".join(map(str, LINEAR_WIDTHS))
    + ", overlapping Gaussian classes (n 64, d 20)",
    criterion=f"at every width all runs ≤ {CONVERGE_UP_TO} critical units converge and all "
    f"runs ≥ {DIVERGE_FROM} diverge (the measured edge is reported)",
    uses=tuple(f"linear_w{w}" for w in LINEAR_WIDTHS),
    control=lambda c: {k: _depth1(c, k, EDGE_RATES)[k] for k in c},
    control_note="a depth-1 linear model: no catapult, every rate above 1 critical unit diverges",
)
def _w3(*widths: Runs) -> Verdict:
    ok, parts = True, []
    for r in widths:
        rates, ph = r.rates, r.phases()
        ok &= bool(r.converged()[rates <= CONVERGE_UP_TO].all())
        ok &= bool((ph[rates >= DIVERGE_FROM] == "diverged").all())
        top, first = r.limits()
        parts.append(f"width {r.name.removeprefix('linear_w')}: converges ≤ {g(top)}, "
                     f"diverges from {g(first)}")  # fmt: skip
    return ok, "; ".join(parts) + " (critical units)"


# ------------------------------------------------------------------ ReLU
def _really_converged(r: Runs) -> np.ndarray:
    """Not diverged, not dead, loss below L₀ and train accuracy well above chance."""
    loss, acc = r.trace("loss"), r.trace("train_acc")[:, -1]
    chance = r.scalar("chance_acc") if r.has("chance_acc") else np.full(len(acc), 0.5)
    return r.converged() & (loss[:, -1] < loss[:, 0]) & (acc >= chance + ACC_MARGIN)


def _really_converging_edge(r: Runs) -> float:
    real = _really_converged(r)
    return float(r.rates[real].max()) if real.any() else float("nan")


@PAPER.claim(
    "W4",
    claim="For ReLU nets the catapult window reaches beyond 4/λ₀ (≈ 12/λ₀ in the paper).",
    source="Lewkowycz et al. 2020, §3 (experiments with ReLU nets: η_max ≈ 12/λ₀)",
    setting=f"{SETTING}; ReLU, width 1024 (4096 in the full run), digits 0–4 vs 5–9 (n 128, "
    "unit norm); λ₀ = the top NTK eigenvalue measured at init in every run",
    criterion="some rate with η·λ₀ > 4 for all its runs at which every run (every seed) "
    f"really converges: not diverged, not dead, final loss < L₀ and train accuracy ≥ chance "
    f"+ {ACC_MARGIN}",
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
    rates, acc, real = r.rates, r.trace("train_acc")[:, -1], _really_converged(r)
    eta_l0 = r.eta * r.at("ntk_max", 0)  # η·λ₀ with λ₀ the measured NTK eigenvalue
    good = [
        float(x)
        for x in sorted(set(rates.tolist()))
        if (eta_l0[rates == x] > 4).all() and real[rates == x].all()
    ]
    return bool(good), (
        f"phases {r.phase_text()}; rates where every seed really converges with η·λ₀ > 4: "
        f"{gl(good) if good else 'none'}; η·λ₀ by rate "
        + ", ".join(
            f"{x:g}: {g(float(np.median(eta_l0[rates == x])))}" for x in sorted(set(rates.tolist()))
        )
        + "; train acc by rate "
        + ", ".join(f"{x:g}: {g(a)}" for x, a in zip(rates, acc, strict=True))
    )


@PAPER.claim(
    "W5",
    claim="No dead or diverged ReLU net is counted as a catapult: every 'catapult' run converged.",
    source="SPEC §3 phase rules (sanity check of the labels, not a claim of the paper)",
    setting=f"{SETTING}; ReLU, width 1024 (4096 in the full run), digits",
    criterion="every 'catapult' run ends with train accuracy ≥ chance + "
    f"{ACC_MARGIN} and a loss below L₀",
    uses="relu",
    kind="sanity",
)
def _w5(r: Runs) -> Verdict:
    cat = r.phases() == "catapult"
    acc = r.trace("train_acc")[:, -1]
    ok = bool(np.all(_really_converged(r)[cat]))
    return ok, f"catapult at {gl(r.rates[cat])}; their train acc {gl(acc[cat])}"


@PAPER.claim(
    "W6",
    claim="The ReLU net's window widens with the width: the largest rate that really "
    "converges grows from width 256 to 1024 (4096 in the full run).",
    source="Lewkowycz et al. 2020, §3 (the window's dependence on width in the ReLU "
    "experiments; the 12/λ₀ edge is a wide-net figure)",
    setting=f"{SETTING}; ReLU, widths {RELU_NARROW} and 1024, digits (n 128, unit norm)",
    criterion="largest really converging rate (not dead or diverged, loss < L₀, train "
    f"accuracy ≥ chance + {ACC_MARGIN}) at the wide net > at width {RELU_NARROW}",
    uses=("relu_narrow", "relu"),
    control=lambda c: {
        k: with_(
            c[k],
            model__activation="linear",
            train__steps=150,
            sweep={"train.lr": [1.7, 1.9, 2.2, 3.0]},
        )
        for k in c
    },
    control_note="linear activation: the edge is 4/λ₀ (2 critical units) at both widths",
)
def _w6(narrow: Runs, wide: Runs) -> Verdict:
    a, b = _really_converging_edge(narrow), _really_converging_edge(wide)
    width = int(wide.ds["init_W1"].shape[1]) if wide.has("init_W1") else "wide"
    return bool(b > a), (
        f"largest really converging rate: width {RELU_NARROW} {g(a)}, width {width} {g(b)}"
    )


@PAPER.claim(
    "W7",
    claim="The catapult is not a squared-loss effect: with the logistic loss the same linear "
    "net's loss also rises above its start and converges, and divergence sets in far above "
    "the squared loss's 4/λ₀.",
    source="Lewkowycz et al. 2020, §2 analyse squared loss only; the logistic catapult is "
    "Liu et al. 2023 (abstract); the comparison is ours (derived)",
    setting="two-layer linear net (NTK), width 1024 (4096 in the full run), logistic loss, full-batch GD; "
    "overlapping Gaussian classes (n 256, d 20)",
    criterion="at some rate every run (every seed) converged with its loss above L₀ on the "
    f"way, and every run at every rate ≤ {DIVERGE_FROM} critical units (2.0, 2.4, "
    f"{DIVERGE_FROM}: where the squared loss diverges) converges",
    uses="linear_logistic",
    control=lambda c: {
        "linear_logistic": with_(
            c["linear_logistic"],
            train__loss="mse",
            train__steps=150,
            sweep={"train.lr": [2.0, 2.7, 6.0]},
        )
    },
    control_note="the squared loss: divergence from about 2.1 critical units",
)
def _w7(r: Runs) -> Verdict:
    rates, conv, rise = r.rates, r.converged(), r.loss_rise()
    rising = [
        float(x)
        for x in sorted(set(rates.tolist()))
        if (conv[rates == x] & (rise[rates == x] > 0)).all()
    ]
    low = rates <= DIVERGE_FROM
    ok = bool(rising and low.any() and conv[low].all())
    return ok, (
        f"phases {r.phase_text()}; rates where every run rose above L₀ and converged "
        f"{gl(rising) if rising else 'none'}; loss peak/L₀ − 1 by rate "
        + ", ".join(f"{x:g}: {g(y)}" for x, y in zip(rates, rise, strict=True))
        + f"; smallest diverging {g(r.limits()[1])}"
    )


@PAPER.claim(
    "W8",
    claim="The best test accuracy is found in the large-rate (catapult) phase.",
    source="Lewkowycz et al. 2020, abstract and §1.1 ('the optimal performance … is often "
    "found in the large learning rate phase')",
    setting=f"{SETTING}; ReLU, width 1024, 300 steps (4096, 1000 steps in the full run), digits (n 128, unit norm)",
    criterion="per init seed, the best test accuracy over converged rates > 1 critical unit "
    "minus the best below 1: the mean gap over draws × seeds exceeds 2 standard errors and "
    "0.005",
    uses="relu",
    control=lambda c: {
        "relu": with_(
            c["relu"],
            data={**c["relu"]["data"], "classes": [0, 1], "n_test": 200},
            train__steps=150,
            sweep={"train.lr": [0.5, 0.9, 1.3, 1.7], "seed": [0, 1]},
        )
    },
    control_note="an easy split (digits 0 vs 1): every converged rate classifies the test set "
    "(almost) perfectly, no room for a large rate to generalise better (rates below 2/λ₀ only "
    "are no control: nothing to compare, the criterion cannot be applied)",
    statistical=True,
    min_effect=0.005,
)
def _w8(r: Runs) -> Verdict:
    return test_acc_above_critical(r, 0.005)


# ------------------------------------------------------------------ the paper's figures
def _curvature_vs_rate(ax: Any, ds: Any, label: str, color: Any) -> None:
    """Final curvature / λ₀ against η·λ₀ (λ the NTK eigenvalue, else the sharpness)."""
    ntk = "ntk_max" in ds and "final_ntk_max" in ds
    lam0 = (
        np.asarray(ds["ntk_max"].isel(step=0).values, dtype=float)
        if ntk
        else np.asarray(ds["sharpness_init"].values, dtype=float)
    )
    lam = np.asarray(ds["final_ntk_max" if ntk else "final_sharpness"].values, dtype=float)
    x = np.asarray(ds["lr"].values, dtype=float) * lam0
    ph = np.asarray(ds["phase"].values).astype(str)
    ok = ph != "diverged"
    ax.plot(x[ok], lam[ok] / lam0[ok], "o", color=color, ms=4, label=label)
    if (~ok).any():
        ax.plot(x[~ok], np.full((~ok).sum(), 1.05), "x", color=color, ms=5)


@PAPER.figure("linear", "linear_w256", "linear_w1024", "relu")
def _fig_ntk_vs_rate(results: dict, folder: Path) -> list[Path]:
    """Lewkowycz et al. 2020 Fig. 2-style: final NTK / λ₀ against η·λ₀, per width."""
    fig, ax = figure(2)
    rows = [("linear_w256", "256"), ("linear_w1024", "1024"), ("linear", "wide")]
    for (name, w), color in zip(rows, colors(len(rows), "plasma"), strict=True):
        _curvature_vs_rate(ax[0, 0], results[name], f"linear, width {w}", color)
    _curvature_vs_rate(ax[0, 1], results["relu"], "ReLU, wide", "tab:red")
    for a, title in zip(ax[0], ("linear net", "ReLU net"), strict=True):
        for x, text in ((2, "2/λ₀"), (4, "4/λ₀")):
            a.axvline(x, color="0.5", ls=":", lw=0.8)
            a.text(x, 1.12, text, fontsize=7, ha="center")
        a.set(
            xscale="log",
            xlabel="η·λ₀",
            ylabel="final λ / λ₀ (x: diverged)",
            ylim=(0, 1.2),
            title=title,
        )
        a.legend(fontsize=7)
    fig.suptitle(
        "Lewkowycz et al. 2020: final curvature against the rate (NTK where measured, else "
        "the sharpness)",
        fontsize=8,
    )
    return [save(fig, folder / "lewkowycz-ntk-vs-rate.png")]
