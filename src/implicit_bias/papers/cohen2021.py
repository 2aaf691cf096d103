"""Cohen, Kaur, Li, Kolter & Talwalkar 2021 (arXiv 2103.00065): gradient descent on
neural networks typically occurs at the edge of stability.

Full-batch GD at step size η: while the sharpness (top Hessian eigenvalue of
the training loss) is below 2/η it tends to rise (*progressive sharpening*);
once it reaches 2/η it stops rising and hovers at, or just above, 2/η for the
rest of training (*edge of stability*), while the training loss keeps falling
over long timescales but non-monotonically over short ones (abstract; §1 and
Fig. 1 of v3). With the square loss the hover level is set by η alone, so
halving η doubles it (derived from "hovers at 2/η"). With cross-entropy the
sharpness also reaches 2/η, and later in training it falls below 2/η.

Here: scikit-learn's 8×8 digits, even vs odd as ±1 labels (a subset of
``n_train`` examples, redrawn per data seed), the paper's fc-tanh family (a
tanh MLP, ``standard`` 1/fan_in initialisation) with one output and no
biases, so the hand-written fast path runs it, with the square loss ½(f − y)²
(the one-output case of the paper's ½ Σ_k normalisation) and the logistic
loss (binary cross-entropy). Ten classes with biases (``classes: all``, ``bias:
true``) run on the generic path, measured ≈ 35 ms a step and ≈ 1 s a sharpness
evaluation on the 2-core CPU: too slow for the quick budget. The paper: CIFAR-10 5k subsets and
several architectures (fc-tanh, fc-ReLU, convnets, VGG, ResNet, Transformer).

The convnet (experiment ``cnn``, rows E5 and E6, judged by E1's and E2's
criteria): Cohen et al.'s ``convnet`` (``model.kind: cnn``, channels [8, 8],
tanh, 2×2 max pooling, biases, PyTorch's initialisation) on the digits as
1×8×8 images. Full recipe: all ten classes, the square loss on one-hot
targets with the paper's ½ Σ_k normalisation — the paper's setting apart from
the data set. At η = 0.1 the runs start at η·sharpness₀/2 0.37–0.72 (by
init seed) and reach the edge after 200–1850 steps. Measured on the full
recipe (5 draws × 3 init seeds, 2000 steps): E5 and E6 hold on draws 0–3 and
fail on draw 4, where one run (init seed 2) sharpens slowly: 0.38 → 0.83 of its
edge at step 2000, 0.897 at step 3000 (so a longer budget alone does not
rescue it). η = 0.05 had sharpened to 0.64 of its edge after 2500 steps, so no
second rate below the edge fits the budget and the convnet has no 1/η row. Quick recipe: even vs odd digits (one output, ±1),
where η = 0.2 starts at ≈ 0.51 and reaches the edge within 50 steps (300 steps,
≈ 3.5 s CPU a run). Cost measured on the loaded 2-core CPU: ≈ 7.5 ms a step per
run on ten classes with a sharpness every 50 steps.

The synthetic set (experiment ``synth``, rows E7–E9, judged by E1's, E2's and
E3's criteria): the fc-tanh square-loss experiment on two overlapping unit
Gaussians in ℝ²⁰ (``data.kind: overlap``, 128 points, standardised) — the
issue's "one synthetic set"; ≈ 1 s CPU a run of 450 steps.

Ratios below are η·sharpness/2 — 1 is the edge 2/η.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ._base import Configs, Paper, Runs, Verdict, g, gl, not_judged, with_
from ._figures import colors, figure, save

SETTING = (
    "fc-tanh (depth 3, width 32, no biases, one output), 128 digits even vs odd (±1), "
    "full-batch GD; paper: CIFAR-10 5k subsets, 10 classes, several architectures"
)
#: MSE rates: η and η/2 (E3 compares their hover levels); the cross-entropy rate
MSE_RATES = [0.5, 0.25]
CE_RATE = 2.0
#: "reaches 2/η": η·sharpness/2 ≥ REACH at some eval step
REACH = 0.9
#: "starts below 2/η" for progressive sharpening: η·sharpness₀/2 ≤ BELOW
BELOW = 0.7
#: "hovers within a band": every eval step after first reaching lies in BAND
BAND = (0.75, 1.5)
#: at least this many eval steps after first reaching 2/η (else: not enough hovering seen)
MIN_AFTER = 3
#: "the hover level follows 1/η": the ratio of hover levels within ±TOL of the ratio of rates
TOL = 0.2
#: "then falls" (cross-entropy): the last sharpness ≤ FALL × its maximum
FALL = 0.8
#: the controls' small rate (2/η far above anything reached) and the gradient-flow factor
TINY = 0.02
FLOW = 0.2
#: the convnet's rates on ten classes (full): η·sharpness₀/2 ≈ 0.48 and ≈ 0.96, so the
#: second starts at the edge and only E6 judges it; quick (binary digits): ≈ 0.51
CNN_RATES = [0.1, 0.2]
CNN_QUICK_RATES = [0.2]
#: the rate whose 2/η the convnet's gradient-flow control is judged against
#: (binary digits start at it: η·sharpness₀/2 ≈ 1.0)
CNN_FLOW_RATE = 0.4
CNN_SETTING = (
    "Cohen et al.'s convnet (conv3×3 → tanh → 2×2 max pool for channels [8, 8], linear "
    "head, biases) on 1×8×8 digit images (128 examples), square loss, mean over examples, "
    "full-batch GD; full: all 10 classes, one-hot targets ½ Σ_k (f_k − y_k)² (the paper's "
    f"loss), η = {gl(CNN_RATES)}, 2000 steps, 3 init seeds; "
    f"quick: even vs odd (±1, one output), η = {CNN_QUICK_RATES[0]}, 300 steps, one init seed"
)


#: the synthetic set (rows E7–E9): two unit Gaussians in ℝ²⁰ whose means are 1 apart,
#: not linearly separable, standardised (data.kind overlap)
SYNTH_DATA = {
    "kind": "overlap",
    "n_train": 128,
    "n_test": 256,
    "d": 20,
    "normalize": "standardize",
    "seed": 0,
}
SYNTH_SETTING = (
    "fc-tanh (depth 3, width 32, no biases, one output) on a synthetic set: 128 points of two "
    "unit Gaussians in ℝ²⁰ with means 1 apart (not separable; data.kind overlap, "
    f"standardised), square loss ½(f − y)², full-batch GD, η = {gl(MSE_RATES)}"
)


def fc_tanh_digits(n_test: int = 256) -> dict[str, Any]:
    """The ``data`` and ``model`` sections of this paper's fc-tanh setting (128 digits even
    vs odd, standardised; depth 3, width 32, no biases, ``standard`` init), shared by
    :mod:`.cohen2024` and the central-flow bench row."""
    return {
        "data": {
            "kind": "sklearn",
            "name": "digits",
            "n_train": 128,
            "n_test": n_test,
            "normalize": "standardize",
            "seed": 0,
        },
        "model": {
            "kind": "mlp",
            "depth": 3,
            "width": 32,
            "activation": "tanh",
            "bias": False,
            "parametrization": "standard",
        },
    }


def _experiments(quick: bool) -> Configs:
    steps = 450 if quick else 2000
    seeds = [0] if quick else [0, 1, 2]

    def cfg(name: str, loss: str, rates: list[float], steps: int) -> dict[str, Any]:
        return {
            "name": f"cohen2021-{name}",
            **fc_tanh_digits(),
            "train": {"loss": loss, "steps": steps},
            "metrics": {"every": 25 if quick else 50, "sharpness": {"iters": 20}},
            "sweep": {"train.lr": rates, "seed": seeds},
        }

    # quick: binary digits (one output), where the edge comes within 50 steps; full: the
    # paper's ten classes on one-hot targets (their edge needs ≈ 450 steps at η = 0.1)
    cnn = cfg("cnn", "mse", CNN_QUICK_RATES if quick else CNN_RATES, 300 if quick else steps)
    if not quick:
        cnn["data"]["classes"] = "all"
    cnn["model"] = {"kind": "cnn", "channels": [8, 8], "activation": "tanh", "pool": "max"}
    cnn["metrics"]["dense_early"] = False
    synth = cfg("synth", "mse", MSE_RATES, steps)
    synth["data"] = {**SYNTH_DATA}
    return {
        "mse": cfg("mse", "mse", MSE_RATES, steps),
        "ce": cfg("ce", "logistic", [CE_RATE], steps // 3),
        "cnn": cnn,
        "synth": synth,
    }


PAPER = Paper(
    "cohen2021",
    "Cohen et al. 2021 (arXiv 2103.00065), gradient descent at the edge of stability",
    _experiments,
)


def _ratio(r: Runs) -> np.ndarray:
    """(run, eval step) η·sharpness/2: 1 is the edge 2/η (η the base rate)."""
    return r.trace("sharpness") * r.eta[:, None] / 2


def _first_reach(ratio: np.ndarray) -> int | None:
    hit = np.flatnonzero(ratio >= REACH)
    return int(hit[0]) if hit.size else None


# ------------------------------------------------------------------ claims
def _smaller_rate(cfgs: Configs) -> Configs:
    return {
        "mse": with_(cfgs["mse"], train__steps=100, metrics__every=25, sweep={"train.lr": [TINY]})
    }


@PAPER.claim(
    "E1",
    claim="Progressive sharpening: with the square loss, while the sharpness is below 2/η "
    "it rises, until it reaches 2/η.",
    source="Cohen et al. 2021, abstract, §1 and Fig. 1 (v3)",
    setting=f"{SETTING}; square loss ½(f − y)², mean over examples, η = {gl(MSE_RATES)}",
    criterion=f"every run that starts below the edge (η·sharpness₀/2 ≤ {BELOW}; at least "
    f"one) reaches it (η·sharpness/2 ≥ {REACH} at some eval step)",
    uses="mse",
    control=_smaller_rate,
    control_note=f"η = {TINY}: 2/η = {2 / TINY:g} is far above any sharpness reached in the budget",
)
def _e1(r: Runs) -> Verdict:
    ratio = _ratio(r)
    start, peak = ratio[:, 0], np.nanmax(ratio, axis=1)
    below = start <= BELOW
    if not below.any():
        return not_judged(f"no run starts below the edge (η·sharpness₀/2 {gl(start)})")
    ok = bool(np.all(peak[below] >= REACH))
    reach = [_first_reach(x) for x in ratio]
    when = [("never" if k is None else str(int(r.steps[k]))) for k in reach]
    return ok, (
        f"η = {gl(r.eta)}: η·sharpness/2 at init {gl(start)}, max {gl(peak)}, "
        f"first ≥ {REACH} at step {', '.join(when)}"
    )


def _gradient_flow(cfgs: Configs) -> Configs:
    # base rate η (the judge's 2/η) but every step is FLOW·η: GD far
    # below its own threshold tracks gradient flow, which knows nothing of 2/η
    cfg = with_(
        cfgs["mse"],
        train__schedule={"kind": "step", "at": [0], "factor": FLOW},
        sweep={"train.lr": [MSE_RATES[0]]},
    )
    cfg["train"]["steps"] = 250
    cfg["metrics"]["every"] = 50
    return {"mse": cfg}


@PAPER.claim(
    "E2",
    claim="Edge of stability: once the sharpness reaches 2/η it hovers at, or just above, "
    "2/η for the rest of training, while the training loss keeps falling over long "
    "timescales but non-monotonically over short ones.",
    source="Cohen et al. 2021, abstract and Fig. 1 (v3)",
    setting=f"{SETTING}; square loss, η = {gl(MSE_RATES)}",
    criterion=f"every run reaches η·sharpness/2 ≥ {REACH}; from then on every eval step "
    f"(≥ {MIN_AFTER} of them) lies in [{BAND[0]}, {BAND[1]}], the loss rises on some "
    "iterations and ends below its value when the edge was reached",
    uses="mse",
    control=_gradient_flow,
    control_note=f"tiny-step GD (every step at {FLOW}·η, a gradient-flow proxy) judged "
    "against 2/η of the base rate η: it keeps sharpening past 2/η, and its loss falls "
    "monotonically",
)
def _e2(r: Runs) -> Verdict:
    ratio, loss, steps = _ratio(r), r.trace("loss"), r.steps
    oks, texts = [], []
    for i in range(r.n_runs):
        k = _first_reach(ratio[i])
        if k is None:
            oks.append(False)
            texts.append(f"η {g(r.eta[i])}: never reached (max {g(np.nanmax(ratio[i]))})")
            continue
        after = ratio[i, k:]
        t0 = int(steps[k])
        tail = loss[i, t0:]
        rises = int(np.sum(np.diff(tail) > 0))
        lo, hi = float(np.nanmin(after)), float(np.nanmax(after))
        falls = bool(np.isfinite(tail[-1]) and tail[-1] < tail[0])
        ok = after.size >= MIN_AFTER and BAND[0] <= lo and hi <= BAND[1] and rises > 0 and falls
        oks.append(bool(ok))
        texts.append(
            f"η {g(r.eta[i])}: from step {t0} ({after.size} evals) η·sharpness/2 in "
            f"[{g(lo)}, {g(hi)}], loss rose on {rises} of {tail.size - 1} iterations, "
            f"{g(tail[0])} → {g(tail[-1])}"
        )
    return bool(all(oks)), "; ".join(texts)


def _small_pair(cfgs: Configs) -> Configs:
    return {"mse": with_(cfgs["mse"], train__steps=100, sweep={"train.lr": [TINY, TINY / 2]})}


@PAPER.claim(
    "E3",
    claim="The hover level follows 1/η: halving the step size doubles the sharpness GD settles at.",
    source="derived from Cohen et al. 2021's abstract (the sharpness hovers at 2/η)",
    setting=f"{SETTING}; square loss, η = {gl(MSE_RATES)} (a factor 2)",
    criterion="per init seed, the median sharpness over the last half of the eval steps "
    "at the smaller rate over that at the larger rate is within "
    f"±{TOL:.0%} of the ratio of the rates",
    uses="mse",
    control=_small_pair,
    control_note=f"η = {TINY}, {TINY / 2:g}: neither reaches its 2/η; the smaller rate has "
    "simply sharpened less",
)
def _e3(r: Runs) -> Verdict:
    sharp, eta, seeds = r.trace("sharpness"), r.eta, r.coord("seed")
    last = r.steps >= r.steps[-1] / 2
    level = np.nanmedian(sharp[:, last], axis=1)
    got, want = [], []
    for s in sorted(set(seeds.tolist())):
        idx = np.flatnonzero(seeds == s)
        if idx.size < 2:
            continue
        hi, lo = idx[np.argmax(eta[idx])], idx[np.argmin(eta[idx])]
        got.append(float(level[lo] / level[hi]))
        want.append(float(eta[hi] / eta[lo]))
    if not got:
        return not_judged("needs two rates per init seed")
    ok = all(abs(a / b - 1) <= TOL for a, b in zip(got, want, strict=True))
    return ok, (
        f"η = {gl(eta)}: late median sharpness {gl(level)} (2/η {gl(2 / eta)}); "
        f"ratio small-η/large-η {gl(got)}, rates' ratio {gl(want)}"
    )


def _ce_small_rate(cfgs: Configs) -> Configs:
    return {"ce": with_(cfgs["ce"], train__steps=100, sweep={"train.lr": [TINY]})}


@PAPER.claim(
    "E4",
    claim="With cross-entropy GD also reaches the edge 2/η, and later in training the "
    "sharpness falls below 2/η (the paper's cross-entropy runs leave the edge late in training).",
    source="Cohen et al. 2021 (cross-entropy runs; section not read here), Fig. 1 for reaching 2/η",
    setting=f"{SETTING}; logistic loss (binary cross-entropy), η = {g(CE_RATE)} (here "
    "η·sharpness₀/2 ≈ 1.3: the run starts above the edge, so the rise to it is not tested; at "
    "η 1, η·sharpness₀/2 ≈ 0.65 peaked at 0.69 before the sharpness fell)",
    criterion=f"every run reaches η·sharpness/2 ≥ {REACH} and its last value is ≤ "
    f"{FALL} × its maximum",
    uses="ce",
    control=_ce_small_rate,
    control_note=f"η = {TINY}: 2/η is never reached in the budget",
)
def _e4(r: Runs) -> Verdict:
    ratio = _ratio(r)
    peak, last = np.nanmax(ratio, axis=1), ratio[:, -1]
    ok = bool(np.all((peak >= REACH) & (last <= FALL * peak)))
    at = [int(r.steps[int(np.nanargmax(x))]) for x in ratio]
    return ok, (
        f"η = {gl(r.eta)}: η·sharpness/2 at init {gl(ratio[:, 0])}, max {gl(peak)} "
        f"(step {', '.join(map(str, at))}), last {gl(last)}"
    )


# ------------------------------------------------------------------ the convnet
def _cnn_smaller_rate(cfgs: Configs) -> Configs:
    return {
        "cnn": with_(cfgs["cnn"], train__steps=50, metrics__every=25, sweep={"train.lr": [TINY]})
    }


@PAPER.claim(
    "E5",
    claim="Progressive sharpening on a convnet: with the square loss, while the sharpness is "
    "below 2/η it rises, until it reaches 2/η (the same phenomenon as E1, on another "
    "architecture).",
    source="Cohen et al. 2021, abstract and §1 (v3: the characterization 'holds across a broad "
    "range of network architectures and tasks'); the convnet's own figure not read here",
    setting=CNN_SETTING,
    criterion=f"E1's: every run that starts below the edge (η·sharpness₀/2 ≤ {BELOW}; at least "
    f"one) reaches it (η·sharpness/2 ≥ {REACH} at some eval step)",
    uses="cnn",
    control=_cnn_smaller_rate,
    control_note=f"η = {TINY}: 2/η = {2 / TINY:g} is far above any sharpness the convnet "
    "reaches in the budget",
)
def _e5(r: Runs) -> Verdict:
    return _e1(r)


def _cnn_gradient_flow(cfgs: Configs) -> Configs:
    # base rate η where the convnet starts at its edge, every step at FLOW·η:
    # tiny-step GD sharpens on past 2/η with a monotone loss
    cfg = with_(
        cfgs["cnn"],
        train__schedule={"kind": "step", "at": [0], "factor": FLOW},
        sweep={"train.lr": [CNN_FLOW_RATE]},
    )
    cfg["train"]["steps"] = 150
    cfg["metrics"]["every"] = 50
    return {"cnn": cfg}


@PAPER.claim(
    "E6",
    claim="Edge of stability on a convnet: once the sharpness reaches 2/η it hovers at, or "
    "just above, 2/η for the rest of training, while the training loss keeps falling over "
    "long timescales but non-monotonically over short ones (E2 on another architecture).",
    source="Cohen et al. 2021, abstract and Fig. 1 (v3: 'on three architectures'); §1",
    setting=CNN_SETTING,
    criterion=f"E2's: every run reaches η·sharpness/2 ≥ {REACH}; from then on every eval step "
    f"(≥ {MIN_AFTER} of them) lies in [{BAND[0]}, {BAND[1]}], the loss rises on some "
    "iterations and ends below its value when the edge was reached",
    uses="cnn",
    control=_cnn_gradient_flow,
    control_note=f"tiny-step GD (every step at {FLOW}·η) judged against 2/η of the base rate "
    f"η = {g(CNN_FLOW_RATE)}, which the binary convnet starts at: it sharpens on past 2/η "
    "and its loss falls monotonically",
)
def _e6(r: Runs) -> Verdict:
    return _e2(r)


# ------------------------------------------------------------------ the synthetic set
def _on(name: str, control: Any) -> Any:
    """``control`` (written for the digits' ``mse`` experiment) applied to experiment ``name``."""

    def renamed(cfgs: Configs) -> Configs:
        return {name: control({"mse": cfgs[name]})["mse"]}

    return renamed


@PAPER.claim(
    "E7",
    claim="Progressive sharpening on a synthetic set: with the square loss, while the sharpness "
    "is below 2/η it rises, until it reaches 2/η (E1 off the digits).",
    source="Cohen et al. 2021, abstract and §1 (v3: 'holds across a broad range of network "
    "architectures and tasks'); the synthetic set is this workbench's",
    setting=SYNTH_SETTING,
    criterion=f"E1's: every run that starts below the edge (η·sharpness₀/2 ≤ {BELOW}; at least "
    f"one) reaches it (η·sharpness/2 ≥ {REACH} at some eval step)",
    uses="synth",
    control=_on("synth", _small_pair),  # E9's control run: the test suite runs it once
    control_note=f"η = {TINY}, {TINY / 2:g}: 2/η = {2 / TINY:g}, {4 / TINY:g} are far above any "
    "sharpness reached in the budget",
)
def _e7(r: Runs) -> Verdict:
    return _e1(r)


@PAPER.claim(
    "E8",
    claim="Edge of stability on a synthetic set: once the sharpness reaches 2/η it hovers at, or "
    "just above, 2/η for the rest of training, while the loss keeps falling over long "
    "timescales but non-monotonically over short ones (E2 off the digits).",
    source="Cohen et al. 2021, abstract and Fig. 1 (v3); the synthetic set is this workbench's",
    setting=SYNTH_SETTING,
    criterion=f"E2's: every run reaches η·sharpness/2 ≥ {REACH}; from then on every eval step "
    f"(≥ {MIN_AFTER} of them) lies in [{BAND[0]}, {BAND[1]}], the loss rises on some "
    "iterations and ends below its value when the edge was reached",
    uses="synth",
    control=_on("synth", _gradient_flow),
    control_note=f"tiny-step GD (every step at {FLOW}·η, a gradient-flow proxy) judged "
    f"against 2/η of the base rate η = {g(MSE_RATES[0])}: it crosses 2/η, sharpens on past "
    "it, and its loss falls monotonically",
)
def _e8(r: Runs) -> Verdict:
    return _e2(r)


@PAPER.claim(
    "E9",
    claim="The hover level follows 1/η on a synthetic set: halving the step size doubles the "
    "sharpness GD settles at (E3 off the digits).",
    source="derived from Cohen et al. 2021's abstract (the sharpness hovers at 2/η)",
    setting=SYNTH_SETTING + " (a factor 2)",
    criterion="E3's: per init seed, the median sharpness over the last half of the eval steps "
    "at the smaller rate over that at the larger rate is within "
    f"±{TOL:.0%} of the ratio of the rates",
    uses="synth",
    control=_on("synth", _small_pair),
    control_note=f"η = {TINY}, {TINY / 2:g}: neither reaches its 2/η",
)
def _e9(r: Runs) -> Verdict:
    return _e3(r)


# ------------------------------------------------------------------ the paper's figure
def _sharpness_panel(a: Any, ds: Any, title: str) -> None:
    """Sharpness against steps, one line per run, 2/η dashed in the run's colour."""
    lam = np.asarray(ds["sharpness"].values, dtype=float)  # (run, step)
    eta = np.asarray(ds["lr"].values, dtype=float)
    steps = np.asarray(ds["step"].values)
    rates = sorted(set(eta.tolist()), reverse=True)
    cmap = dict(zip(rates, colors(len(rates), "plasma"), strict=True))
    for r in range(lam.shape[0]):
        a.plot(steps, lam[r], color=cmap[float(eta[r])], lw=1)
    for e in rates:
        a.axhline(2 / e, color=cmap[e], ls="--", lw=0.9, label=f"2/η, η = {g(e)}")
    a.set(xlabel="step", ylabel="sharpness", title=title)
    a.legend(fontsize=6)


@PAPER.figure("mse", "ce")
def _fig_sharpness(results: dict, folder: Path) -> list[Path]:
    """Cohen et al. 2021 Fig. 1-style: sharpness against steps, one line per run, with
    2/η dashed in the run's colour (one panel per loss)."""
    fig, ax = figure(2)
    titles = {"mse": "square loss", "ce": "logistic loss (binary cross-entropy)"}
    for a, name in zip(ax[0], ("mse", "ce"), strict=True):
        _sharpness_panel(a, results[name], titles[name])
    fig.suptitle(
        "Cohen et al. 2021: sharpness rises to 2/η and hovers (one line per run)", fontsize=8
    )
    return [save(fig, folder / "cohen2021-sharpness.png")]


@PAPER.figure("cnn")
def _fig_cnn_sharpness(results: dict, folder: Path) -> list[Path]:
    """The same for the convnet (E5, E6): sharpness against steps with 2/η dashed."""
    fig, ax = figure(1)
    ds = results["cnn"]
    try:
        k = int(json.loads(str(ds.attrs["group_config"]))["classes"])
    except (KeyError, ValueError, TypeError):
        k = 0
    what = f"one-hot square loss, {k} classes" if k > 2 else "square loss, ±1 labels"
    _sharpness_panel(ax[0][0], ds, f"convnet, {what}")
    fig.suptitle("Cohen et al. 2021: the convnet at the edge of stability", fontsize=8)
    return [save(fig, folder / "cohen2021-cnn-sharpness.png")]
