"""Paper reproductions: ``implicit-bias reproduce liu2023|frei2023|lewkowycz2020|all``.

A *recipe* is a list of experiments (ordinary configs, run by the ordinary
sweep engine into ``<out>/<paper>/<experiment>/``, each with its report) and a
function that reads their results and states the paper's claims as rows of a
claims table: the claim, the criterion it is judged by, the numbers measured
and PASS / FAIL. Nothing is assumed: a row is PASS only when the criterion
holds on the measured numbers, FAIL when it does not, and ``n/a`` when the
numbers needed are missing (e.g. every run diverged).

``quick`` versions take about 1.5 minutes for all three papers on a 2-core
CPU (measured: 96 s, 67 runs); the full versions (177 runs) took 23 min
there, most of it the width-4096 nets of lewkowycz2020.

Papers:
    liu2023: Liu, Huang & Xu 2023 (arXiv 2011.12547), large learning rates and
        data separability, deep linear nets, logistic loss.
    frei2023: Frei, Vardi, Bartlett, Srebro & Hu 2023 (arXiv 2210.07082), low
        rank and linear boundaries of leaky-ReLU nets on nearly-orthogonal data.
    lewkowycz2020: Lewkowycz, Bahri, Dyer, Sohl-Dickstein & Gur-Ari 2020
        (arXiv 2003.02218), the catapult phase with squared loss.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._errors import UserInputError

PAPERS = ("liu2023", "frei2023", "lewkowycz2020")
STATUSES = ("PASS", "FAIL", "n/a")


@dataclass(frozen=True)
class Claim:
    """One row of the claims table.

    Attributes:
        paper: recipe key (``liu2023``).
        key: short id (``L1``).
        claim: what the paper says, in one sentence.
        criterion: how it is judged on the measured numbers.
        measured: the numbers, as text.
        status: ``PASS``, ``FAIL`` or ``n/a``.
        experiment: the experiment folder the numbers come from.
    """

    paper: str
    key: str
    claim: str
    criterion: str
    measured: str
    status: str
    experiment: str


def _status(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


@dataclass(frozen=True)
class Recipe:
    """A paper's reproduction.

    Attributes:
        key: ``liu2023`` etc.
        title: authors, year, arXiv id and topic.
        experiments: ``quick -> {name: config mapping}``; every config's sweep
            varies only per-run keys, so each experiment is one group of runs.
        claims: ``{name: Dataset} -> [Claim]``, reading only stored results.
    """

    key: str
    title: str
    experiments: Callable[[bool], dict[str, dict[str, Any]]]
    claims: Callable[[dict[str, Any]], list[Claim]]


# ------------------------------------------------------------------ helpers
def _g(x: float) -> str:
    return "nan" if not np.isfinite(x) else f"{x:.3g}"


def _gl(xs: Iterable[float]) -> str:
    return "[" + ", ".join(_g(float(x)) for x in xs) + "]"


class _Runs:
    """Per-run lookups in one experiment's Dataset (one group of runs)."""

    def __init__(self, ds, name: str):
        self.ds, self.name = ds, name

    def coord(self, key: str) -> np.ndarray:
        return np.asarray(self.ds[key].values)

    def scalar(self, var: str) -> np.ndarray:
        return np.asarray(self.ds[var].values, dtype=float)

    def at(self, var: str, step: int) -> np.ndarray:
        return np.asarray(self.ds[var].sel(step=step).values, dtype=float)

    def phases(self) -> np.ndarray:
        return np.asarray(self.ds["phase"].values).astype(str)

    @property
    def steps(self) -> np.ndarray:
        return np.asarray(self.ds["step"].values)


def _rates(r: _Runs) -> np.ndarray:
    return r.coord("train.lr").astype(float)


def _phase_by_rate(r: _Runs) -> dict[float, list[str]]:
    out: dict[float, list[str]] = {}
    for lr, ph in zip(_rates(r), r.phases(), strict=True):
        out.setdefault(float(lr), []).append(str(ph))
    return dict(sorted(out.items()))


def _phase_text(r: _Runs) -> str:
    def short(phs: list[str]) -> str:
        return "/".join(sorted(set(phs))) if len(set(phs)) > 1 else phs[0]

    return ", ".join(f"{lr:g}: {short(p)}" for lr, p in _phase_by_rate(r).items())


def _limits(r: _Runs) -> tuple[float, float]:
    """(largest rate with a converging run, smallest rate with a diverging run); NaN if none."""
    rates, diverged = _rates(r), r.phases() == "diverged"
    conv, div = rates[~diverged], rates[diverged]
    return (
        float(conv.max()) if conv.size else math.nan,
        float(div.min()) if div.size else math.nan,
    )


def _sharpness_at_loss(r: _Runs, i: int, loss: float) -> float:
    """Run i's sharpness at the first eval step where its loss is ≤ ``loss``."""
    tr = r.ds["loss"].values[i]
    steps = r.steps
    hit = steps[tr[steps] <= loss * (1 + 1e-3)]
    t = hit[0] if hit.size else steps[-1]
    return float(r.ds["sharpness"].values[i][list(steps).index(t)])


# ------------------------------------------------------------------ liu2023
LIU_RATES = [0.5, 0.8, 1.2, 1.6, 2.3, 3.0, 4.0, 6.0]
LIU_DEGENERATE_P = 0.75  # fraction of points whose sign agrees with the label
LIU_DEGENERATE_WIDTH = 4096
#: predicted catapult onset there, in critical units: 1/(4p(1−p))
LIU_ONSET = 1 / (4 * LIU_DEGENERATE_P * (1 - LIU_DEGENERATE_P))


def _liu_experiments(quick: bool) -> dict[str, dict[str, Any]]:
    steps = 400 if quick else 2000
    seeds = [0] if quick else [0, 1, 2]
    model = {"depth": 2, "width": 256, "activation": "linear", "parametrization": "ntk"}
    train = {"loss": "logistic", "steps": steps, "lr_units": "critical", "dtype": "float64"}
    metrics = {"every": 20 if quick else 50, "sharpness": {"iters": 20}}
    data = {"n_train": 200, "n_test": 1000, "d": 50}
    # the recursion's η²g²f/m term makes divergence a finite-width effect: wide here
    wide = {**model, "width": LIU_DEGENERATE_WIDTH}
    return {
        "nonseparable": {
            "name": "liu2023-nonseparable",
            "data": {"kind": "overlap", "shift": 1.0, **data},
            "model": model,
            "train": train,
            "metrics": metrics,
            "sweep": {"train.lr": LIU_RATES, "seed": seeds},
        },
        "separable_degenerate": {
            "name": "liu2023-separable-degenerate",
            "data": {"kind": "degenerate", "separable": True, **data},
            "model": model,
            "train": train,
            "metrics": metrics,
            "sweep": {"train.lr": [0.5, 1.6, 2.3, 4.0, 8.0, 20.0], "seed": seeds},
        },
        "nonseparable_degenerate": {
            "name": "liu2023-nonseparable-degenerate",
            "data": {
                "kind": "degenerate",
                "separable": False,
                "label_noise": 1 - LIU_DEGENERATE_P,
                **data,
            },
            "model": wide,
            "train": train,
            "metrics": metrics,
            "sweep": {
                "train.lr": [
                    round(LIU_ONSET * f, 4) for f in (0.4, 0.75, 0.9, 1.1, 1.5, 3.0, 8.0, 15.0)
                ],
                "seed": seeds,
            },
        },
        # The paper's model class and the non-separable data of L1–L4. Note: the
        # logistic minimiser of a linear predictor on non-separable data is
        # unique, so once both runs converge their test losses coincide.
        "annealing": {
            "name": "liu2023-annealing",
            "data": {"kind": "overlap", "shift": 1.0, **data},
            "model": model,
            "train": {**train, "schedule": {"kind": "step", "at": [steps // 2], "factor": 1.0}},
            "metrics": metrics,
            "sweep": {
                "train.lr": [0.5, 2.3],
                "train.schedule.factor": [1.0, round(0.5 / 2.3, 6)],
                "seed": seeds,
            },
        },
    }


def _liu_claims(res: dict[str, Any]) -> list[Claim]:
    P = "liu2023"
    out: list[Claim] = []

    # -- non-separable, non-degenerate data: the three regimes
    r = _Runs(res["nonseparable"], "nonseparable")
    rates, ph = _rates(r), r.phases()
    s0, s_end = r.scalar("sharpness_init"), r.scalar("final_sharpness")
    eta = r.scalar("lr")
    lazy = np.flatnonzero(rates < 1)
    ok = bool(lazy.size) and all(
        ph[i] == "lazy" and 0.6 * s0[i] < s_end[i] <= 1.05 * s0[i] for i in lazy
    )
    out.append(
        Claim(
            P,
            "L1",
            "Below the critical rate 2/λ₀ training is lazy: the loss falls "
            "monotonically and the curvature stays near its initial value.",
            "every run with η < 2/λ₀ is 'lazy' and ends with 0.6 λ₀ < λ_end ≤ 1.05 λ₀",
            f"phases {_phase_text(r)}; λ_end/λ₀ at rate < 1: {_gl(s_end[lazy] / s0[lazy])}",
            _status(ok if lazy.size else None),
            r.name,
        )
    )
    cat = np.flatnonzero(ph == "catapult")
    window = sorted({float(x) for x in rates[cat]})
    out.append(
        Claim(
            P,
            "L2",
            "On non-separable data a catapult window exists above the critical rate: "
            "the loss first rises, then GD converges.",
            "some rate in (1, 4) critical units is 'catapult'",
            f"catapult at rates {window or 'none'} (critical units)",
            _status(any(1 < x < 4 for x in window)),
            r.name,
        )
    )
    ref = lazy[np.argmin(rates[lazy])] if lazy.size else None
    flat = []
    for i in cat:
        at_loss = (
            _sharpness_at_loss(r, int(ref), float(r.scalar("final_loss")[i]))
            if ref is not None
            else math.nan
        )
        flat.append((rates[i], s_end[i] * eta[i] / 2, s_end[i] / at_loss))
    ok_flat = None if not flat else all(a < 1 and b < 0.75 for _, a, b in flat)
    out.append(
        Claim(
            P,
            "L3",
            "The catapult lands in a flatter minimum: final curvature below 2/η and "
            "below the lazy run's at the same loss.",
            "every catapult run: λ_end·η/2 < 1 and λ_end < 0.75 × λ_lazy(same loss)",
            "rate: (λ_end·η/2, λ_end/λ_lazy) "
            + ", ".join(f"{a:g}: ({_g(b)}, {_g(c)})" for a, b, c in flat),
            _status(ok_flat),
            r.name,
        )
    )
    div = sorted({float(x) for x in rates[ph == "diverged"]})
    top_l4, first_l4 = _limits(r)
    # a threshold: no run converges at or above the smallest diverging rate
    ok_div = first_l4 <= 6 and not top_l4 >= first_l4
    out.append(
        Claim(
            P,
            "L4",
            "On non-degenerate overlapping data large rates diverge (≈ 4× critical).",
            "the smallest diverging rate is ≤ 6 critical units, and every run at or above "
            "it diverges",
            f"diverged at {div or 'none'}; smallest {_g(first_l4)}",
            _status(ok_div),
            r.name,
        )
    )

    # -- separable degenerate data: no catapult, no divergence, curvature → 0
    r = _Runs(res["separable_degenerate"], "separable_degenerate")
    ph, s0, s_end = r.phases(), r.scalar("sharpness_init"), r.scalar("final_sharpness")
    out.append(
        Claim(
            P,
            "L5",
            "Separable degenerate data never catapults and does not diverge.",
            "every run, up to 20 critical units, is 'lazy'",
            f"phases {_phase_text(r)}",
            _status(bool((ph == "lazy").all())),
            r.name,
        )
    )
    ratio = s_end / s0
    out.append(
        Claim(
            P,
            "L6",
            "On separable data the loss Hessian vanishes as the margin grows.",
            "every run ends with λ_end < 0.05 λ₀",
            f"λ_end/λ₀ {_gl(ratio)} at rates {_gl(_rates(r))}",
            _status(bool(np.all(ratio < 0.05))),
            r.name,
        )
    )

    # -- non-separable degenerate data: onset at 1/(4p(1-p)) critical units
    r = _Runs(res["nonseparable_degenerate"], "nonseparable_degenerate")
    p, onset = LIU_DEGENERATE_P, LIU_ONSET
    rates, ph = _rates(r), r.phases()
    below, above = rates <= 0.9 * onset, (rates >= 1.1 * onset)
    ok_on = bool((ph[below] == "lazy").all() and (ph[above] != "lazy").all())
    out.append(
        Claim(
            P,
            "L7",
            "Degenerate non-separable data with a fraction p of agreeing labels has its "
            "critical rate at 2/(λ₀·p(1−p)), i.e. 1/(4p(1−p)) critical units "
            f"(= {onset:.3g} for p = {p}).",
            "runs at ≤ 0.9× that rate are 'lazy', runs at ≥ 1.1× are not",
            f"phases {_phase_text(r)}",
            _status(ok_on),
            r.name,
        )
    )
    top, first_div = _limits(r)
    ok8 = top >= 2.5 * first_l4  # False when either is NaN
    out.append(
        Claim(
            P,
            "L8",
            "There the logistic gradient is bounded and the catapult window is far wider "
            "than on non-degenerate data (none diverged up to ηλ₀ ≈ 200 in the spec's runs).",
            f"the largest converging rate (width {LIU_DEGENERATE_WIDTH}) is ≥ 2.5× the "
            "smallest diverging rate of L4",
            f"largest converging {_g(top)} critical units (ηλ₀ ≈ {8 * top:.0f}, as "
            f"sharpness₀ ≈ λ₀/4); first diverging here {_g(first_div)} "
            f"(ηλ₀ ≈ {8 * first_div:.0f}); L4's first diverging {_g(first_l4)}",
            _status(ok8),
            r.name,
        )
    )
    eta, s_end = r.scalar("lr"), r.scalar("final_sharpness")
    ok_edge = (ph == "diverged") | (s_end * eta / 2 <= 1.05)
    out.append(
        Claim(
            P,
            "L9",
            "GD ends at the edge of stability or below it: final curvature ≤ 2/η "
            "(λ∞ ≤ 2/(η p(1−p)) in the paper's units).",
            "every non-diverged run: λ_end·η/2 ≤ 1.05",
            f"λ_end·η/2 {_gl(s_end * eta / 2)} at rates {_gl(rates)}",
            _status(bool(ok_edge.all())),
            r.name,
        )
    )

    # -- annealing
    r = _Runs(res["annealing"], "annealing")
    fac = r.coord("train.schedule.factor").astype(float)
    rates = _rates(r)
    ann = np.flatnonzero((rates == 2.3) & (fac < 1))
    small = np.flatnonzero((rates == 0.5) & (fac == 1))
    acc, tl = r.scalar("final_test_acc"), r.scalar("final_test_loss")
    if ann.size and small.size:
        a_acc, s_acc = float(np.mean(acc[ann])), float(np.mean(acc[small]))
        a_l, s_l = float(np.mean(tl[ann])), float(np.mean(tl[small]))
        ok_ann: bool | None = a_l < 0.99 * s_l
        meas = (
            f"test loss {a_l:.5g} (annealed) vs {s_l:.5g} (small); "
            f"test acc {a_acc:.4g} vs {s_acc:.4g}"
        )
    else:
        ok_ann, meas = None, "runs missing"
    out.append(
        Claim(
            P,
            "L10",
            "Annealing (a large rate first, then a small one) generalises better than a "
            "small rate throughout.",
            "rate 2.3 → 0.5 critical units at half time ends with a test loss at least 1 % "
            "lower than a constant 0.5",
            meas,
            _status(ok_ann),
            r.name,
        )
    )
    return out


# ------------------------------------------------------------------ frei2023
FREI_SCALES = [1e-6, 1e-4, 1e-3, 1e-2, 0.05, 0.2]


def _frei_experiments(quick: bool) -> dict[str, dict[str, Any]]:
    n, d = (30, 4000) if quick else (100, 10000)
    return {
        "init_scale": {
            "name": "frei2023-init-scale",
            "data": {
                "kind": "gaussian_mixture",
                "n_train": n,
                "n_test": 500,
                "d": d,
                "mean_norm": 8.0 if quick else 10.0,
            },
            "model": {
                "depth": 2,
                "width": 100,
                "activation": "smooth_leaky_relu",
                "leak": 0.1,
                "smoothing": 1.0,
                "parametrization": "direct",
                "last_layer": "fixed_sign",
            },
            "train": {"loss": "logistic", "steps": 300 if quick else 1000, "lr": 0.01},
            "metrics": {
                "every": 50,
                "at": [1],
                "sharpness": False,
                "stable_rank": True,
                "margins": True,
                "kkt": True,
            },
            "sweep": {"model.init_scale": FREI_SCALES, "seed": [0] if quick else [0, 1, 2]},
        }
    }


def _frei_claims(res: dict[str, Any]) -> list[Claim]:
    P = "frei2023"
    r = _Runs(res["init_scale"], "init_scale")
    ds = r.ds
    out: list[Claim] = []
    sep = bool(np.asarray(ds["data_separable"].values).all())
    near = float(np.min(ds["data_near_orthogonality"].values))
    out.append(
        Claim(
            P,
            "F0",
            "The setting: nearly-orthogonal, linearly separable training data "
            "(‖x_i‖² ≥ C·n·max_k |⟨x_i, x_k⟩|).",
            "the data is separable (C is reported, not judged: the theorems need C above "
            "a large constant, which these small sizes do not reach)",
            f"separable {sep}; C = {_g(near)}",
            _status(sep),
            r.name,
        )
    )
    scales = r.coord("model.init_scale").astype(float)
    small = np.flatnonzero(scales == scales.min())
    large = np.flatnonzero(scales == scales.max())
    sr = ds["stable_rank_W1"].values  # (run, step)
    steps = list(r.steps)
    sr1 = sr[small, steps.index(1)]
    out.append(
        Claim(
            P,
            "F1",
            "With a small initialisation one GD step already drops the stable rank "
            "‖W‖²_F/‖W‖²₂ of the first layer to O(1).",
            f"init {scales.min():g}: stable rank at step 1 ≤ 1.5 (at step 0: random, large)",
            f"step 0 {_gl(sr[small, 0])}, step 1 {_gl(sr1)}",
            _status(bool(np.all(sr1 <= 1.5))),
            r.name,
        )
    )
    later = sr[small][:, steps.index(1) :]
    out.append(
        Claim(
            P,
            "F2",
            "… and it stays small for the rest of training.",
            f"init {scales.min():g}: stable rank ≤ 1.5 at every eval step ≥ 1",
            f"max over steps ≥ 1: {_gl(later.max(1))}; final {_gl(r.scalar('final_stable_rank_W1')[small])}",
            _status(bool(np.all(later <= 1.5))),
            r.name,
        )
    )
    big_ratio = sr[large].min(1) / sr[large, 0]
    out.append(
        Claim(
            P,
            "F3",
            "With a large initialisation the stable rank stays large.",
            f"init {scales.max():g}: stable rank ≥ 0.5× its initial value at every step",
            f"initial {_gl(sr[large, 0])}, minimum {_gl(sr[large].min(1))}",
            _status(bool(np.all(big_ratio >= 0.5))),
            r.name,
        )
    )
    final_sr = r.scalar("final_stable_rank_W1")
    uniq = sorted(set(scales.tolist()))
    med = [float(np.median(final_sr[scales == s])) for s in uniq]
    out.append(
        Claim(
            P,
            "F4",
            "Smaller initialisation, smaller stable rank.",
            "the median final stable rank grows with the init scale: each ≥ 0.98× the one "
            "below (it saturates at the random matrix's value)",
            "init scale: stable rank "
            + ", ".join(f"{s:g}: {_g(m)}" for s, m in zip(uniq, med, strict=True)),
            _status(bool(np.all(np.asarray(med[1:]) >= 0.98 * np.asarray(med[:-1])))),
            r.name,
        )
    )
    agree = r.scalar("boundary_agreement")[small]
    cos = r.scalar("svm_cosine")[small]
    out.append(
        Claim(
            P,
            "F5",
            "The trained network has a linear decision boundary: sign f(x) = sign⟨v, x⟩ "
            "with v = Wᵀa.",
            f"init {scales.min():g}: test-set agreement of sign f and sign⟨v, x⟩ ≥ 0.99",
            f"agreement {_gl(agree)}",
            _status(bool(np.all(agree >= 0.99))),
            r.name,
        )
    )
    out.append(
        Claim(
            P,
            "F6",
            "v is an approximately max-margin linear predictor.",
            f"init {scales.min():g}: cosine between v and the hard-margin SVM direction ≥ 0.9",
            f"cosine {_gl(cos)}; margin ratio {_gl(r.scalar('margin_ratio')[small])}",
            _status(bool(np.all(cos >= 0.9))),
            r.name,
        )
    )
    kkt = ds["kkt_stationarity"].values[small][:, steps.index(1) :]
    ok_kkt = bool(np.all(kkt[:, -1] < kkt[:, 0]) and np.all(np.diff(kkt, axis=1) < 0))
    out.append(
        Claim(
            P,
            "F7",
            "GD heads in direction towards a KKT point of the max-margin problem "
            "(of the homogenization, the leaky-ReLU net: Cai et al. 2025).",
            f"init {scales.min():g}: KKT stationarity falls at every eval step from step 1 on",
            "stationarity " + "; ".join(_gl(k) for k in kkt),
            _status(ok_kkt),
            r.name,
        )
    )
    return out


# ------------------------------------------------------------------ lewkowycz2020
LEWK_RATES = [0.5, 0.9, 1.3, 1.7, 1.9, 2.2, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]


def _lewk_experiments(quick: bool) -> dict[str, dict[str, Any]]:
    # The linear net on two overlapping Gaussian classes; the ReLU net on bundled
    # digits (0–4 vs 5–9), whose window reaches far beyond 4/λ₀ as in the paper.
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
    rates = {"linear": LEWK_RATES, "relu": [*LEWK_RATES, 10.0, 12.0, 16.0]}

    def cfg(activation: str) -> dict[str, Any]:
        return {
            "name": f"lewkowycz2020-{activation}",
            "data": data[activation],
            "model": {
                "depth": 2,
                "width": 1024 if quick else 4096,
                "activation": activation,
                "parametrization": "ntk",
            },
            "train": {
                "loss": "mse",
                "steps": 300 if quick else 1000,
                "lr_units": "critical",
                "dtype": "float64",
            },
            "metrics": {"every": 20, "sharpness": {"iters": 20}, "ntk": True},
            "sweep": {"train.lr": rates[activation], "seed": [0] if quick else [0, 1, 2]},
        }

    return {"linear": cfg("linear"), "relu": cfg("relu")}


def _lewk_claims(res: dict[str, Any]) -> list[Claim]:
    P = "lewkowycz2020"
    out: list[Claim] = []
    r = _Runs(res["linear"], "linear")
    rates, ph = _rates(r), r.phases()
    eta = r.scalar("lr")
    ntk0, ntk_end = r.at("ntk_max", 0), r.scalar("final_ntk_max")
    lazy = rates < 1
    out.append(
        Claim(
            P,
            "W1",
            "Lazy phase η < 2/λ₀: the NTK barely moves.",
            "every run below 2/λ₀ is 'lazy' with |λ_end/λ₀ − 1| < 0.1 (λ = top NTK eigenvalue)",
            f"phases {_phase_text(r)}; NTK λ_end/λ₀ {_gl(ntk_end[lazy] / ntk0[lazy])}; "
            "rates are in units of 2/sharpness₀, and sharpness₀/λ₀ = "
            f"{_g(float(np.median(r.scalar('sharpness_init') / ntk0)))}",
            _status(
                bool(
                    (ph[lazy] == "lazy").all()
                    and np.all(np.abs(ntk_end[lazy] / ntk0[lazy] - 1) < 0.1)
                )
            ),
            r.name,
        )
    )
    win = (rates > 1.05) & (rates < 1.95)
    ok = bool((ph[win] == "catapult").all() and np.all(ntk_end[win] * eta[win] / 2 < 1))
    out.append(
        Claim(
            P,
            "W2",
            "Catapult phase 2/λ₀ < η < 4/λ₀ (linear net): the loss spikes, the NTK falls "
            "and training converges with λ_end < 2/η.",
            "every run strictly inside the window is 'catapult' with λ_end·η/2 < 1",
            f"rates {_gl(rates[win])}: phases {[str(x) for x in ph[win]]}, λ_end·η/2 {_gl(ntk_end[win] * eta[win] / 2)}",
            _status(ok if win.any() else None),
            r.name,
        )
    )
    div = ph == "diverged"
    ok = bool(div[rates > 2.1].all() and not div[rates < 1.95].any())
    out.append(
        Claim(
            P,
            "W3",
            "Above 4/λ₀ the linear net diverges.",
            "every rate > 2.1 critical units (η > 4.2/λ₀) diverges, none < 1.95 does",
            f"diverged at {sorted({float(x) for x in rates[div]})}",
            _status(ok),
            r.name,
        )
    )
    r = _Runs(res["relu"], "relu")
    top = _limits(r)[0]
    out.append(
        Claim(
            P,
            "W4",
            "For ReLU nets the catapult window reaches further (≈ 12/λ₀ in the paper).",
            "the largest converging rate is > 4/λ₀ (2 critical units)",
            f"phases {_phase_text(r)}; largest converging rate {_g(top)} critical units "
            f"(η = {_g(2 * top)}/λ₀)",
            _status(top > 2),  # False when nothing converged
            r.name,
        )
    )
    return out


RECIPES: dict[str, Recipe] = {
    "liu2023": Recipe(
        "liu2023",
        "Liu, Huang & Xu 2023 (arXiv 2011.12547): large learning rates and data separability",
        _liu_experiments,
        _liu_claims,
    ),
    "frei2023": Recipe(
        "frei2023",
        "Frei et al. 2023 (arXiv 2210.07082): low rank and linear boundaries from small init",
        _frei_experiments,
        _frei_claims,
    ),
    "lewkowycz2020": Recipe(
        "lewkowycz2020",
        "Lewkowycz et al. 2020 (arXiv 2003.02218): the catapult phase, squared loss",
        _lewk_experiments,
        _lewk_claims,
    ),
}


# ------------------------------------------------------------------ running
def papers_for(paper: str) -> list[str]:
    if paper == "all":
        return list(PAPERS)
    if paper not in PAPERS:
        raise UserInputError(
            f"reproduce: unknown paper '{paper}' (choose from {', '.join((*PAPERS, 'all'))})"
        )
    return [paper]


def default_out(quick: bool) -> Path:
    return Path("results") / ("reproduce-quick" if quick else "reproduce")


def _first_group(tree):
    # every recipe experiment sweeps only per-run keys: one group of runs
    return tree[next(iter(tree.children))].to_dataset()


def open_experiment(out: Path | str, paper: str, name: str):
    """The Dataset of one finished experiment of a reproduction folder."""
    from .store import open_results

    return _first_group(open_results(Path(out) / paper / name))


def run_recipe(
    key: str,
    out: Path,
    quick: bool,
    progress: bool = False,
    overwrite: bool = False,
    echo: Callable[[str], None] | None = None,
    reports: bool = True,
) -> tuple[list[Claim], list[Path]]:
    """Run (or resume) every experiment of one recipe; return its claims and figures.

    ``reports=False`` skips the per-experiment figures and tables (``report DIR``
    makes them later).
    """
    from .report import write_report
    from .sweep import run_sweep

    recipe = RECIPES[key]
    results, figures = {}, []
    for name, cfg in recipe.experiments(quick).items():
        folder = out / key / name
        if echo:
            echo(f"{key}/{name} …")
        tree = run_sweep(cfg, folder, overwrite=overwrite, progress=progress)
        results[name] = _first_group(tree)
        if reports:
            figures += [p for p in write_report(folder, tree) if p.suffix == ".png"]
    return recipe.claims(results), figures


def claims_markdown(claims: list[Claim], title: str) -> str:
    from .report import markdown_table

    header = ["paper", "id", "claim", "criterion", "measured", "status"]
    rows = [[c.paper, c.key, c.claim, c.criterion, c.measured, c.status] for c in claims]
    n_pass = sum(c.status == "PASS" for c in claims)
    return (
        f"# {title}\n\n{n_pass} of {len(claims)} claims PASS (each judged on numbers measured "
        "in this folder; FAIL and n/a rows are results too).\n\n"
        + markdown_table(header, rows)
        + "\n"
    )


def claims_text(claims: list[Claim], width: int = 100) -> str:
    """The claims as plain text for a terminal: status, id, claim, then the numbers."""
    import textwrap

    lines = []
    for c in claims:
        head = textwrap.wrap(
            f"{c.status:4s}  {c.key:4s} {c.claim}", width, subsequent_indent=" " * 11
        )
        lines += head
        lines += textwrap.wrap(
            f"measured: {c.measured}", width, initial_indent=" " * 11, subsequent_indent=" " * 11
        )
    n_pass = sum(c.status == "PASS" for c in claims)
    lines.append(f"{n_pass} of {len(claims)} claims PASS")
    return "\n".join(lines)


def write_claims(claims: list[Claim], out: Path, title: str) -> list[Path]:
    from .report import write_csv

    out.mkdir(parents=True, exist_ok=True)
    md = out / "claims.md"
    md.write_text(claims_markdown(claims, title))
    js = out / "claims.json"
    js.write_text(json.dumps([asdict(c) for c in claims], indent=1, ensure_ascii=False) + "\n")
    cs = write_csv(
        out / "claims.csv",
        list(Claim.__dataclass_fields__),
        [list(asdict(c).values()) for c in claims],
    )
    return [md, js, cs]


def reproduce(
    paper: str,
    quick: bool = False,
    out: Path | str | None = None,
    progress: bool = False,
    overwrite: bool = False,
    echo: Callable[[str], None] | None = None,
    reports: bool = True,
) -> tuple[list[Claim], list[Path]]:
    """Run the recipes of ``paper`` (or ``all``) into ``out``; write the claims table.

    Returns:
        (claims, files): every claim row, and the claims tables and figures written.
    """
    keys = papers_for(paper)
    out = Path(out) if out is not None else default_out(quick)
    claims: list[Claim] = []
    figures: list[Path] = []
    for key in keys:
        c, f = run_recipe(
            key, out, quick, progress=progress, overwrite=overwrite, echo=echo, reports=reports
        )
        write_claims(c, out / key, RECIPES[key].title)
        claims += c
        figures += f
    title = "Claims: " + ", ".join(keys) + (" (quick)" if quick else "")
    return claims, [*write_claims(claims, out, title), *figures]
