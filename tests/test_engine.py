"""The batched engine equals a plain per-run loop; phases; divergence handling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from implicit_bias.config import load_config
from implicit_bias.engine import Trainer, minibatch_order
from implicit_bias.losses import mean_loss
from implicit_bias.models import ModelSpec, fixed_last_layer, forward, init_params
from implicit_bias.schedules import multipliers
from implicit_bias.sweep import make_plan

BASE = {
    "data": {"kind": "overlap", "n_train": 24, "n_test": 10, "d": 5, "seed": 3},
    "model": {"depth": 2, "width": 8, "activation": "linear", "parametrization": "ntk"},
    "train": {"loss": "logistic", "steps": 25, "lr": 0.5, "dtype": "float64"},
    "metrics": {"every": 5, "sharpness": False},
}


def _cfg(**sections):
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in BASE.items()}
    for key, val in sections.items():
        if isinstance(val, dict) and key in raw:
            raw[key] = {**raw[key], **val}
        else:
            raw[key] = val
    return load_config(raw)


def reference_loop(run) -> tuple[np.ndarray, list[np.ndarray]]:
    """One run, written the plain way: autograd, a Python float learning rate."""
    cfg, data = run.config, run.data
    X = torch.as_tensor(data.X_train, dtype=torch.float64)
    y = torch.as_tensor(data.y_train, dtype=torch.float64)
    spec = ModelSpec.from_config(cfg.model, X.shape[1])
    a = fixed_last_layer(spec, torch.float64, "cpu")
    params = [
        p.clone().requires_grad_(True)
        for p in init_params(spec, cfg.seed, cfg.model.init_scale, torch.float64)
    ]
    mult = multipliers(cfg.train.schedule, cfg.train.steps)
    n, bs = X.shape[0], cfg.train.batch_size or X.shape[0]
    losses = []
    for t in range(cfg.train.steps + 1):
        loss = mean_loss(forward(tuple(params), X, spec, a), y, cfg.train.loss)
        losses.append(loss.item())
        if t == cfg.train.steps:
            break
        if bs < n:
            per_epoch = n // bs
            epoch, pos = divmod(t, per_epoch)
            idx = minibatch_order(cfg.seed, n, epoch)[pos * bs : (pos + 1) * bs]
            loss = mean_loss(forward(tuple(params), X[idx], spec, a), y[idx], cfg.train.loss)
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p -= cfg.train.lr * float(mult[t]) * g
    return np.array(losses), [p.detach().numpy() for p in params]


CASES = [
    {},
    {"model": {"depth": 3, "activation": "relu", "parametrization": "standard"}},
    {"model": {"activation": "leaky_relu", "parametrization": "direct", "init_scale": 0.3}},
    {
        "model": {
            "activation": "smooth_leaky_relu",
            "last_layer": "fixed_sign",
            "parametrization": "direct",
            "init_scale": 0.1,
        },
        "train": {"loss": "exponential", "lr": 0.2},
    },
    {"train": {"batch_size": 8, "loss": "mse", "lr": 0.1}},
    {"train": {"schedule": {"kind": "step", "at": [10, 20], "factor": 0.3}}},
    {"train": {"schedule": {"kind": "cosine"}, "batch_size": 6}},
    {"train": {"schedule": {"kind": "warmup", "steps": 7}}},
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: str(c)[:60])
def test_batched_equals_per_run_loop(case):
    cfg = _cfg(**case, sweep={"seed": [0, 1, 2], "train.lr": [0.05, 0.3]})
    plan = make_plan(cfg)
    res = Trainer(plan.runs).train()
    for i, run in enumerate(plan.runs):
        ref_loss, ref_w = reference_loop(run)
        np.testing.assert_allclose(res.per_iteration["loss"][i], ref_loss, rtol=1e-10, atol=1e-12)
        for layer, w in enumerate(ref_w):
            np.testing.assert_allclose(
                res.weights[f"final_W{layer + 1}"][i], w, rtol=1e-10, atol=1e-12
            )
        # and a single-run chunk gives the same numbers as the batched one
    single = Trainer([plan.runs[3]]).train()
    np.testing.assert_allclose(
        single.per_iteration["loss"][0], res.per_iteration["loss"][3], rtol=1e-12
    )


def test_lr_table_and_critical_units():
    cfg = _cfg(
        train={
            "lr_units": "critical",
            "lr": 0.5,
            "schedule": {"kind": "step", "at": [10], "factor": 0.1},
        },
        metrics={"every": 5, "sharpness": {"iters": 30}},
    )
    plan = make_plan(cfg)
    res = Trainer(plan.runs).train()
    lam0 = res.per_run["sharpness_init"][0]
    assert lam0 > 0
    assert res.per_run["lr"][0] == pytest.approx(0.5 * 2 / lam0, rel=1e-12)
    lr_t = res.per_iteration["lr_t"][0]
    assert lr_t[9] == pytest.approx(res.per_run["lr"][0])
    assert lr_t[10] == pytest.approx(0.1 * res.per_run["lr"][0])


def test_divergence_is_a_result_not_a_crash():
    cfg = _cfg(
        data={"kind": "overlap", "n_train": 24, "n_test": 10, "d": 5, "seed": 3},
        train={"loss": "mse", "lr": 1.0, "steps": 60},
        metrics={"every": 10, "sharpness": {"iters": 10}},
        sweep={"train.lr": [0.1, 50.0]},
    )
    plan = make_plan(cfg)
    res = Trainer(plan.runs).train()
    phase = res.per_run["phase"]
    assert phase[0] == "lazy" and phase[1] == "diverged"
    assert res.per_run["divergence_step"][1] > 0 and res.per_run["divergence_step"][0] == -1
    assert math.isnan(res.per_run["final_loss"][1]) and math.isnan(
        res.per_run["final_sharpness"][1]
    )
    assert np.isfinite(res.per_run["final_loss"][0]) and np.isfinite(
        res.per_run["final_sharpness"][0]
    )
    assert np.isfinite(res.weights["final_W1"][1]).all()  # last finite weights kept
    # the healthy run is untouched by its diverging neighbour
    alone = Trainer([plan.runs[0]]).train()
    np.testing.assert_allclose(
        alone.per_iteration["loss"][0], res.per_iteration["loss"][0], rtol=1e-12
    )


def test_eval_steps_include_at_and_end():
    metrics = {"every": 10, "at": [1, 3], "sharpness": {"iters": 5}, "dense_early": False}
    cfg = _cfg(train={"steps": 23}, metrics=metrics)
    res = Trainer(make_plan(cfg).runs).train()
    assert res.eval_steps == [0, 1, 3, 10, 20, 23]
    assert res.per_step["sharpness"].shape == (1, 6)


def test_default_eval_steps_are_dense_early_and_sparse_late():
    from implicit_bias.engine import eval_steps_of

    def steps(**metrics):
        return eval_steps_of(_cfg(train={"steps": 2000}, metrics={"every": 20, **metrics}))

    got = steps()
    # every step 1…10 (a catapult's spike), log-spaced until the multiples of 20 are as
    # dense (below 3·20), then every 20th, and the last step
    assert got[:11] == list(range(11))
    early = [t for t in got if t < 60 and t % 20]
    assert early == [*range(1, 11), 13, 18, 24, 32, 42, 56]
    assert [t for t in got if t >= 60] == list(range(60, 2001, 20))
    assert steps(dense_early=False) == list(range(0, 2001, 20))
    assert steps(at=[7, 1999]) == sorted([*got, 1999])
    short = eval_steps_of(_cfg(train={"steps": 4}, metrics={"every": 10}))
    assert short == [0, 1, 2, 3, 4]


MODEL_CASES = [
    {"depth": 1},
    {"depth": 2, "activation": "linear"},
    {"depth": 3, "activation": "linear", "parametrization": "standard"},
    {"depth": 4, "activation": "linear", "last_layer": "fixed_sign"},
    {"depth": 3, "activation": "relu", "parametrization": "standard"},
    {"depth": 3, "activation": "leaky_relu", "parametrization": "direct", "init_scale": 0.5},
    {
        "depth": 2,
        "activation": "smooth_leaky_relu",
        "last_layer": "fixed_sign",
        "parametrization": "direct",
    },
    {"depth": 3, "activation": "smooth_leaky_relu", "smoothing": 0.5, "last_layer": "fixed_sign"},
]


@pytest.mark.parametrize("model", MODEL_CASES, ids=lambda c: str(c)[:50])
@pytest.mark.parametrize("loss", ["logistic", "exponential", "mse"])
@pytest.mark.parametrize("per_run_data", [False, True])
def test_hand_written_grad_and_hvp_match_autograd(model, loss, per_run_data):
    """The batched hand-written gradient and HVP against torch.func per run, float64."""
    from implicit_bias import curvature

    sweep = {"seed": [0, 1, 2]}
    if per_run_data:
        sweep["data.seed"] = [4, 5]
    cfg = _cfg(model={**BASE["model"], **model}, train={"loss": loss}, sweep=sweep)
    tr = Trainer(make_plan(cfg).runs)
    assert (tr.x_dim == 0) is per_run_data
    params = tr.init()
    loss_b, _f_b, grads = tr.value_and_grad(params, tr.X, tr.y)
    mv = tr.hessian_operator(params)
    V = torch.randn(
        tr.R, tr.spec.n_params, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    HV = mv(V)
    for r in range(tr.R):
        X = tr.X if tr.x_dim is None else tr.X[r]
        y = tr.y if tr.x_dim is None else tr.y[r]
        p = tuple(q[r] for q in params)
        flat = curvature.flatten(tuple(q[None] for q in p))[0]

        def loss_flat(theta, X=X, y=y, p=p):
            single = tuple(
                q[0] for q in curvature.unflatten(theta[None], tuple(q[None] for q in p))
            )
            return tr.loss_single(single, X, y)

        assert torch.allclose(loss_b[r], loss_flat(flat), rtol=1e-12)
        g_ref = torch.func.grad(loss_flat)(flat)
        g = curvature.flatten(tuple(q[r : r + 1] for q in grads))[0]
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12)
        H = torch.func.hessian(loss_flat)(flat)
        torch.testing.assert_close(HV[r], H @ V[r], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("model", MODEL_CASES, ids=lambda c: str(c)[:50])
@pytest.mark.parametrize("per_run_data", [False, True])
def test_jacobian_gram_matches_jacrev(model, per_run_data):
    """J Jᵀ and J θ formed layer-wise equal the dense per-sample Jacobian (float64)."""
    from implicit_bias.batched import jacobian_gram
    from implicit_bias.diagnostics import per_sample_gradients

    sweep = {"seed": [0, 1, 2]}
    if per_run_data:
        sweep["data.seed"] = [4, 5]
    cfg = _cfg(model={**BASE["model"], **model}, sweep=sweep)
    tr = Trainer(make_plan(cfg).runs)
    params = tr.init()
    K, dots, f = jacobian_gram(params, tr.X, tr.spec, tr.a)
    J = per_sample_gradients(params, tr.X, tr.spec, tr.a, tr.x_dim)  # (R, n, P), jacrev
    theta = torch.cat([p.flatten(1) for p in params], 1)
    torch.testing.assert_close(K, J @ J.transpose(1, 2), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(dots, (J @ theta[:, :, None]).squeeze(-1), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(f, tr.outputs(params, tr.X, tr.x_dim), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("model", MODEL_CASES, ids=lambda c: str(c)[:50])
@pytest.mark.parametrize("loss", ["logistic", "mse"])
def test_hand_written_gauss_newton_matches_torch_func(model, loss):
    """The batched GGN product equals the torch.func GGN operator (itself dense-tested)."""
    from implicit_bias import curvature

    cfg = _cfg(model={**BASE["model"], **model}, train={"loss": loss}, sweep={"seed": [0, 1, 2]})
    tr = Trainer(make_plan(cfg).runs)
    params = tr.init()
    V = torch.randn(
        tr.R, tr.spec.n_params, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )
    ours = tr.hessian_operator(params, gauss_newton=True)(V)
    ref = curvature.gauss_newton_operator(tr.output_single, loss, params, tr.X, tr.y, (None, None))(
        V
    )
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
