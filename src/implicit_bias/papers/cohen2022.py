"""Cohen, Ghorbani, Krishnan, Agarwal, Medapati, Badura, Suo, Cardoze, Nado, Dahl &
Gilmer 2022 (arXiv 2207.14484): adaptive gradient methods at the edge of stability.

Full-batch Adam and RMSProp train at the *adaptive* edge of stability: the top
eigenvalue of the preconditioned Hessian P⁻¹H (measured as λ₁(P^{-1/2}HP^{-1/2}),
P from v2's Eq. 2, :func:`implicit_bias.optimizers.preconditioner`)
equilibrates at the optimizer's threshold — (2 + 2β₁)/((1 − β₁)η) = 38/η for
Adam at β₁ 0.9, 2/η for RMSProp — the stability threshold of the momentum /
plain GD recurrence with P frozen. Here on a small ReLU MLP with the square
loss (the paper: CIFAR-10 subsets, MSE and cross-entropy); rows judge the
preconditioned sharpness against the threshold after the start. The
non-adaptive momentum rules have their own thresholds on the raw sharpness
(Cohen et al. 2021, arXiv 2103.00065, and this paper; derived on a quadratic
and checked in tests/test_optimizers.py): (2 + 2β)/η for heavy ball, (2 + 2β)/((1 +
2β)η) for Nesterov, in PyTorch's conventions (rows M1, M2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ._base import Configs, Paper, Runs, Verdict, g, gl, with_
from ._figures import colors, figure, save

SETTING = "depth-3 ReLU MLP (width 32), square loss, full-batch"
#: Adam's threshold numerator at the paper's β₁ = 0.9: (2 + 2β₁)/(1 − β₁)
ADAM_C = (2 + 2 * 0.9) / (1 - 0.9)
#: "at the threshold": after the first START of the eval steps the largest
#: η·λ₁(P⁻¹H)/c lies in this band, and its median over the last half is ≥ HOLD
BAND = (0.85, 1.3)
START = 0.1
HOLD = 0.5
#: the momentum rows' β, and "hovers at the threshold": the median of η·λ/c over
#: the last half of the eval steps within HOVER of 1
MOMENTUM = 0.5
HOVER = 0.15


def _experiments(quick: bool) -> Configs:
    steps = 600 if quick else 1500
    seeds = [0] if quick else [0, 1, 2]

    def cfg(name: str, optimizer: str, rates: list[float]) -> dict[str, Any]:
        return {
            "name": f"cohen2022-{name}",
            "data": {"kind": "overlap", "n_train": 64, "n_test": 200, "d": 10, "seed": 0},
            "model": {
                "depth": 3,
                "width": 32,
                "activation": "relu",
                "parametrization": "standard",
            },
            "train": {"loss": "mse", "steps": steps, "optimizer": optimizer},
            "metrics": {"every": 25, "sharpness": {"iters": 20}},
            "sweep": {"train.lr": rates, "seed": seeds},
        }

    heavy = cfg("momentum", "momentum", [0.2, 0.4])
    nesterov = cfg("nesterov", "nesterov", [0.1, 0.2])
    heavy["train"]["momentum"] = nesterov["train"]["momentum"] = MOMENTUM
    return {
        "adam": cfg("adam", "adam", [0.01, 0.03]),
        "rmsprop": cfg("rmsprop", "rmsprop", [0.003, 0.01]),
        "momentum": heavy,
        "nesterov": nesterov,
    }


PAPER = Paper(
    "cohen2022",
    "Cohen et al. 2022 (arXiv 2207.14484), adaptive gradient methods at the edge of stability",
    _experiments,
)


def _alive(r: Runs) -> np.ndarray:
    """Runs that neither diverged nor died. At an edge of stability the loss may
    still oscillate at the end (``not_converged`` under rule v2): they count."""
    return ~np.isin(r.phases(), ("diverged", "dead"))


def _at_threshold(r: Runs, c: float) -> Verdict:
    """Every live run's η·λ₁(P⁻¹H)/c reaches BAND after the start and holds."""
    if not r.has("preconditioned_sharpness"):
        return None, "no preconditioned_sharpness (not an adaptive optimizer?)"
    ratio = r.trace("preconditioned_sharpness") * r.eta[:, None] / c
    steps = r.steps
    late = steps >= START * steps[-1]
    last = steps >= steps[-1] / 2
    conv = _alive(r)
    if not conv.any():
        return False, "every run diverged or died"
    peak = np.nanmax(ratio[:, late], axis=1)
    hold = np.nanmedian(ratio[:, last], axis=1)
    ok = bool(np.all((peak[conv] >= BAND[0]) & (peak[conv] <= BAND[1]) & (hold[conv] >= HOLD)))
    return ok, (
        f"η = {gl(r.eta)}: max η·λ₁(P⁻¹H)/{g(c)} after {START:.0%} of training {gl(peak)}, "
        f"median over the last half {gl(hold)}; raw sharpness init → final "
        f"{gl(r.trace('sharpness')[:, 0])} → {gl(r.trace('sharpness')[:, -1])}"
    )


def _adam_beta1_zero(cfgs: Configs) -> Configs:
    return {
        "adam": with_(cfgs["adam"], train__beta1=0.0, train__steps=100, sweep={"train.lr": [0.01]})
    }


@PAPER.claim(
    "C1",
    claim="Full-batch Adam's preconditioned sharpness λ₁(P⁻¹H) equilibrates at 38/η "
    "(β₁ = 0.9), the stability threshold of its momentum recurrence with P frozen.",
    source="Cohen et al. 2022, abstract (38/η at β₁ 0.9); P from v2 Eq. 2",
    setting=f"{SETTING}, Adam (β₁ 0.9, β₂ 0.999, ε 1e-8, bias correction); paper: "
    "CIFAR-10 subsets, several architectures",
    criterion=f"after the first {START:.0%} of steps the max of η·λ₁(P⁻¹H)/38 lies in "
    f"[{BAND[0]}, {BAND[1]}] and its median over the last half is ≥ {HOLD}, every run that neither diverged nor died",
    uses="adam",
    control=_adam_beta1_zero,
    control_note="β₁ = 0: Adam's threshold returns to 2/η, far below 38/η",
)
def _c1(r: Runs) -> Verdict:
    return _at_threshold(r, ADAM_C)


def _rmsprop_large_eps(cfgs: Configs) -> Configs:
    return {
        "rmsprop": with_(
            cfgs["rmsprop"], train__eps=1.0, train__steps=100, sweep={"train.lr": [0.003]}
        )
    }


@PAPER.claim(
    "C2",
    claim="Full-batch RMSProp's preconditioned sharpness equilibrates at 2/η.",
    source="Cohen et al. 2022 (RMSProp's threshold 2/η on λ₁(P⁻¹H); section not checked here)",
    setting=f"{SETTING}, RMSProp (β₂ = alpha 0.99, ε 1e-8); paper: CIFAR-10 subsets",
    criterion=f"after the first {START:.0%} of steps the max of η·λ₁(P⁻¹H)/2 lies in "
    f"[{BAND[0]}, {BAND[1]}] and its median over the last half is ≥ {HOLD}, every run that neither diverged nor died",
    uses="rmsprop",
    control=_rmsprop_large_eps,
    control_note="ε = 1 ≫ √s: RMSProp is GD with step η/ε, far below its threshold",
)
def _c2(r: Runs) -> Verdict:
    return _at_threshold(r, 2.0)


def _hovers(r: Runs, c: float) -> Verdict:
    """Every live run's η·sharpness/c has its last-half median within HOVER of 1."""
    ratio = r.trace("sharpness") * r.eta[:, None] / c
    last = r.steps >= r.steps[-1] / 2
    conv = _alive(r)
    if not conv.any():
        return False, "every run diverged or died"
    hold = np.nanmedian(ratio[:, last], axis=1)
    ok = bool(np.all(np.abs(hold[conv] - 1) <= HOVER))
    return ok, (
        f"η = {gl(r.eta)}: median of η·sharpness/{g(c)} over the last half {gl(hold)}; "
        f"phases {', '.join(r.phases())}"
    )


def _heavy_ball_beta_zero(cfgs: Configs) -> Configs:
    return {"momentum": with_(cfgs["momentum"], train__momentum=0.0, train__steps=200)}


@PAPER.claim(
    "M1",
    claim="Full-batch heavy ball (v ← βv + g, w ← w − ηv) trains at its own edge of "
    "stability: the sharpness hovers at (2 + 2β)/η.",
    source="Cohen et al. 2021 (arXiv 2103.00065) and 2022: momentum's own threshold; the "
    "quadratic threshold derived and checked here (tests/test_optimizers.py)",
    setting=f"{SETTING}, heavy ball β = {MOMENTUM} (PyTorch SGD momentum, dampening 0)",
    criterion=f"the median of η·sharpness/(2 + 2β) over the last half of the eval steps "
    f"within ±{HOVER} of 1, every run that neither diverged nor died",
    uses="momentum",
    control=_heavy_ball_beta_zero,
    control_note="β = 0: plain GD hovers at 2/η, 2/3 of (2 + 2·0.5)/η",
)
def _m1(r: Runs) -> Verdict:
    return _hovers(r, 2 + 2 * MOMENTUM)


def _nesterov_as_gd(cfgs: Configs) -> Configs:
    cfg = with_(cfgs["nesterov"], train__optimizer="gd", train__steps=200)
    cfg["train"].pop("momentum", None)  # plain GD takes no β: β = 0
    cfg["sweep"]["train.lr"] = [0.2]
    return {"nesterov": cfg}


@PAPER.claim(
    "M2",
    claim="Full-batch Nesterov momentum (PyTorch's nesterov=True) hovers at "
    "(2 + 2β)/((1 + 2β)η), below GD's 2/η.",
    source="Cohen et al. 2022 (thresholds of momentum methods; section not checked here); "
    "the quadratic threshold derived and checked here (tests/test_optimizers.py)",
    setting=f"{SETTING}, Nesterov β = {MOMENTUM}",
    criterion=f"the median of η·sharpness·(1 + 2β)/(2 + 2β) over the last half of the eval "
    f"steps within ±{HOVER} of 1, every run that neither diverged nor died",
    uses="nesterov",
    control=_nesterov_as_gd,
    control_note="β = 0 (plain GD): the sharpness hovers at 2/η, 4/3 of Nesterov's threshold",
)
def _m2(r: Runs) -> Verdict:
    return _hovers(r, (2 + 2 * MOMENTUM) / (1 + 2 * MOMENTUM))


# ------------------------------------------------------------------ the paper's figure
@PAPER.figure("adam", "rmsprop", "momentum", "nesterov")
def _fig_threshold_ratio(results: dict, folder: Path) -> list[Path]:
    """Cohen et al. 2022 Fig. 1-style: the relevant curvature over the optimizer's
    threshold c/η against steps, one line per run (1 = at the edge)."""
    fig, ax = figure(2, 2)
    for a, name in zip(ax.flat, ("adam", "rmsprop", "momentum", "nesterov"), strict=True):
        ds = results[name]
        curv = "preconditioned_sharpness" if "preconditioned_sharpness" in ds else "sharpness"
        lam = np.asarray(ds[curv].values, dtype=float)  # (run, step)
        eta = np.asarray(ds["lr"].values, dtype=float)
        c = np.asarray(ds["stability_numerator"].values, dtype=float)
        steps = np.asarray(ds["step"].values)
        for r, color in zip(range(lam.shape[0]), colors(lam.shape[0]), strict=True):
            a.plot(steps, lam[r] * eta[r] / c[r], color=color, lw=1, label=f"η = {g(eta[r])}")
        a.axhline(1.0, color="0.4", ls=":", lw=0.8)
        what = "λ₁(P⁻¹H)" if curv != "sharpness" else "λ_max"
        # the first adaptive steps (P still ≈ ε) reach 100-1000× the threshold: clip them
        a.set(
            xlabel="step",
            ylabel=f"η·{what} / c (clipped at 2)",
            title=f"{name} (c = {g(c[0])})",
            ylim=(0, 2),
        )
        a.legend(fontsize=6)
    fig.suptitle(
        "Cohen et al. 2022: curvature against each optimizer's threshold (one line per run)",
        fontsize=8,
    )
    return [save(fig, folder / "cohen2022-threshold-ratio.png")]
