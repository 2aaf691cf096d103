"""Every eval-step metric, as the engine stores it, against a dense float64 reference
computed afresh from the stored final weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import implicit_bias as ib
from implicit_bias.data import make_dataset
from implicit_bias.losses import mean_loss
from implicit_bias.models import ModelSpec, fixed_last_layer, forward

CFG = {
    "name": "all-metrics",
    "data": {"kind": "overlap", "n_train": 20, "n_test": 30, "d": 4, "seed": 1},
    "model": {"depth": 3, "width": 6, "activation": "leaky_relu", "parametrization": "ntk"},
    "train": {"loss": "logistic", "steps": 30, "lr": 0.5, "dtype": "float64"},
    "metrics": {
        "every": 15,
        "at": [1],
        "dense_early": False,  # four eval steps keep the dense references cheap
        "sharpness": {"iters": 200, "top_k": 3, "tol": 1e-9},
        "gn_sharpness": True,
        "ntk": True,
        "ntk_gram_at": [0],
        "stable_rank": True,
        "margins": True,
        "kkt": True,
        "trace": {"probes": 400, "density": True, "iters": 10},
    },
    "sweep": {"seed": [0, 1]},
}


# session-scoped: made once per test process (a module fixture is rebuilt whenever
# an xdist worker interleaves tests of other modules)
@pytest.fixture(scope="session")
def results(tmp_path_factory):
    return ib.run(CFG, out=tmp_path_factory.mktemp("m") / "r")["group_000"].to_dataset()


def _dense(ds, run):
    cfg = ib.load_config(CFG)
    data = make_dataset(cfg.data)
    X = torch.as_tensor(data.X_train)
    y = torch.as_tensor(data.y_train)
    spec = ModelSpec.from_config(cfg.model, X.shape[1])
    a = fixed_last_layer(spec, torch.float64, "cpu")
    Ws = [torch.as_tensor(ds[f"final_W{i + 1}"].values[run]) for i in range(spec.depth)]
    shapes = [w.shape for w in Ws]
    theta = torch.cat([w.flatten() for w in Ws])

    def unflat(t):
        out, k = [], 0
        for s in shapes:
            out.append(t[k : k + s[0] * s[1]].reshape(s))
            k += s[0] * s[1]
        return tuple(out)

    def loss(t):
        return mean_loss(forward(unflat(t), X, spec, a), y, "logistic")

    def f(t):
        return forward(unflat(t), X, spec, a)

    return theta, loss, f, X, y, spec, Ws


@pytest.mark.parametrize("run", [0, 1])
def test_final_metrics_match_dense_references(results, run):
    ds = results
    theta, loss, f, X, y, spec, Ws = _dense(ds, run)
    last = {"step": ds["step"].values[-1]}
    H = torch.func.hessian(loss)(theta)
    ev = torch.linalg.eigvalsh(H).flip(0)
    np.testing.assert_allclose(
        ds["sharpness_topk"].sel(**last).values[run], ev[:3].numpy(), rtol=1e-6
    )
    np.testing.assert_allclose(ds["final_sharpness"].values[run], ev[0].item(), rtol=1e-6)
    assert bool(ds["sharpness_converged"].sel(**last).values[run])
    J = torch.func.jacrev(f)(theta)  # (n, P)
    n = X.shape[0]
    ntk = J @ J.T / n
    np.testing.assert_allclose(
        ds["ntk_max"].sel(**last).values[run], torch.linalg.eigvalsh(ntk)[-1].item(), rtol=1e-6
    )
    fx = f(theta)
    s = torch.sigmoid(y * fx)
    ggn = J.T @ torch.diag(s * (1 - s)) @ J / n
    np.testing.assert_allclose(
        ds["gn_sharpness"].sel(**last).values[run], torch.linalg.eigvalsh(ggn)[-1].item(), rtol=1e-5
    )
    # Hutchinson with 400 Rademacher probes: within 5 standard errors of the exact trace
    off = (H.square().sum() - H.diagonal().square().sum()).sqrt() * np.sqrt(2)
    assert abs(
        ds["hessian_trace"].sel(**last).values[run] - H.trace().item()
    ) < 5 * off.item() / np.sqrt(400)
    w = ds["density_weights"].sel(**last).values[run]
    assert abs(w.sum() - 1) < 1e-10
    for i, W in enumerate(Ws):
        sv = np.linalg.svd(W.numpy(), compute_uv=False)
        np.testing.assert_allclose(
            ds[f"stable_rank_W{i + 1}"].sel(**last).values[run],
            (sv**2).sum() / sv[0] ** 2,
            rtol=1e-8,
        )
    margin = (y * fx).min().item()
    np.testing.assert_allclose(ds["margin"].sel(**last).values[run], margin, rtol=1e-10)
    np.testing.assert_allclose(
        ds["normalized_margin"].sel(**last).values[run],
        margin / theta.norm().item() ** spec.homogeneity,
        rtol=1e-10,
    )


def test_names_and_dims(results):
    ds = results
    assert list(ds["step"].values) == [0, 1, 15, 30]
    for name in (
        "sharpness",
        "sharpness_residual",
        "gn_sharpness",
        "ntk_max",
        "stable_rank_W1",
        "stable_rank_W2",
        "stable_rank_W3",
        "margin",
        "normalized_margin",
        "kkt_stationarity",
        "kkt_slackness",
        "hessian_trace",
        "test_loss",
        "test_acc",
    ):
        assert ds[name].dims == ("run", "step"), name
    assert ds["sharpness_topk"].dims == ("run", "step", "k")
    assert ds["ntk_gram_0"].shape == (2, 20, 20)
    for name in (
        "final_kkt_stationarity",
        "final_kkt_slackness",
        "final_stable_rank_W1",
        "final_ntk_max",
        "data_separable",
        "data_near_orthogonality",
        "data_rank",
        "data_class_overlap",
    ):
        assert ds[name].dims == ("run",), name
    assert not bool(ds["data_separable"].values[0])  # overlapping classes, n ≫ d


def test_ntk_gram_at_init_matches_jacrev(results):
    ds = results
    cfg = ib.load_config(CFG)
    data = make_dataset(cfg.data)
    X = torch.as_tensor(data.X_train)
    spec = ModelSpec.from_config(cfg.model, X.shape[1])
    Ws = tuple(torch.as_tensor(ds[f"init_W{i + 1}"].values[0]) for i in range(spec.depth))
    J = torch.func.jacrev(lambda p: forward(p, X, spec, None))(Ws)
    J = torch.cat([j.reshape(X.shape[0], -1) for j in J], 1)
    np.testing.assert_allclose(
        ds["ntk_gram_0"].values[0], (J @ J.T / X.shape[0]).numpy(), rtol=1e-10, atol=1e-12
    )
