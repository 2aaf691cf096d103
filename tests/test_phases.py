"""The phase rule (SPEC §3): every branch on constructed trajectories, then on real runs.

Constructed runs have 101 iterations, eval steps every 10, rate η = 1 (so the
curvature ratio λ·η/2 is λ/2) and L₀ = 1 unless a case says otherwise.
"""

from __future__ import annotations

import numpy as np
import pytest

from implicit_bias import phases
from implicit_bias.config import PhaseConfig, load_config
from implicit_bias.engine import Trainer
from implicit_bias.sweep import make_plan

T = 100
STEPS = list(range(0, T + 1, 10))
DEFAULTS = PhaseConfig()


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
    cfg: PhaseConfig = DEFAULTS,
):
    """Inputs and phase of one constructed run (defaults: a lazy run)."""
    t = np.arange(T + 1, dtype=np.float64)
    loss = np.exp(-t / 30) if loss is None else np.asarray(loss, dtype=np.float64)
    if curv is None and source != "none":
        curv = np.full(len(STEPS), 2 * crit)  # λ₀·η/2 = crit, constant
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
    )
    final = np.where([diverged], np.nan, loss[-1:])
    ph = phases.classify(inp, np.array([diverged]), loss[:1], final, th)
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


# ----------------------------------------------------------------- branches
def test_lazy_run():
    ph, inp = _run()
    assert ph == "lazy"
    assert inp["spike_step"] == -1 and inp["spike_height"] == 0.0
    assert inp["eos_step"] == -1 and np.isnan(inp["sharpness_before"])
    assert inp["max_sharpness_ratio"] == pytest.approx(0.5)


def test_catapult_and_its_stored_inputs():
    ph, inp = _run(loss=_spike(at=3, height=2.0), curv=_flattening(0.6), crit=1.5)
    assert ph == "catapult"
    assert inp["spike_step"] == 3 and inp["spike_height"] == pytest.approx(2.0)
    assert inp["sharpness_before"] == pytest.approx(3.0)  # eval step 0 ≤ 3
    assert inp["sharpness_after"] == pytest.approx(1.2)
    assert inp["sharpness_after_ratio"] == pytest.approx(0.6)
    assert inp["critical_ratio"] == 1.5 and inp["max_sharpness_ratio"] == pytest.approx(1.5)


def test_catapult_needs_the_curvature_below_two_over_eta_at_the_end():
    tol = DEFAULTS.eos_tolerance
    ok, _ = _run(loss=_spike(), curv=_flattening(1 + tol / 2), crit=1.5)
    assert ok == "catapult"  # at 2/η within the tolerance
    ph, _ = _run(loss=_spike(), curv=_flattening(1 + 2 * tol), crit=1.5)
    assert ph == "lazy"  # above critical at init, so not edge of stability either


def test_catapult_needs_convergence():
    ph, _ = _run(loss=_spike(end=1.2), curv=_flattening(0.6), crit=1.5)
    assert ph == "lazy"


def test_a_spike_below_critical_is_never_catapult():
    # below critical, curvature flat at 0.5·2/η: the spike is not at the edge of stability
    ph, _ = _run(loss=_spike(height=5.0), crit=0.5)
    assert ph == "lazy"
    # the same spike with the curvature at 2/η is the edge of stability, not a catapult
    curv = np.full(len(STEPS), 1.0)
    curv[0] = 2 * 0.99
    ph, _ = _run(loss=_spike(height=5.0), curv=curv, crit=0.99)
    assert ph == "edge_of_stability"


def test_above_critical_without_a_spike_is_lazy():
    # separable-like: the curvature falls before it can destabilise, the loss falls monotonically
    ph, inp = _run(curv=_flattening(0.05, crit=3.0), crit=3.0)
    assert ph == "lazy" and inp["spike_step"] == -1


def test_spike_threshold():
    loss = _spike(height=0.5 * DEFAULTS.catapult_rise)
    ph, inp = _run(loss=loss, curv=_flattening(0.6), crit=1.5)
    assert ph == "lazy" and inp["spike_step"] == -1
    assert inp["spike_height"] == pytest.approx(0.5 * DEFAULTS.catapult_rise)
    ph, _ = _run(loss=loss, curv=_flattening(0.6), crit=1.5, cfg=PhaseConfig(catapult_rise=1e-3))
    assert ph == "catapult"


def _sharpening(reach=1.0, at=40, crit=0.5):
    """Curvature rising from crit·2/η to reach·2/η at step ``at``, then staying."""
    c = np.interp(STEPS, [0, at], [2 * crit, 2 * reach])
    return c


def _bump(at=45, height=0.05):
    """Monotone decay with a small rise above the running minimum at step ``at``."""
    t = np.arange(T + 1, dtype=np.float64)
    loss = np.exp(-t / 30)
    loss[at : at + 3] = loss[at - 1] + height * np.array([1.0, 0.5, 0.2])
    return loss


def test_edge_of_stability():
    ph, inp = _run(loss=_bump(at=45), curv=_sharpening(1.0, at=40), crit=0.5)
    assert ph == "edge_of_stability"
    assert inp["eos_step"] == 40 and inp["eos_rise"] == pytest.approx(0.05)
    assert inp["max_sharpness_ratio"] == pytest.approx(1.0)
    # just inside the tolerance band counts, just outside does not
    tol = DEFAULTS.eos_tolerance
    ph, _ = _run(loss=_bump(at=45), curv=_sharpening(1 - tol / 2, at=40), crit=0.5)
    assert ph == "edge_of_stability"
    ph, _ = _run(loss=_bump(at=45), curv=_sharpening(1 - 2 * tol, at=40), crit=0.5)
    assert ph == "lazy"


def test_edge_of_stability_needs_a_non_monotone_loss_there():
    ph, inp = _run(curv=_sharpening(1.0, at=40), crit=0.5)  # monotone loss
    assert ph == "lazy" and inp["eos_step"] == 40 and inp["eos_rise"] == 0.0
    # a rise before the curvature got there does not count (from the eval step before on)
    ph, _ = _run(loss=_bump(at=12, height=0.05), curv=_sharpening(1.0, at=40), crit=0.5)
    assert ph == "lazy"
    # a rise smaller than eos_rise does not count
    ph, _ = _run(loss=_bump(at=45, height=1e-4), curv=_sharpening(1.0, at=40), crit=0.5)
    assert ph == "lazy"


def test_dead_outputs_constant_units_off_or_accuracy_at_chance():
    assert _run(dead_units=1.0)[0] == "dead"
    assert _run(dead_units=0.99)[0] == "lazy"  # one unit alive: not dead by this test
    assert _run(spread=0.0)[0] == "dead"
    assert _run(spread=1e-3)[0] == "lazy"
    # a converged run (loss far below L₀) whose accuracy is at chance is dead
    assert _run(acc=0.52, chance=0.5)[0] == "dead"
    assert _run(acc=0.6, chance=0.58)[0] == "dead"  # chance is the majority fraction
    assert _run(acc=0.6, chance=0.5)[0] == "lazy"
    assert _run(acc=0.6, chance=0.5, cfg=PhaseConfig(dead_acc_margin=0.2))[0] == "dead"


def test_order_of_precedence():
    """diverged > dead > catapult > edge_of_stability > lazy."""
    cat = {"loss": _spike(), "curv": _flattening(0.6), "crit": 1.5}
    assert _run(**cat)[0] == "catapult"
    assert _run(**cat, dead_units=1.0)[0] == "dead"
    assert _run(**cat, acc=0.5)[0] == "dead"
    diverging = _spike(height=1e7)
    diverging[10:] = np.nan
    assert _run(loss=diverging, curv=cat["curv"], crit=1.5, diverged=True, dead_units=1.0)[0] == (
        "diverged"
    )
    eos = {"loss": _bump(at=45), "curv": _sharpening(1.0, at=40), "crit": 0.5}
    assert _run(**eos)[0] == "edge_of_stability"
    assert _run(**eos, spread=0.0)[0] == "dead"
    assert phases.PRECEDENCE == ("diverged", "dead", "catapult", "edge_of_stability", "lazy")
    assert set(phases.PHASES) == set(phases.PRECEDENCE)


def test_diverged_runs_have_no_final_numbers():
    loss = _spike(height=1e7)
    loss[10:] = np.nan
    ph, inp = _run(loss=loss, crit=3.0, diverged=True)
    assert ph == "diverged"
    for k in ("final_train_acc", "output_spread", "dead_units"):
        assert np.isnan(inp[k])


def test_without_a_curvature_trace():
    """Curvature-free: catapult needs a known critical_ratio > 1; never edge of stability."""
    ph, inp = _run(loss=_spike(), crit=1.5, source="none")
    assert ph == "catapult" and inp["curvature_source"] == "none"
    assert np.isnan(inp["max_sharpness_ratio"]) and np.isnan(inp["sharpness_after"])
    assert _run(loss=_spike(), crit=np.nan, source="none")[0] == "lazy"
    assert _run(loss=_spike(), crit=0.5, source="none")[0] == "lazy"
    assert _run(loss=_bump(at=45), crit=0.99, source="none")[0] == "lazy"


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
    ph = phases.classify(inp, np.zeros(2, dtype=bool), loss[:, 0], loss[:, -1], th)
    assert list(ph) == ["catapult", "lazy"]


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


def test_relu_below_critical_is_edge_of_stability_and_large_rates_kill_it():
    """Issue 10: a ReLU net at 0.5 critical units sharpens to 2/η and its loss turns
    non-monotone (edge of stability, not a catapult); at 6 units every unit dies."""
    pr = _train(_relu([0.5, 6.0], 40))
    assert pr["critical_ratio"][0] == pytest.approx(0.5, rel=1e-9)
    assert pr["phase"][0] == "edge_of_stability"
    assert pr["max_sharpness_ratio"][0] >= 1 - DEFAULTS.eos_tolerance
    assert pr["eos_rise"][0] > DEFAULTS.eos_rise and pr["final_train_acc"][0] > 0.9
    # 6 critical units: every hidden unit is off on every training point, f ≡ 0
    assert pr["phase"][1] == "dead"
    assert pr["dead_units"][1] == 1.0 and pr["output_spread"][1] == 0.0
    assert pr["final_train_acc"][1] <= pr["chance_acc"][1]
    assert pr["spike_step"][1] >= 0  # it did spike: the old rule called it a catapult
    assert np.isfinite(pr["final_loss"][1])  # not diverged


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
