"""The generic (torch.func) backend equals the hand-written MLP path, and runs in the engine."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from implicit_bias import curvature
from implicit_bias.config import load_config
from implicit_bias.engine import Trainer, gd_update
from implicit_bias.losses import mean_loss
from implicit_bias.models import ModelSpec, fixed_last_layer, forward, init_params
from implicit_bias.models.backend import MLPBackend, mlp_generic
from implicit_bias.sweep import make_plan

D, N, R = 5, 12, 3

#: the MLP family's paths: chain (linear), layer by layer, fixed last layer, smooth φ
SPECS = {
    "linear-depth3-ntk": ModelSpec(d=D, depth=3, width=6, activation="linear"),
    "relu-depth3-standard": ModelSpec(
        d=D, depth=3, width=6, activation="relu", parametrization="standard"
    ),
    "leaky-fixed-sign": ModelSpec(
        d=D, depth=2, width=8, activation="leaky_relu", last_layer="fixed_sign"
    ),
    "smooth-leaky-depth3-direct": ModelSpec(
        d=D, depth=3, width=6, activation="smooth_leaky_relu", parametrization="direct"
    ),
    "depth1": ModelSpec(d=D, depth=1, width=6),
}
LOSSES = ["logistic", "exponential", "mse"]
CASES = [(name, loss, False) for name in SPECS for loss in LOSSES]
CASES += [(name, "logistic", True) for name in SPECS]  # inputs per run
#: the smooth activations (φ'' enters the hand-written HVP), one loss each
SMOOTH = {"tanh": "mse", "elu": "logistic", "gelu": "exponential", "softplus": "mse"}
for _act, _loss in SMOOTH.items():
    SPECS[_act] = ModelSpec(d=D, depth=3, width=5, activation=_act)  # type: ignore[arg-type]
    CASES += [(_act, _loss, _act == "tanh")]


def _problem(spec: ModelSpec, per_run: bool):
    gen = torch.Generator().manual_seed(7)
    shape = (R, N, D) if per_run else (N, D)
    X = torch.randn(*shape, generator=gen, dtype=torch.float64)
    y = torch.randn(*shape[:-1], generator=gen, dtype=torch.float64).sign()
    params = tuple(
        torch.stack(ps)
        for ps in zip(*[init_params(spec, s, 0.8, torch.float64) for s in range(R)], strict=True)
    )
    return X, y, params, (0 if per_run else None)


def _backends(spec: ModelSpec, loss: str):
    a = fixed_last_layer(spec, torch.float64, "cpu")
    return MLPBackend(spec, a, loss), mlp_generic(spec, a, loss)  # type: ignore[arg-type]


def _close(a, b, tol=1e-10):
    for x, z in zip(a, b, strict=True):
        torch.testing.assert_close(x, z, rtol=tol, atol=tol)


@pytest.mark.parametrize(("name", "loss", "per_run"), CASES, ids=lambda c: str(c))
def test_generic_equals_hand_written(name, loss, per_run):
    """Loss, outputs, gradient, HVP, Gauss–Newton product and NTK Gram to 1e-10 (float64)."""
    spec = SPECS[name]
    X, y, params, xd = _problem(spec, per_run)
    fast, gen = _backends(spec, loss)
    l1, f1, p1 = fast.forward_loss(params, X, y, xd)
    l2, f2, p2 = gen.forward_loss(params, X, y, xd)
    _close((l1, f1), (l2, f2))
    _close(fast.grad(p1, params, X, y, xd), gen.grad(p2, params, X, y, xd))
    V = tuple(torch.randn_like(p) for p in params)
    for gn in (False, True):
        _close(
            fast.hvp_operator(params, X, y, xd, gauss_newton=gn)(V),
            gen.hvp_operator(params, X, y, xd, gauss_newton=gn)(V),
        )
    if spec.depth > 1:  # the hand-written Gram is written for nets with a hidden layer
        _close(fast.jacobian_gram(params, X, xd), gen.jacobian_gram(params, X, xd))


@pytest.mark.parametrize("name", ["relu-depth3-standard", "smooth-leaky-depth3-direct"])
def test_generic_batched_equals_per_run(name):
    """vmap over runs equals calling the one-run function run by run."""
    spec = SPECS[name]
    X, y, params, xd = _problem(spec, per_run=True)
    gen = _backends(spec, "logistic")[1]
    loss, _, grads = gen.value_and_grad(params, X, y, xd)
    V = tuple(torch.randn_like(p) for p in params)
    HV = gen.hvp_operator(params, X, y, xd)(V)
    for r in range(R):
        p = tuple(q[r].clone().requires_grad_(True) for q in params)
        lr = torch.nn.functional.softplus(-y[r] * gen.output_single(p, X[r])).mean()
        g = torch.autograd.grad(lr, p, create_graph=True)
        hv = torch.autograd.grad(g, p, grad_outputs=tuple(v[r] for v in V))
        _close((loss[r],), (lr,))
        _close([q[r] for q in grads], g)
        _close([q[r] for q in HV], hv)


def test_generic_sharpness_equals_hand_written():
    """Top Hessian eigenvalue by Lanczos through either backend's HVP, and the dense one."""
    spec = ModelSpec(
        d=D, depth=2, width=3, activation="smooth_leaky_relu", parametrization="direct"
    )
    X, y, params, xd = _problem(spec, per_run=False)
    P = spec.n_params
    v0 = torch.randn(R, P, generator=torch.Generator().manual_seed(1), dtype=X.dtype)
    eig, ops = [], []
    for be in _backends(spec, "logistic"):
        hvp = be.hvp_operator(params, X, y, xd)
        ops.append(lambda v, h=hvp: curvature.flatten(h(curvature.unflatten(v, params))))
        eig.append(curvature.lanczos(ops[-1], v0, iters=P, k=1).eigenvalues[:, 0])
    torch.testing.assert_close(eig[0], eig[1], rtol=1e-10, atol=1e-10)
    dense = torch.stack([ops[1](e.expand(R, P)) for e in torch.eye(P, dtype=X.dtype)], dim=-1)
    top = torch.linalg.eigvalsh(0.5 * (dense + dense.mT))[:, -1]
    torch.testing.assert_close(eig[1], top, rtol=1e-8, atol=1e-10)


def test_gd_update_skips_runs_with_non_finite_gradient_or_rate():
    params = (torch.ones(3, 2, 2), torch.ones(3, 4))
    grads = (torch.full((3, 2, 2), 2.0), torch.tensor([[1.0, 1, 1, 1], [np.nan, 1, 1, 1], [1] * 4]))
    scale = torch.tensor([-0.5, -0.5, np.inf])
    new, finite = gd_update(params, grads, scale)
    assert finite.tolist() == [True, False, False]
    assert torch.equal(new[0][0], torch.zeros(2, 2)) and torch.equal(
        new[1][0], torch.full((4,), 0.5)
    )
    assert torch.equal(new[0][1:], torch.ones(2, 2, 2)) and torch.equal(
        new[1][1:], torch.ones(2, 4)
    )


ENGINE_CASES = [
    {"model": {"depth": 3, "width": 6, "activation": "relu"}},
    {
        "model": {"depth": 2, "width": 6, "activation": "smooth_leaky_relu"},
        "train": {"loss": "mse"},
    },
    {"model": {"depth": 2, "width": 6, "activation": "linear"}, "train": {"batch_size": 6}},
]


@pytest.mark.parametrize("case", ENGINE_CASES, ids=lambda c: str(c)[:50])
def test_engine_generic_backend_equals_auto(case):
    """A sweep trained through ``model.backend: generic`` gives the numbers of the fast path."""
    raw = {
        "data": {"kind": "overlap", "n_train": 12, "n_test": 6, "d": 4, "seed": 2},
        "train": {"loss": "logistic", "steps": 8, "lr": 0.4, "dtype": "float64"},
        "metrics": {"every": 4, "sharpness": {"iters": 8}, "ntk": True, "dense_early": False},
        "sweep": {"seed": [0, 1], "train.lr": [0.1, 0.6]},
    }
    for key, val in case.items():
        raw[key] = {**raw.get(key, {}), **val}
    out = {}
    for backend in ("auto", "generic"):
        cfg = load_config({**raw, "model": {**raw["model"], "backend": backend}})
        out[backend] = Trainer(make_plan(cfg).runs).train()
    a, g = out["auto"], out["generic"]
    assert (
        set(a.weights)
        == set(g.weights)
        == {f"{k}_W{i}" for k in ("init", "final") for i in (1, 2, 3)[: len(a.weights) // 2]}
    )
    for key in a.weights:
        np.testing.assert_allclose(g.weights[key], a.weights[key], rtol=1e-10, atol=1e-12)
    for key in ("loss", "train_acc"):
        np.testing.assert_allclose(g.per_iteration[key], a.per_iteration[key], rtol=1e-10)
    for key in ("sharpness", "ntk_max", "test_loss"):
        np.testing.assert_allclose(g.per_step[key], a.per_step[key], rtol=1e-8, atol=1e-10)


def test_generic_backend_key_keeps_old_folder_hashes():
    """``model.backend: auto`` (the default) does not change the identity of old folders."""
    base = {"data": {"kind": "overlap", "n_train": 8, "d": 3}}
    h0 = load_config(base).config_hash()
    assert load_config({**base, "model": {"backend": "auto"}}).config_hash() == h0
    assert load_config({**base, "model": {"backend": "generic"}}).config_hash() != h0


# ---------------------------------------------------------------------- biases
def test_bias_net_is_torch_nn_linear_stack():
    """``bias: true``: f = W₂ φ(W₁x + b₁) + b₂ exactly as nn.Linear layers compute it."""
    spec = ModelSpec(
        d=D, depth=3, width=4, activation="tanh", parametrization="standard", bias=True
    )
    assert spec.param_names == ["W1", "W2", "W3", "b1", "b2", "b3"]
    assert spec.n_params == 4 * D + 16 + 4 + 4 + 4 + 1
    params = init_params(spec, 3, 1.0, torch.float64)
    assert all(torch.equal(b, torch.zeros_like(b)) for b in params[3:])  # zero at init
    gen = torch.Generator().manual_seed(0)
    params = params[:3] + tuple(
        torch.randn(b.shape, generator=gen, dtype=b.dtype) for b in params[3:]
    )
    net = torch.nn.Sequential(
        torch.nn.Linear(D, 4),
        torch.nn.Tanh(),
        torch.nn.Linear(4, 4),
        torch.nn.Tanh(),
        torch.nn.Linear(4, 1),
    ).double()
    with torch.no_grad():
        for i, lin in enumerate(net[::2]):
            lin.weight.copy_(params[i])
            lin.bias.copy_(params[3 + i])
    X = torch.randn(N, D, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(forward(params, X, spec), net(X).squeeze(-1), rtol=1e-14, atol=1e-14)


def _bias_loop(run):
    """One run of a biased net the plain way: autograd on nn-free code, Python float rate."""
    cfg, data = run.config, run.data
    X = torch.as_tensor(data.X_train, dtype=torch.float64)
    y = torch.as_tensor(data.y_train, dtype=torch.float64)
    spec = ModelSpec.from_config(cfg.model, X.shape[1])
    params = [
        p.clone().requires_grad_(True) for p in init_params(spec, cfg.seed, 1.0, torch.float64)
    ]
    for _ in range(cfg.train.steps):
        loss = mean_loss(forward(tuple(params), X, spec), y, cfg.train.loss)
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p -= cfg.train.lr * g
    return dict(zip(spec.param_names, [p.detach().numpy() for p in params], strict=True))


def test_bias_sweep_batched_equals_per_run_loop_and_is_stored(tmp_path):
    import implicit_bias as ib

    raw = {
        "name": "bias",
        "data": {"kind": "overlap", "n_train": 12, "n_test": 6, "d": 4, "seed": 2},
        "model": {"depth": 2, "width": 6, "activation": "tanh", "bias": True},
        "train": {"loss": "mse", "steps": 10, "lr": 0.3, "dtype": "float64"},
        "metrics": {
            "every": 5,
            "sharpness": {"iters": 8},
            "stable_rank": True,
            "dense_early": False,
        },
        "sweep": {"seed": [0, 1], "train.lr": [0.1, 0.5]},
    }
    plan = make_plan(load_config(raw))
    tr = Trainer(plan.runs)
    assert not tr.backend.fused_descent  # auto picks the generic path for biases
    res = tr.train()
    for i, run in enumerate(plan.runs):
        for name, w in _bias_loop(run).items():
            np.testing.assert_allclose(res.weights[f"final_{name}"][i], w, rtol=1e-10, atol=1e-12)
    ds = ib.run(raw, out=tmp_path / "res")["group_000"].to_dataset()
    assert ds["final_b1"].dims == ("run", "b1_out") and ds["final_b2"].shape == (4, 1)
    assert ds["init_W1"].dims == ("run", "W1_out", "W1_in")
    assert "stable_rank_W2" in ds and "stable_rank_W3" not in ds
