"""Multiclass data: K outputs, labels 0…K−1, cross-entropy and one-hot MSE (float64)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.func import hessian

from implicit_bias import UserInputError
from implicit_bias.config import load_config
from implicit_bias.data import data_from_arrays, make_dataset
from implicit_bias.engine import Trainer
from implicit_bias.losses import accuracy, mean_loss, multiclass_margins
from implicit_bias.models import ModelSpec, forward, init_params
from implicit_bias.models.backend import mlp_generic
from implicit_bias.sweep import make_plan

F = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 1.5]], dtype=torch.float64)
Y = torch.tensor([0.0, 2.0], dtype=torch.float64)


def test_cross_entropy_and_one_hot_mse_by_hand():
    # sample 1: −log(e²/(e² + 1 + e⁻¹)); sample 2: −log(e^1.5/(e^0.5 + 2e^1.5))
    ce1 = -2.0 + math.log(math.exp(2) + 1 + math.exp(-1))
    ce2 = -1.5 + math.log(math.exp(0.5) + 2 * math.exp(1.5))
    assert mean_loss(F, Y, "cross_entropy", 3).item() == pytest.approx((ce1 + ce2) / 2, rel=1e-14)
    # ½Σ_k (f_k − 1[k = y])²: ½(1 + 0 + 1) and ½(0.25 + 2.25 + 0.25)
    assert mean_loss(F, Y, "mse", 3).item() == pytest.approx((1.0 + 1.375) / 2, rel=1e-14)
    # against torch's own definitions (Cohen et al.'s MSE is sum over outputs / 2, mean over n)
    yl = Y.long()
    ref_mse = torch.nn.functional.mse_loss(F, torch.eye(3, dtype=F.dtype)[yl], reduction="sum") / 4
    assert mean_loss(F, Y, "mse", 3).item() == pytest.approx(ref_mse.item(), rel=1e-14)
    ref_ce = torch.nn.functional.cross_entropy(F, yl)
    assert mean_loss(F, Y, "cross_entropy", 3).item() == pytest.approx(ref_ce.item(), rel=1e-14)


def test_argmax_accuracy_and_multiclass_margin_by_hand():
    # sample 1 right (argmax 0 = y), sample 2: a tie 1.5/1.5 → argmax picks class 1 ≠ 2
    assert accuracy(F, Y, 3).item() == 0.5
    # f_y − max_{j≠y} f_j: 2 − 0 = 2; 1.5 − 1.5 = 0
    torch.testing.assert_close(multiclass_margins(F, Y), torch.tensor([2.0, 0.0], dtype=F.dtype))
    # batched over runs
    both = torch.stack([F, -F])
    torch.testing.assert_close(accuracy(both, Y, 3), torch.tensor([0.5, 0.0], dtype=F.dtype))


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_multiclass_hvp_and_gauss_newton_equal_dense(loss):
    """The generic path's H v and G v on K outputs equal the dense torch.func.hessian and
    Jᵀ (∇²_f L) J built from the Jacobian."""
    spec = ModelSpec(d=3, depth=2, width=4, activation="tanh", bias=True, outputs=3)
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    y = torch.tensor([0.0, 1.0, 2.0, 1.0, 0.0], dtype=torch.float64)
    p0 = tuple(
        torch.randn(p.shape, generator=gen, dtype=torch.float64)
        for p in init_params(spec, 0, 1.0, torch.float64)
    )
    be = mlp_generic(spec, None, loss)  # type: ignore[arg-type]
    sizes = [p.numel() for p in p0]

    def unflat(theta):
        return tuple(t.reshape(p.shape) for t, p in zip(theta.split(sizes), p0, strict=True))

    theta = torch.cat([p.reshape(-1) for p in p0])
    H = hessian(lambda t: mean_loss(forward(unflat(t), X, spec), y, loss, 3))(theta)
    J = torch.func.jacrev(lambda t: forward(unflat(t), X, spec))(theta)  # (n, K, P)
    f = forward(p0, X, spec)
    Hf = hessian(lambda g: mean_loss(g, y, loss, 3))(f)  # (n, K, n, K)
    G = torch.einsum("akp,akbl,blq->pq", J, Hf, J)
    v = torch.randn(theta.shape, generator=gen, dtype=torch.float64)
    batched = tuple(p.unsqueeze(0) for p in p0)
    V = tuple(t.unsqueeze(0) for t in unflat(v))
    Hv = be.hvp_operator(batched, X, y, None)(V)
    Gv = be.hvp_operator(batched, X, y, None, gauss_newton=True)(V)
    torch.testing.assert_close(
        torch.cat([t.reshape(-1) for t in Hv]), H @ v, rtol=1e-10, atol=1e-12
    )
    torch.testing.assert_close(
        torch.cat([t.reshape(-1) for t in Gv]), G @ v, rtol=1e-10, atol=1e-12
    )
    # the NTK Gram of K outputs is J Jᵀ over (sample, output) pairs
    Kg = be.jacobian_gram(batched, X, None)[0][0]
    Jf = J.reshape(-1, theta.numel())
    torch.testing.assert_close(Kg, Jf @ Jf.T, rtol=1e-10, atol=1e-12)


DIGITS = {
    "name": "digits10",
    "data": {
        "kind": "sklearn",
        "name": "digits",
        "classes": "all",
        "n_train": 30,
        "n_test": 10,
        "normalize": "standardize",
    },
    "model": {"depth": 2, "width": 8, "activation": "tanh", "parametrization": "standard"},
    "train": {"loss": "cross_entropy", "steps": 4, "lr": 0.3, "dtype": "float64"},
    "metrics": {"every": 4, "sharpness": {"iters": 6}, "dense_early": False},
    "sweep": {"seed": [1], "train.lr": [0.1, 0.4]},
}


def _loop(run, loss):
    """One run the plain way: torch.nn.functional's losses, autograd, a float rate."""
    X = torch.as_tensor(run.data.X_train)
    y = torch.as_tensor(run.data.y_train).long()
    spec = ModelSpec.from_config(run.config.model, X.shape[1], 10)
    params = [
        p.clone().requires_grad_(True)
        for p in init_params(spec, run.config.seed, 1.0, torch.float64)
    ]
    for _ in range(run.config.train.steps):
        f = forward(tuple(params), X, spec)
        if loss == "cross_entropy":
            val = torch.nn.functional.cross_entropy(f, y)
        else:
            val = 0.5 * (f - torch.nn.functional.one_hot(y, 10)).square().sum(1).mean()
        grads = torch.autograd.grad(val, params)
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p -= run.config.train.lr * g
    return [p.detach().numpy() for p in params]


@pytest.mark.parametrize("loss", ["cross_entropy", pytest.param("mse", marks=pytest.mark.slow)])
def test_digits_sweep_equals_per_run_loop(loss):
    cfg = load_config({**DIGITS, "train": {**DIGITS["train"], "loss": loss}})
    plan = make_plan(cfg)
    assert plan.runs[0].data.n_classes == 10 and plan.runs[0].data.d == 64
    res = Trainer(plan.runs).train()
    for i, run in enumerate(plan.runs):
        for name, w in zip(("W1", "W2"), _loop(run, loss), strict=True):
            np.testing.assert_allclose(res.weights[f"final_{name}"][i], w, rtol=1e-10, atol=1e-12)
    assert res.weights["final_W2"].shape == (2, 10, 8)
    assert (
        np.isfinite(res.per_step["sharpness"]).all() and np.isfinite(res.per_step["test_acc"]).all()
    )


def test_digits_all_classes_data():
    ds = make_dataset(load_config(DIGITS).data)
    assert ds.multiclass and ds.n_classes == 10
    assert set(np.unique(ds.y_train)) <= set(range(10)) and ds.X_train.shape == (30, 64)
    # class indices in user arrays: kept, not remapped; K from the largest index
    arr = data_from_arrays(np.eye(4), [0, 1, 2, 1])
    assert arr.multiclass and arr.n_classes == 3 and list(arr.y_train) == [0, 1, 2, 1]
    binary = data_from_arrays(np.eye(4), [0, 1, 1, 0])
    assert not binary.multiclass and list(binary.y_train) == [-1, 1, 1, -1]


@pytest.mark.parametrize(
    ("patch", "needle"),
    [
        ({"train": {"loss": "logistic"}}, "train.loss: logistic is for ±1 labels"),
        ({"data": {"kind": "overlap", "n_train": 8, "d": 3}}, "train.loss: cross_entropy needs"),
    ],
)
def test_loss_and_labels_that_do_not_match_are_refused(patch, needle):
    raw = {**DIGITS, "sweep": {}}
    for key, val in patch.items():
        raw[key] = {**raw[key], **val} if key == "train" else val
    with pytest.raises(UserInputError, match=needle):
        Trainer(make_plan(load_config(raw)).runs)


def test_multiclass_results_are_stored_with_warning_for_binary_only_metrics(tmp_path):
    import implicit_bias as ib

    raw = {**DIGITS, "metrics": {**DIGITS["metrics"], "margins": True, "kkt": True}}
    raw["sweep"] = {"seed": [0]}
    with pytest.warns(UserWarning) as rec:
        tree = ib.run(raw, out=tmp_path / "res")
    said = " ".join(str(w.message) for w in rec)
    assert "metrics.kkt: skipped" in said and "binary-only" in said
    ds = tree["group_000"].to_dataset()
    assert "margin" in ds and "kkt_stationarity" not in ds and "linear_predictor" not in ds
    assert np.isnan(ds["data_svm_margin"].values).all()
