"""The batched update rules equal ``torch.optim`` run per run; their thresholds hold."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _helpers import validate_error_lines

from implicit_bias import optimizers
from implicit_bias.losses import mean_loss
from implicit_bias.models import ModelSpec, forward, init_params
from implicit_bias.models import mlp as batched

SPEC = ModelSpec(d=4, depth=3, width=6, activation="relu", parametrization="ntk")
STEPS = 6
# per run: a schedule multiplier table (a warmup-like ramp, then a drop)
MULT = np.array([0.3, 0.6, 1.0, 1.0, 0.5, 0.5, 0.5])
#: (name, per-run hyperparameters over R = 3 runs, the torch.optim factory)
CASES = [
    ("gd", {}, lambda p, h: torch.optim.SGD(p, lr=1.0)),
    (
        "momentum",
        {"momentum": [0.0, 0.5, 0.9]},
        lambda p, h: torch.optim.SGD(p, lr=1.0, momentum=h["momentum"]),
    ),
    (
        "nesterov",
        {"momentum": [0.3, 0.5, 0.9]},
        lambda p, h: torch.optim.SGD(p, lr=1.0, momentum=h["momentum"], nesterov=True),
    ),
    (
        "rmsprop",
        {"beta2": [0.9, 0.99, 0.5], "eps": [1e-8, 1e-3, 0.1]},
        lambda p, h: torch.optim.RMSprop(p, lr=1.0, alpha=h["beta2"], eps=h["eps"]),
    ),
    (
        "adam",
        {"beta1": [0.9, 0.0, 0.5], "beta2": [0.999, 0.9, 0.99], "eps": [1e-8, 1e-3, 0.1]},
        lambda p, h: torch.optim.Adam(p, lr=1.0, betas=(h["beta1"], h["beta2"]), eps=h["eps"]),
    ),
]


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(10, SPEC.d, generator=g, dtype=torch.float64)
    y = torch.sign(torch.randn(10, generator=g, dtype=torch.float64))
    return X, y


def _per_run(h: dict, r: int) -> dict:
    return {k: v[r] for k, v in h.items()}


def _hyper(R: int, h: dict) -> optimizers.Hyper:
    return optimizers.hyper(R, **h)


def _batched_run(name, h, lrs, X, y, loss="mse", bias_correction=True):
    R = len(lrs)
    params = tuple(
        torch.stack(ps)
        for ps in zip(*[init_params(SPEC, s, 1.0, torch.float64) for s in range(R)], strict=True)
    )
    rule = optimizers.rule(name)
    hp = _hyper(R, {**h, "bias_correction": bias_correction})
    state = rule.init(params)
    lr = torch.tensor(lrs, dtype=torch.float64)
    for t in range(STEPS):
        _, _, grads = batched.value_and_grad(params, X, y, SPEC, None, loss)
        upd, state = rule.update(grads, state, lr * MULT[t], hp)
        params = tuple(p + u for p, u in zip(params, upd, strict=True))
    return params, state, hp


def _torch_run(factory, h, lr, seed, X, y, loss="mse"):
    params = [p.clone().requires_grad_(True) for p in init_params(SPEC, seed, 1.0, torch.float64)]
    opt = factory(params, h)
    for t in range(STEPS):
        for group in opt.param_groups:
            group["lr"] = lr * float(MULT[t])
        opt.zero_grad()
        mean_loss(forward(tuple(params), X, SPEC), y, loss).backward()
        opt.step()
    return [p.detach() for p in params]


@pytest.mark.parametrize(("name", "h", "factory"), CASES, ids=[c[0] for c in CASES])
def test_rule_equals_torch_optim_per_run(name, h, factory):
    X, y = _data()
    lrs = [0.05, 0.2, 0.5]
    params, _, _ = _batched_run(name, h, lrs, X, y)
    for r, lr in enumerate(lrs):
        ref = _torch_run(factory, _per_run(h, r), lr, r, X, y)
        for p, q in zip(params, ref, strict=True):
            torch.testing.assert_close(p[r], q, rtol=1e-12, atol=1e-12)


def test_adam_without_bias_correction_equals_the_plain_formula():
    X, y = _data(1)
    b1, b2, eps, lr = 0.8, 0.95, 1e-4, 0.1
    params, _, _ = _batched_run(
        "adam", {"beta1": b1, "beta2": b2, "eps": eps}, [lr], X, y, bias_correction=False
    )
    w = [p.clone().requires_grad_(True) for p in init_params(SPEC, 0, 1.0, torch.float64)]
    m = [torch.zeros_like(p) for p in w]
    s = [torch.zeros_like(p) for p in w]
    for t in range(STEPS):
        grads = torch.autograd.grad(mean_loss(forward(tuple(w), X, SPEC), y, "mse"), w)
        with torch.no_grad():
            for i, g in enumerate(grads):
                m[i] = b1 * m[i] + (1 - b1) * g
                s[i] = b2 * s[i] + (1 - b2) * g * g
                w[i] -= lr * MULT[t] * m[i] / (s[i].sqrt() + eps)
    for p, q in zip(params, w, strict=True):
        torch.testing.assert_close(p[0], q.detach(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", optimizers.NAMES)
def test_batched_equals_single_run_chunks(name):
    X, y = _data(2)
    h = {"momentum": [0.5, 0.9], "beta1": [0.9, 0.5], "beta2": [0.99, 0.9], "eps": [1e-8, 1e-2]}
    lrs = [0.1, 0.3]
    both, _, _ = _batched_run(name, h, lrs, X, y, loss="logistic")
    # run r alone: a chunk of one (its own seed r, see _batched_run's init)
    for r in range(2):
        params = tuple(x.unsqueeze(0) for x in init_params(SPEC, r, 1.0, torch.float64))
        rule = optimizers.rule(name)
        hp = _hyper(1, {k: [v[r]] for k, v in h.items()})
        st = rule.init(params)
        for t in range(STEPS):
            _, _, grads = batched.value_and_grad(params, X, y, SPEC, None, "logistic")
            upd, st = rule.update(grads, st, torch.tensor([lrs[r] * MULT[t]]), hp)
            params = tuple(p + u for p, u in zip(params, upd, strict=True))
        for p, q in zip(both, params, strict=True):
            torch.testing.assert_close(p[r], q[0], rtol=1e-13, atol=1e-14)


def test_select_keeps_the_state_of_runs_that_may_not_step():
    params = (torch.ones(3, 2, 2),)
    rule = optimizers.rule("adam")
    hp = optimizers.hyper(3)
    st0 = rule.init(params)
    _, st1 = rule.update((torch.ones(3, 2, 2),), st0, torch.ones(3), hp)
    mask = torch.tensor([True, False, True])
    st = optimizers.select(mask, st1, st0)
    assert st.t.tolist() == [1, 0, 1]
    assert st.mu is not None and st.nu is not None
    assert (st.mu[0][1] == 0).all() and (st.mu[0][0] != 0).all()


# ------------------------------------------------------------------ thresholds
W0 = 1e-200


def _quadratic_growth(name: str, h: dict, a: np.ndarray, steps: int = 2000) -> np.ndarray:
    """log₁₀ of (max_t |w_t|, |w_T|) / w₀ on the scalar quadratic ½w² (λ = 1) at η = a per run.

    w₀ = 1e-200 keeps every run in the linear regime (√s ≪ ε = 1 for the adaptive
    rules, so P ≈ (1 − β₁ᵗ)·ε: the frozen-preconditioner regime where the
    threshold is stated) even after growing by 1e30 (float64 reaches 1e-308).
    """
    R = len(a)
    params = (torch.full((R, 1, 1), W0, dtype=torch.float64),)
    rule = optimizers.rule(name)
    hp = optimizers.hyper(R, **h)
    st = rule.init(params)
    lr = torch.as_tensor(a, dtype=torch.float64)
    top = torch.zeros(R, dtype=torch.float64)
    for _ in range(steps):
        upd, st = rule.update(params, st, lr, hp)  # ∇(½w²) = w
        params = (params[0] + upd[0],)
        top = torch.maximum(top, params[0].abs().flatten())
    return np.log10(np.stack([top.numpy(), params[0].abs().flatten().numpy()])) - math.log10(W0)


THRESHOLD_CASES = {  # per rule: hyperparameter settings, one run pair each
    "gd": [{}],
    "momentum": [{"momentum": 0.9}, {"momentum": 0.5}],
    "nesterov": [{"momentum": 0.9}, {"momentum": 0.3}],
    "rmsprop": [{"beta2": 0.99, "eps": 1.0}],
    "adam": [
        {"beta1": 0.9, "beta2": 0.999, "eps": 1.0, "bias_correction": True},
        {"beta1": 0.0, "beta2": 0.999, "eps": 1.0, "bias_correction": True},
        {"beta1": 0.9, "beta2": 0.999, "eps": 1.0, "bias_correction": False},
    ],
}


@pytest.mark.parametrize("name", list(THRESHOLD_CASES))
def test_threshold_separates_stable_from_unstable_on_a_quadratic(name):
    cases = THRESHOLD_CASES[name]
    # runs 2i, 2i + 1: case i at 0.98 and 1.02 × its threshold, all in one batch
    h = {k: [c[k] for c in cases for _ in (0, 1)] for k in cases[0]}
    hp = optimizers.hyper(2 * len(cases), **h)
    c = optimizers.threshold_numerator(name, hp).numpy()
    growth = _quadratic_growth(name, h, c * np.tile([0.98, 1.02], len(cases)))
    top, end = growth
    # just below: back under w₀ at the end (a start-up transient, e.g. Adam's
    # bias correction, lifts it by up to ~1e16 for a while); just above: a growth
    # by more than 1e30
    assert (end[0::2] < 0).all() and (top[0::2] < 20).all(), (name, cases, growth)
    assert (top[1::2] > 30).all(), (name, cases, growth)


def test_phase_rule_numerator_equals_the_rule_s():
    from implicit_bias import phases
    from implicit_bias.config import TrainConfig

    for name, keys in [
        ("gd", {}),
        ("momentum", {"momentum": 0.7}),
        ("nesterov", {"momentum": 0.3}),
        ("rmsprop", {"beta2": 0.9}),
        ("adam", {"beta1": 0.8}),
    ]:
        train = TrainConfig(optimizer=name, **keys)
        hp = optimizers.hyper(1, **train.optimizer_hyper())
        want = float(optimizers.threshold_numerator(name, hp)[0])
        assert phases.stability_numerator(train) == pytest.approx(want, rel=1e-15), name


def test_threshold_numerators_match_the_papers():
    hp = optimizers.hyper(1, momentum=0.9, beta1=0.9)
    num = {n: float(optimizers.threshold_numerator(n, hp)[0]) for n in optimizers.NAMES}
    assert num["gd"] == 2 and num["rmsprop"] == 2
    assert num["momentum"] == pytest.approx(3.8)
    assert num["nesterov"] == pytest.approx(3.8 / 2.8)
    assert num["adam"] == pytest.approx(38.0)
    assert math.isfinite(num["adam"])


# ------------------------------------------------------------------ the engine
ENGINE_BASE = {
    "data": {"kind": "overlap", "n_train": 16, "n_test": 4, "d": 4, "seed": 3},
    "model": {"depth": 2, "width": 5, "activation": "relu", "parametrization": "ntk"},
    "metrics": {"every": 4, "sharpness": False},
}
TORCH = {
    "momentum": lambda p, h: torch.optim.SGD(p, lr=1.0, momentum=h["momentum"]),
    "nesterov": lambda p, h: torch.optim.SGD(p, lr=1.0, momentum=h["momentum"], nesterov=True),
    "rmsprop": lambda p, h: torch.optim.RMSprop(p, lr=1.0, alpha=h["beta2"], eps=h["eps"]),
    "adam": lambda p, h: torch.optim.Adam(p, lr=1.0, betas=(h["beta1"], h["beta2"]), eps=h["eps"]),
}
ENGINE_CASES = [
    ("momentum", {"train.momentum": [0.5, 0.9]}, {"schedule": {"kind": "warmup", "steps": 4}}),
    ("nesterov", {"train.momentum": [0.3, 0.9]}, {"batch_size": 4}),
    ("rmsprop", {"train.eps": [1e-8, 1e-2]}, {"schedule": {"kind": "cosine"}}),
    (
        "adam",
        {"train.beta1": [0.0, 0.9]},
        {"batch_size": 8, "schedule": {"kind": "step", "at": [5], "factor": 0.3}},
    ),
]


def _engine(optimizer: str, sweep: dict, train: dict, steps: int = 10, **sections):
    from implicit_bias.config import load_config
    from implicit_bias.engine import Trainer
    from implicit_bias.sweep import make_plan

    raw = {k: dict(v) for k, v in ENGINE_BASE.items()}
    raw["train"] = {"loss": "mse", "steps": steps, "lr": 0.05, "dtype": "float64"}
    raw["train"].update(optimizer=optimizer, **train)
    for k, v in sections.items():
        raw[k] = {**raw.get(k, {}), **v}
    cfg = load_config({**raw, "sweep": {"seed": [0, 1], **sweep}})
    plan = make_plan(cfg)
    return plan.runs, Trainer(plan.runs).train()


def _torch_engine_run(run, lr_t: np.ndarray):
    """One run of the engine's config, written with torch.optim and autograd."""
    from implicit_bias.engine import minibatch_order

    cfg, data = run.config, run.data
    X = torch.as_tensor(data.X_train, dtype=torch.float64)
    y = torch.as_tensor(data.y_train, dtype=torch.float64)
    spec = ModelSpec.from_config(cfg.model, X.shape[1])
    params = [
        p.clone().requires_grad_(True)
        for p in init_params(spec, cfg.seed, cfg.model.init_scale, torch.float64)
    ]
    opt = TORCH[cfg.train.optimizer](params, cfg.train.optimizer_hyper())
    n, bs = X.shape[0], cfg.train.batch_size or X.shape[0]
    for t in range(cfg.train.steps):
        idx = torch.arange(n)
        if bs < n:
            epoch, pos = divmod(t, n // bs)
            idx = minibatch_order(cfg.seed, n, epoch)[pos * bs : (pos + 1) * bs]
        for group in opt.param_groups:
            group["lr"] = float(lr_t[t])
        opt.zero_grad()
        mean_loss(forward(tuple(params), X[idx], spec), y[idx], "mse").backward()
        opt.step()
    return params, opt


@pytest.mark.parametrize(("optimizer", "sweep", "train"), ENGINE_CASES, ids=lambda c: str(c)[:30])
def test_engine_equals_torch_optim_per_run(optimizer, sweep, train):
    runs, res = _engine(optimizer, sweep, train)
    assert len(runs) == 4
    for i, run in enumerate(runs):
        ref, _ = _torch_engine_run(run, res.per_iteration["lr_t"][i])
        for k, w in enumerate(ref):
            np.testing.assert_allclose(
                res.weights[f"final_W{k + 1}"][i], w.detach().numpy(), rtol=1e-12, atol=1e-12
            )
    c = res.per_run["stability_numerator"]
    np.testing.assert_allclose(res.per_run["stability_threshold"], c / res.per_run["lr"])


def _dense_hessian(run, params) -> torch.Tensor:
    X = torch.as_tensor(run.data.X_train, dtype=torch.float64)
    y = torch.as_tensor(run.data.y_train, dtype=torch.float64)
    spec = ModelSpec.from_config(run.config.model, X.shape[1])
    shapes = [p.shape for p in params]
    sizes = [p.numel() for p in params]

    def loss(flat):
        ps = tuple(c.reshape(s) for c, s in zip(flat.split(sizes), shapes, strict=True))
        return mean_loss(forward(ps, X, spec), y, "mse")

    flat = torch.cat([p.detach().flatten() for p in params])
    return torch.autograd.functional.hessian(loss, flat)


def test_preconditioned_sharpness_equals_dense_reference():
    """Adam's λ₁(P^{-1/2}HP^{-1/2}) at the last eval step against a dense eigensolve,
    with P built from torch.optim.Adam's own state (v2 Eq. 2 of 2207.14484)."""
    sweep = {"train.beta1": [0.5, 0.9]}
    runs, res = _engine(
        "adam", sweep, {}, steps=8, metrics={"sharpness": {"iters": 40, "tol": 1e-10}}
    )
    assert res.eval_steps[-1] == 8
    for i, run in enumerate(runs):
        params, opt = _torch_engine_run(run, res.per_iteration["lr_t"][i])
        b1, b2 = opt.param_groups[0]["betas"]
        eps = opt.param_groups[0]["eps"]
        P = []
        for p in params:
            st = opt.state[p]
            t = float(st["step"])
            P.append((1 - b1**t) * ((st["exp_avg_sq"] / (1 - b2**t)).sqrt() + eps).flatten())
        d = torch.cat(P).rsqrt()
        H = _dense_hessian(run, params)
        ref = torch.linalg.eigvalsh(d[:, None] * H * d[None, :])[-1].item()
        got = res.per_step["preconditioned_sharpness"][i, -1]
        assert got == pytest.approx(ref, rel=1e-8)
        assert res.per_step["preconditioned_sharpness_converged"][i, -1]
        # and the raw sharpness beside it
        raw = torch.linalg.eigvalsh(H)[-1].item()
        assert res.per_step["sharpness"][i, -1] == pytest.approx(raw, rel=1e-8)


def test_preconditioned_operator_equals_dense_on_random_matrices():
    from implicit_bias import curvature

    g = torch.Generator().manual_seed(5)
    R, n = 3, 12
    A = torch.randn(R, n, n, generator=g, dtype=torch.float64)
    A = A + A.transpose(1, 2)
    P = torch.rand(R, n, generator=g, dtype=torch.float64) + 0.1
    op = curvature.preconditioned_operator(lambda v: (A @ v.unsqueeze(-1)).squeeze(-1), P)
    res = curvature.lanczos(op, torch.randn(R, n, generator=g, dtype=torch.float64), iters=n)
    # top algebraic eigenvalue of P⁻¹A (real: similar to a symmetric matrix)
    ref = torch.linalg.eigvals(A / P[:, :, None]).real.max(-1).values
    torch.testing.assert_close(res.eigenvalues[:, 0], ref, rtol=1e-8, atol=1e-10)
    assert res.converged.all()


def test_batch_sharpness_is_a_mean_of_per_batch_ratios():
    from implicit_bias.metrics import BATCH_SHARPNESS_BATCHES, sharpness_batch

    runs, res = _engine(
        "momentum", {}, {"batch_size": 4}, steps=4, metrics={"sharpness": {"iters": 10}}
    )
    run = runs[1]
    X = torch.as_tensor(run.data.X_train, dtype=torch.float64)
    y = torch.as_tensor(run.data.y_train, dtype=torch.float64)
    spec = ModelSpec.from_config(run.config.model, X.shape[1])
    w = tuple(torch.as_tensor(res.weights[f"final_W{k + 1}"][1]) for k in range(spec.depth))
    sizes, shapes = [p.numel() for p in w], [p.shape for p in w]
    ratios = []
    for b in range(BATCH_SHARPNESS_BATCHES):
        idx = sharpness_batch(run.config.seed, X.shape[0], 4, 4, b)

        def loss(flat, idx=idx):
            ps = tuple(c.reshape(s) for c, s in zip(flat.split(sizes), shapes, strict=True))
            return mean_loss(forward(ps, X[idx], spec), y[idx], "mse")

        flat = torch.cat([p.flatten() for p in w])
        gB = torch.func.grad(loss)(flat)
        HB = torch.autograd.functional.hessian(loss, flat)
        ratios.append((gB @ HB @ gB / (gB @ gB)).item())
    assert res.per_step["batch_sharpness"][1, -1] == pytest.approx(np.mean(ratios), rel=1e-10)


@pytest.mark.parametrize(
    ("train", "key"),
    [
        ({"optimizer": "momentum", "momentum": 1.0}, "train.momentum"),
        ({"optimizer": "adam", "beta1": 1.5}, "train.beta1"),
        ({"optimizer": "adam", "eps": -1e-8}, "train.eps"),
        ({"beta2": 0.9}, "train.beta2"),
        ({"optimizer": "momentum", "beta2": 0.9}, "train.beta2"),
        ({"optimizer": "nesterov", "momentum": 0.0}, "train.momentum"),
        ({"optimizer": "rmsprop", "bias_correction": False}, "train.bias_correction"),
        ({"optimizer": "sgd"}, "train.optimizer"),
    ],
)
def test_bad_optimizer_settings_name_the_key(train, key):
    from implicit_bias._errors import UserInputError
    from implicit_bias.config import load_config

    with pytest.raises(UserInputError, match=key.replace(".", r"\.")) as err:
        load_config({"data": {"kind": "overlap"}, "train": train})
    assert "\n" not in str(err.value)


def test_critical_units_use_the_optimizer_threshold():
    _, res = _engine(
        "momentum",
        {"train.momentum": [0.0, 0.9]},
        {"lr_units": "critical", "lr": 0.5},
        steps=2,
        metrics={"sharpness": {"iters": 30}},
    )
    lam0 = res.per_run["sharpness_init"]
    c = res.per_run["stability_numerator"]
    np.testing.assert_allclose(c, [2.0, 3.8, 2.0, 3.8])
    np.testing.assert_allclose(res.per_run["lr"], 0.5 * c / lam0, rtol=1e-12)


def test_adam_critical_units_use_the_preconditioned_sharpness_at_init():
    _, res = _engine(
        "adam",
        {"train.beta1": [0.0, 0.9]},
        {"lr_units": "critical", "lr": 0.5},
        steps=2,
        metrics={"sharpness": {"iters": 30}},
    )
    pc0 = res.per_run["preconditioned_sharpness_init"]
    c = res.per_run["stability_numerator"]
    np.testing.assert_allclose(c, [2.0, 38.0, 2.0, 38.0])
    np.testing.assert_allclose(res.per_run["lr"], 0.5 * c / pc0, rtol=1e-12)
    # the step-0 trace holds the same number; the raw sharpness is stored beside it
    np.testing.assert_allclose(res.per_step["preconditioned_sharpness"][:, 0], pc0)
    assert (res.per_run["sharpness_init"] < pc0).all()


def test_cli_bad_optimizer_key_exits_2_with_one_line(tmp_path):
    lines = validate_error_lines(
        tmp_path, "data: {kind: overlap}\ntrain: {optimizer: adam, momentum: 0.9}\n"
    )
    assert len(lines) == 1 and "train.momentum" in lines[0], lines


def test_phase_rule_reads_the_optimizer_threshold():
    """critical_ratio and the ratios the phase rule reads are curvature·η/c."""
    _, res = _engine(
        "momentum",
        {"train.momentum": [0.0, 0.9]},
        {"lr": 0.3},
        steps=8,
        metrics={"sharpness": {"iters": 30}},
    )
    c, lr = res.per_run["stability_numerator"], res.per_run["lr"]
    sharp = res.per_step["sharpness"]
    np.testing.assert_allclose(res.per_run["critical_ratio"], sharp[:, 0] * lr / c)
    np.testing.assert_allclose(res.per_run["sharpness_after_ratio"], sharp[:, -1] * lr / c)
