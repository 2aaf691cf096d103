"""The phase rule v2 (SPEC §3): every branch on constructed trajectories, then on real runs.

Constructed runs have 101 iterations, eval steps every 10, rate η = 1 and the GD
numerator c = 2 (so the curvature ratio ρ = λ·η/c is λ/2) and L₀ = 1 unless a
case says otherwise.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from implicit_bias import phases
from implicit_bias.config import PhaseConfig, load_config
from implicit_bias.engine import Trainer
from implicit_bias.losses import accuracy
from implicit_bias.sweep import make_plan

T = 100
STEPS = list(range(0, T + 1, 10))
DEFAULTS = PhaseConfig()
TOL = DEFAULTS.eos_tolerance


def _run(
    loss=None,
    curv=None,
    crit=0.5,
    acc=0.9,
    chance=0.5,
    spread=1.0,
    dead_units=0.0,
    diverged=False,
    source="sharpness",
    numerator=2.0,
    cfg: PhaseConfig = DEFAULTS,
):
    """Inputs and phase of one constructed run (defaults: a lazy run)."""
    t = np.arange(T + 1, dtype=np.float64)
    loss = np.exp(-t / 30) if loss is None else np.asarray(loss, dtype=np.float64)
    if curv is None and source != "none":
        curv = np.full(len(STEPS), numerator * crit)  # λ₀·η/c = crit, constant
    th = phases.Thresholds.from_configs([cfg])
    inp = phases.phase_inputs(
        loss=loss[None],
        train_acc=np.full((1, T + 1), acc),
        lr_t=np.ones((1, T + 1)),
        diverged=np.array([diverged]),
        eval_steps=STEPS,
        curvature=None if curv is None else np.asarray(curv, dtype=np.float64)[None],
        curvature_source=source,
        critical_ratio=np.array([crit]),
        chance_acc=np.array([chance]),
        output_spread=np.array([spread]),
        dead_units=np.array([dead_units]),
        th=th,
        numerator=numerator,
    )
    ph = phases.classify(inp, np.array([diverged]), th)
    assert set(inp) == set(phases.INPUT_NAMES)
    return str(ph[0]), {k: v[0] for k, v in inp.items()}


def _spike(at=3, height=2.0, end=0.05):
    """A loss that climbs to L₀·(1 + height) at step ``at``, then decays to ``end``."""
    t = np.arange(T + 1, dtype=np.float64)
    loss = np.where(t <= at, 1 + height * t / at, end + (1 + height - end) * np.exp(-(t - at) / 5))
    loss[0] = 1.0
    return loss


def _flattening(ratio_end=0.6, crit=1.5):
    """Curvature starting at crit·2/η and falling to ratio_end·2/η by step 20."""
    c = np.full(len(STEPS), 2 * ratio_end)
    c[0], c[1] = 2 * crit, 2 * (crit + ratio_end) / 2
    return c


def _sharpening(reach=1.0, at=40, crit=0.5):
    """Curvature rising from crit·2/η to reach·2/η at step ``at``, then staying."""
    return np.interp(STEPS, [0, at], [2 * crit, 2 * reach])


def _bump(at=45, height=0.05, base=None):
    """Monotone decay with a small rise above the running minimum at step ``at``."""
    t = np.arange(T + 1, dtype=np.float64)
    loss = np.exp(-t / 30) if base is None else base.copy()
    loss[at : at + 3] = loss[at - 1] + height * np.array([1.0, 0.5, 0.2])
    return loss


# ----------------------------------------------------------------- lazy
def test_lazy_run_and_its_stored_inputs():
    ph, inp = _run()
    assert ph == "lazy"
    assert inp["stability_numerator"] == 2.0 and inp["critical_ratio"] == 0.5
    assert inp["spike_step"] == -1 and inp["spike_height"] == 0.0 and inp["loss_bump"] == 0.0
    assert inp["eos_step"] == -1 and inp["eos_hover_steps"] == 0
    assert np.isnan(inp["sharpness_before"]) and inp["flatten_step"] == 0
    assert inp["max_sharpness_ratio"] == pytest.approx(0.5)
    assert inp["min_sharpness_rel"] == 1.0 and inp["max_sharpness_rel"] == 1.0
    assert inp["final_loss_ratio"] == pytest.approx(np.exp(-T / 30))
    assert inp["final_oscillation"] == 0.0


def test_lazy_needs_the_curvature_within_its_band():
    lo, hi = DEFAULTS.lazy_low, DEFAULTS.lazy_high
    inside = np.interp(STEPS, [0, T], [1.0, 1.01 * lo])  # λ₀ = 1 (crit 0.5)
    assert _run(curv=inside)[0] == "lazy"
    # fell below the band, below critical, no hover: the sharpness-reduction phase
    ph, inp = _run(curv=np.interp(STEPS, [0, T], [1.0, 0.99 * lo]))
    assert ph == "sharpness_reduction" and inp["min_sharpness_rel"] == pytest.approx(0.99 * lo)
    # rose above the band without hovering at 2/η (crit 0.2: the edge is 5 λ₀)
    rising = np.interp(STEPS, [0, T], [0.4, 0.4 * 1.01 * hi])
    ph, inp = _run(curv=rising, crit=0.2)
    assert ph == "progressive_sharpening" and inp["max_sharpness_rel"] == pytest.approx(1.01 * hi)
    assert _run(curv=np.interp(STEPS, [0, T], [0.4, 0.4 * 0.99 * hi]), crit=0.2)[0] == "lazy"
    assert _run(curv=rising, crit=0.2, cfg=PhaseConfig(lazy_high=3.0))[0] == "lazy"


# ----------------------------------------------------------------- catapult
def test_catapult_and_its_stored_inputs():
    ph, inp = _run(loss=_spike(at=3, height=2.0), curv=_flattening(0.6), crit=1.5)
    assert ph == "catapult"
    assert inp["spike_step"] == 3 and inp["spike_height"] == pytest.approx(2.0)
    assert inp["flatten_step"] == 20  # first eval step with ρ < 1 (1.05 at step 10)
    assert inp["sharpness_before"] == pytest.approx(3.0)  # eval step 0 ≤ 3
    assert inp["sharpness_after"] == pytest.approx(1.2)
    assert inp["sharpness_after_ratio"] == pytest.approx(0.6)
    assert inp["critical_ratio"] == 1.5 and inp["max_sharpness_ratio"] == pytest.approx(1.5)


def test_catapult_needs_a_rise_above_the_initial_loss():
    """A bump above the running minimum that stays below L₀ (the depth-3 case) is
    not a catapult: the curvature fell without one, sharpness reduction."""
    base = np.exp(-np.arange(T + 1) / 30)
    loss = _bump(at=4, height=0.04, base=base)  # 4 % of L₀ above the running minimum
    ph, inp = _run(loss=loss, curv=_flattening(0.6), crit=1.5)
    assert ph == "sharpness_reduction"
    assert inp["loss_bump"] == pytest.approx(0.04) and inp["spike_height"] == 0.0
    assert inp["spike_step"] == -1
    # the same shape reaching just above L₀·(1 + catapult_rise) is a catapult
    loss = _bump(at=4, height=(1 + 2 * DEFAULTS.catapult_rise) - base[3], base=base)
    assert _run(loss=loss, curv=_flattening(0.6), crit=1.5)[0] == "catapult"
    loss = _bump(at=4, height=(1 + 0.5 * DEFAULTS.catapult_rise) - base[3], base=base)
    assert _run(loss=loss, curv=_flattening(0.6), crit=1.5)[0] == "sharpness_reduction"


def test_catapult_needs_the_rise_before_the_curvature_falls_below_threshold():
    late = _bump(at=25, height=1.2)  # above L₀ at step 25; ρ < 1 from step 20 on
    ph, inp = _run(loss=late, curv=_flattening(0.6), crit=1.5)
    assert ph == "sharpness_reduction" and inp["flatten_step"] == 20
    assert inp["loss_bump"] > 1 and inp["spike_height"] == 0.0  # L_t ≤ L₀ up to step 20
    # the curvature still above threshold at step 20, 30: the rise at 25 is early
    curv = _flattening(0.6)
    curv[1:4] = 2 * 1.2
    ph, inp = _run(loss=late, curv=curv, crit=1.5)
    assert ph == "catapult" and inp["flatten_step"] == 40 and inp["spike_step"] == 25


def test_catapult_ends_below_the_threshold_within_the_tolerance():
    ok, _ = _run(loss=_spike(), curv=_flattening(1 + TOL / 2), crit=1.5)
    assert ok == "catapult"  # at 2/η within the tolerance
    ph, inp = _run(loss=_spike(), curv=_flattening(1 + 2 * TOL), crit=1.5)
    assert ph == "not_converged" and inp["sharpness_after_ratio"] > 1 + TOL


# ----------------------------------------------------------------- not converged
def test_not_converged_loss_not_below_l0_by_the_margin():
    m = DEFAULTS.converged_margin
    ph, inp = _run(loss=_spike(end=1.2), curv=_flattening(0.6), crit=1.5)
    assert ph == "not_converged" and inp["final_loss_ratio"] > 1
    t = np.arange(T + 1, dtype=np.float64)
    slow = 1 - (1 - m) * t / T * 0.0 - 0.99 * m * t / T  # ends at 1 − 0.99 m
    assert _run(loss=slow)[0] == "not_converged"  # a net that has not learned yet
    assert _run(loss=1 - 1.01 * m * t / T)[0] == "lazy"
    assert _run(loss=slow, cfg=PhaseConfig(converged_margin=0.05))[0] == "lazy"


def test_not_converged_loss_still_oscillating_at_the_end():
    t = np.arange(T + 1, dtype=np.float64)
    for amp, want in ((0.05, "not_converged"), (0.5 * DEFAULTS.oscillation_tol, "lazy")):
        loss = np.exp(-t / 30)
        loss[-10::2] += amp  # a period-2 oscillation over the last 10 % of the steps
        ph, inp = _run(loss=loss)
        assert ph == want, amp
        assert inp["final_oscillation"] == pytest.approx(amp, abs=2e-3)  # less the decay
    # an oscillation earlier on does not count (window: the last 10 %)
    loss = np.exp(-t / 30)
    loss[50:80:2] += 0.05
    assert _run(loss=loss)[0] == "lazy"


def test_not_converged_final_curvature_above_the_threshold():
    """Issue 16: a depth-1 model at 2.3 critical units ends with λη/2 = 1.25."""
    curv = np.full(len(STEPS), 2 * 1.25)
    curv[0] = 2 * 2.3
    ph, inp = _run(loss=_spike(height=0.42, end=0.5), curv=curv, crit=2.3)
    assert ph == "not_converged" and inp["sharpness_after_ratio"] == pytest.approx(1.25)
    # below critical too: no hover can excuse an end above the threshold
    assert _run(curv=_sharpening(1.2, at=40), crit=0.5)[0] == "not_converged"


# ----------------------------------------------------------------- sharpness reduction
def test_above_critical_without_a_rise_is_sharpness_reduction():
    # separable-like: the curvature falls before it can destabilise, the loss falls monotonically
    ph, inp = _run(curv=_flattening(0.05, crit=3.0), crit=3.0)
    assert ph == "sharpness_reduction" and inp["spike_step"] == -1 and inp["spike_height"] == 0


# ----------------------------------------------------------------- edge of stability
def test_edge_of_stability_hovers_at_the_threshold():
    ph, inp = _run(loss=_bump(at=45), curv=_sharpening(1.0, at=40), crit=0.5)
    assert ph == "edge_of_stability"
    assert inp["eos_step"] == 40 and inp["eos_hover_steps"] == 7  # 40, 50, …, 100
    assert inp["eos_rise"] == pytest.approx(0.05)
    assert inp["max_sharpness_ratio"] == pytest.approx(1.0)
    # just inside the tolerance band counts, just outside does not
    ph, _ = _run(loss=_bump(at=45), curv=_sharpening(1 - TOL / 2, at=40), crit=0.5)
    assert ph == "edge_of_stability"
    ph, _ = _run(loss=_bump(at=45), curv=_sharpening(1 - 2 * TOL, at=40), crit=0.5)
    assert ph == "lazy"  # 1.9 λ₀: inside the lazy band


def test_edge_of_stability_needs_eos_hover_consecutive_eval_steps():
    h = DEFAULTS.eos_hover
    curv = np.full(len(STEPS), 2 * 0.4)
    curv[4 : 4 + h] = 2.0  # at the edge at h eval steps (40, 50, …), then back down
    assert _run(loss=_bump(at=45), curv=curv, crit=0.4)[0] == "edge_of_stability"
    curv[4 + h - 1] = 2 * 0.4  # one eval step short: passing through is not hovering
    ph, inp = _run(loss=_bump(at=45), curv=curv, crit=0.4)
    assert ph == "progressive_sharpening" and inp["eos_hover_steps"] == h - 1
    curv[4 + h - 1] = 2.0
    curv[5] = 2 * 0.4  # a gap breaks the stretch
    assert _run(loss=_bump(at=45), curv=curv, crit=0.4)[1]["eos_hover_steps"] == h - 2


def test_edge_of_stability_needs_a_non_monotone_loss_there():
    curv = _sharpening(1.0, at=40, crit=0.4)
    ph, inp = _run(curv=curv, crit=0.4)  # monotone loss
    assert ph == "progressive_sharpening" and inp["eos_step"] == 40 and inp["eos_rise"] == 0.0
    # a rise before the curvature got there does not count
    ph, _ = _run(loss=_bump(at=12, height=0.05), curv=curv, crit=0.4)
    assert ph == "progressive_sharpening"
    # a rise smaller than eos_rise does not count
    ph, _ = _run(loss=_bump(at=45, height=1e-4), curv=curv, crit=0.4)
    assert ph == "progressive_sharpening"


def test_a_spike_below_critical_is_never_catapult():
    # below critical, curvature flat at 0.5·2/η: a spike that does not settle is not converged
    ph, _ = _run(loss=_spike(height=5.0), crit=0.5)
    assert ph == "lazy"  # it did settle (final loss 0.05): only the rate decides
    # the same spike with the curvature at 2/η is the edge of stability, not a catapult
    curv = np.full(len(STEPS), 2.0)
    curv[0] = 2 * 0.99
    ph, _ = _run(loss=_spike(height=5.0), curv=curv, crit=0.99)
    assert ph == "edge_of_stability"


# ----------------------------------------------------------------- dead
def test_dead_means_constant_outputs_never_accuracy():
    assert _run(dead_units=1.0)[0] == "dead"
    assert _run(dead_units=0.99)[0] == "lazy"  # one unit alive: not dead by this test
    assert _run(spread=0.0)[0] == "dead"
    assert _run(spread=1e-3)[0] == "lazy"
    # accuracy at (or below) chance alone never makes a net dead
    assert _run(acc=0.5, chance=0.5)[0] == "lazy"
    assert _run(acc=0.3, chance=0.58)[0] == "lazy"
    # a net that has not learned yet is not_converged, not dead
    assert _run(loss=np.full(T + 1, 1.0), acc=0.5)[0] == "not_converged"


def test_accuracy_counts_a_tie_as_half_right():
    f = torch.tensor([[0.0, 2.0, -1.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([1.0, 1.0, 1.0, -1.0], dtype=torch.float64)
    assert accuracy(f, y).item() == pytest.approx((0.5 + 1 + 0 + 0.5) / 4)
    assert accuracy(torch.zeros(3, 5, dtype=torch.float64), torch.ones(5)).tolist() == [0.5] * 3


# ----------------------------------------------------------------- order
def test_order_of_precedence():
    """diverged > dead > not_converged > catapult > sharpness_reduction >
    edge_of_stability > progressive_sharpening > lazy."""
    cat = {"loss": _spike(), "curv": _flattening(0.6), "crit": 1.5}
    assert _run(**cat)[0] == "catapult"
    assert _run(**cat, dead_units=1.0)[0] == "dead"
    assert _run(**cat, acc=0.5)[0] == "catapult"
    unsettled = _spike(end=0.95)
    assert _run(loss=unsettled, curv=cat["curv"], crit=1.5)[0] == "not_converged"
    assert _run(loss=unsettled, curv=cat["curv"], crit=1.5, spread=0.0)[0] == "dead"
    diverging = _spike(height=1e7)
    diverging[10:] = np.nan
    assert _run(loss=diverging, curv=cat["curv"], crit=1.5, diverged=True, dead_units=1.0)[0] == (
        "diverged"
    )
    eos = {"loss": _bump(at=45), "curv": _sharpening(1.0, at=40, crit=0.4), "crit": 0.4}
    assert _run(**eos)[0] == "edge_of_stability"
    assert _run(**eos, spread=0.0)[0] == "dead"
    assert phases.PRECEDENCE == (
        "diverged",
        "dead",
        "not_converged",
        "catapult",
        "sharpness_reduction",
        "edge_of_stability",
        "progressive_sharpening",
        "lazy",
    )
    assert set(phases.PHASES) == set(phases.PRECEDENCE)


def test_diverged_runs_have_no_final_numbers():
    loss = _spike(height=1e7)
    loss[10:] = np.nan
    ph, inp = _run(loss=loss, crit=3.0, diverged=True)
    assert ph == "diverged"
    for k in ("final_train_acc", "output_spread", "dead_units", "final_loss_ratio"):
        assert np.isnan(inp[k])
    assert np.isnan(inp["final_oscillation"])


def test_a_failed_measurement_is_skipped_not_a_phase():
    """NaN curvature at some eval steps (a failed eigen-solve) leaves the label to the rest."""
    curv = _flattening(0.6)
    curv[[2, 5]] = np.nan
    ph, inp = _run(loss=_spike(), curv=curv, crit=1.5)
    assert ph == "catapult" and np.isfinite(inp["max_sharpness_ratio"])
    curv = np.full(len(STEPS), np.nan)
    ph, inp = _run(curv=curv, crit=np.nan)  # every measurement failed: rate unknown
    assert ph == "lazy" and np.isnan(inp["min_sharpness_rel"])


def test_without_a_curvature_trace():
    """Curvature-free: catapult needs a known critical_ratio > 1; never edge of stability."""
    ph, inp = _run(loss=_spike(), crit=1.5, source="none")
    assert ph == "catapult" and inp["curvature_source"] == "none"
    assert np.isnan(inp["max_sharpness_ratio"]) and np.isnan(inp["sharpness_after"])
    assert _run(crit=1.5, source="none")[0] == "sharpness_reduction"
    assert _run(loss=_spike(), crit=np.nan, source="none")[0] == "lazy"
    assert _run(loss=_spike(), crit=0.5, source="none")[0] == "lazy"
    assert _run(loss=_bump(at=45), crit=0.99, source="none")[0] == "lazy"
    assert _run(loss=_spike(end=1.2), crit=1.5, source="none")[0] == "not_converged"


def test_the_threshold_numerator_sets_critical():
    """Another optimizer supplies only c: ρ = λ·η/c (heavy ball β = 0.5: c = 3)."""
    curv = np.full(len(STEPS), 3.0)  # λη = 3: above 2/η, at the edge of 3/η
    ph, inp = _run(loss=_bump(at=45), curv=curv, crit=1.0, numerator=3.0)
    assert inp["max_sharpness_ratio"] == pytest.approx(1.0) and inp["stability_numerator"] == 3
    assert ph == "edge_of_stability"
    assert _run(loss=_bump(at=45), curv=curv, crit=1.5, numerator=2.0)[0] == "not_converged"
    cfg = load_config({"data": {"kind": "overlap"}})
    assert phases.stability_numerator(cfg.train) == 2.0


def test_thresholds_are_per_run():
    th = phases.Thresholds.from_configs([PhaseConfig(), PhaseConfig(catapult_rise=5.0)])
    loss = np.stack([_spike(height=2.0)] * 2)
    inp = phases.phase_inputs(
        loss=loss,
        train_acc=np.full((2, T + 1), 0.9),
        lr_t=np.ones((2, T + 1)),
        diverged=np.zeros(2, dtype=bool),
        eval_steps=STEPS,
        curvature=np.stack([_flattening(0.6)] * 2),
        curvature_source="sharpness",
        critical_ratio=np.array([1.5, 1.5]),
        chance_acc=np.full(2, 0.5),
        output_spread=np.ones(2),
        dead_units=np.zeros(2),
        th=th,
    )
    ph = phases.classify(inp, np.zeros(2, dtype=bool), th)
    assert list(ph) == ["catapult", "sharpness_reduction"]


# ----------------------------------------------------------------- real runs
def _train(cfg: dict):
    return Trainer(make_plan(load_config(cfg)).runs).train().per_run


def _relu(rates, steps):
    return {
        "name": "relu-phases",
        "data": {
            "kind": "sklearn",
            "name": "digits",
            "n_train": 48,
            "n_test": 10,
            "normalize": "unit",
        },
        "model": {"depth": 2, "width": 128, "activation": "relu", "parametrization": "ntk"},
        "train": {"loss": "mse", "steps": steps, "lr_units": "critical", "dtype": "float64"},
        "metrics": {"every": 20, "sharpness": {"iters": 20}},
        "sweep": {"train.lr": rates},
    }


def _not_dead_if_alive(pr) -> None:
    """Issue 16: no alive, learning net is dead; dead means constant outputs."""
    dead = pr["phase"] == "dead"
    const = (pr["dead_units"] >= 1) | (pr["output_spread"] <= DEFAULTS.dead_spread)
    assert np.array_equal(dead, const & (pr["phase"] != "diverged"))


def test_relu_sharpens_below_critical_and_large_rates_kill_it():
    """Issue 10: a ReLU net at 0.5 critical units sharpens to 2/η within 40 steps
    (reaching it only at the last eval step: no hover yet, so progressive
    sharpening, not edge of stability); at 6 units every unit dies."""
    pr = _train(_relu([0.5, 6.0], 40))
    assert pr["critical_ratio"][0] == pytest.approx(0.5, rel=1e-9)
    assert pr["phase"][0] == "progressive_sharpening"
    assert pr["max_sharpness_ratio"][0] >= 1 - DEFAULTS.eos_tolerance
    assert pr["eos_hover_steps"][0] < DEFAULTS.eos_hover
    assert pr["max_sharpness_rel"][0] > DEFAULTS.lazy_high and pr["final_train_acc"][0] > 0.9
    # 6 critical units: every hidden unit is off on every training point, f ≡ 0
    assert pr["phase"][1] == "dead"
    assert pr["dead_units"][1] == 1.0 and pr["output_spread"][1] == 0.0
    assert pr["final_train_acc"][1] == pytest.approx(0.5)  # f = 0 everywhere: a tie
    assert pr["spike_step"][1] >= 0  # it did spike: the old rule called it a catapult
    assert np.isfinite(pr["final_loss"][1])  # not diverged
    _not_dead_if_alive(pr)


@pytest.mark.slow
def test_relu_below_critical_hovers_at_the_edge_of_stability():
    """Cohen et al. 2021: given 120 steps (eval every 5) the same net hovers at 2/η
    with a non-monotone loss; at 0.9 units it is chaotic and ends above 2/η."""
    cfg = _relu([0.5, 0.9], 120)
    cfg["metrics"]["every"] = 5
    pr = _train(cfg)
    assert list(pr["phase"]) == ["edge_of_stability", "not_converged"]
    assert pr["eos_hover_steps"][0] >= DEFAULTS.eos_hover and pr["eos_rise"][0] > 0
    assert pr["sharpness_after_ratio"][1] > 1 + DEFAULTS.eos_tolerance
    _not_dead_if_alive(pr)


def _logistic(data: dict, depth: int, rates: list[float]) -> dict:
    return {
        "name": "logistic-phases",
        "data": {**data, "n_train": 48, "n_test": 10, "d": 12},
        "model": {"depth": depth, "width": 64, "activation": "linear", "parametrization": "ntk"},
        "train": {"loss": "logistic", "steps": 100, "lr_units": "critical", "dtype": "float64"},
        "metrics": {"every": 10, "sharpness": {"iters": 20}},
        "sweep": {"train.lr": rates},
    }


def test_logistic_runs_not_converged_separable_and_deep():
    """Issue 16 on real runs: a depth-1 model at 2.3 critical units does not converge
    (λη/2 ends above 1); separable data far above critical is not lazy (its curvature
    vanishes: sharpness reduction); a depth-3 net is a catapult exactly when its loss
    rose above L₀ before the curvature fell below 2/η."""
    overlap = {"kind": "overlap", "shift": 1.0}
    pr = _train(_logistic(overlap, 1, [2.3]))
    assert pr["phase"][0] == "not_converged"
    assert pr["sharpness_after_ratio"][0] > 1 + DEFAULTS.eos_tolerance
    pr = _train(_logistic({"kind": "degenerate", "separable": True}, 2, [4.0, 20.0]))
    assert list(pr["phase"]) == ["sharpness_reduction"] * 2
    assert np.all(pr["spike_step"] == -1) and np.all(pr["min_sharpness_rel"] < 1e-2)
    pr = _train(_logistic(overlap, 3, [1.6, 2.3]))
    rose = pr["spike_height"] > DEFAULTS.catapult_rise
    assert list(rose) == [False, True]  # 1.6: a 5 % bump that stays below L₀
    assert pr["loss_bump"][0] > DEFAULTS.catapult_rise
    assert list(pr["phase"]) == ["sharpness_reduction", "catapult"]
    assert np.all(pr["final_loss_ratio"] < 1 - DEFAULTS.converged_margin)


def _linear(rates, **metrics):
    return {
        "name": "linear-phases",
        "data": {"kind": "overlap", "shift": 2.0, "n_train": 48, "n_test": 10, "d": 12},
        "model": {"depth": 2, "width": 128, "activation": "linear", "parametrization": "ntk"},
        "train": {"loss": "mse", "steps": 100, "lr_units": "critical", "dtype": "float64"},
        "metrics": {"every": 10, "sharpness": {"iters": 20}, **metrics},
        "sweep": {"train.lr": rates},
    }


def test_linear_net_lazy_catapult_diverged():
    """Lewkowycz et al. 2020: lazy below 2/λ₀, catapult in (2/λ₀, 4/λ₀), diverged above."""
    pr = _train(_linear([0.5, 0.9, 1.3, 1.7, 4.0]))
    assert list(pr["phase"]) == ["lazy", "lazy", "catapult", "catapult", "diverged"]
    cat = pr["phase"] == "catapult"
    assert np.all(pr["sharpness_after_ratio"][cat] < 1)
    assert np.all(pr["sharpness_after"][cat] < pr["sharpness_before"][cat])
    assert np.all(pr["dead_units"][:4] == 0) and np.all(pr["final_train_acc"][:4] > 0.8)


def test_ntk_stands_in_for_the_sharpness_under_mse():
    pr = _train(_linear([0.5, 1.5], sharpness=None, ntk=True))
    assert list(pr["curvature_source"]) == ["ntk", "ntk"]
    assert list(pr["phase"]) == ["lazy", "catapult"]
    assert np.all(np.isfinite(pr["max_sharpness_ratio"]))
