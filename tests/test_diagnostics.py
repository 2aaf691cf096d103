"""diagnostics: every quantity against a dense float64 reference, batched == per-run loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize, nnls
from torch.func import jacrev

from implicit_bias import diagnostics as D
from implicit_bias import models
from implicit_bias.models import ModelSpec

DT = torch.float64
R = 3


def _params(spec: ModelSpec, seed: int = 0, scale: float = 1.0):
    """R runs stacked along dim 0."""
    runs = [models.init_params(spec, seed + r, scale, DT) for r in range(R)]
    return tuple(torch.stack(ws) for ws in zip(*runs, strict=True))


def _run(params, r):
    return tuple(p[r] for p in params)


def _data(n=12, d=4, seed=0, per_run=False, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    shape = (R, n) if per_run else (n,)
    y = torch.where(torch.rand(shape, generator=g) < 0.5, -1.0, 1.0).to(DT)
    X = torch.randn((*shape, d), generator=g, dtype=DT)
    X[..., 0] += shift * y
    return X, y


def _slice(X, y, r):
    return (X[r], y[r]) if X.ndim == 3 else (X, y)


SPECS = [
    ModelSpec(d=4, depth=3, width=6, activation="linear", parametrization="ntk"),
    ModelSpec(d=4, depth=2, width=6, activation="relu", parametrization="standard"),
    ModelSpec(
        d=4,
        depth=2,
        width=6,
        activation="leaky_relu",
        parametrization="direct",
        last_layer="fixed_sign",
    ),
    ModelSpec(
        d=4,
        depth=2,
        width=6,
        activation="smooth_leaky_relu",
        smoothing=2.0,
        last_layer="fixed_sign",
    ),
]


# ---------------------------------------------------------------- weight spectra
def test_spectra_vs_numpy_svd():
    g = torch.Generator().manual_seed(1)
    W = torch.randn(R, 7, 5, generator=g, dtype=DT)
    W[1] = torch.outer(torch.randn(7, generator=g, dtype=DT), torch.randn(5, generator=g, dtype=DT))
    W[2, :, 0] *= 1e-5  # one singular value ~1e-5·σ_max
    sv, sr = D.singular_values(W), D.stable_rank(W)
    nr, nr_tight = D.numerical_rank(W, 1e-3), D.numerical_rank(W)
    for r in range(R):
        s = np.linalg.svd(W[r].numpy(), compute_uv=False)
        np.testing.assert_allclose(sv[r].numpy(), s, rtol=1e-12, atol=1e-12 * s[0])
        np.testing.assert_allclose(sr[r].item(), (s**2).sum() / s[0] ** 2, rtol=1e-12)
        assert nr[r].item() == (s > 1e-3 * s[0]).sum()
        assert nr_tight[r].item() == np.linalg.matrix_rank(W[r].numpy())
    assert sr[1].item() == pytest.approx(1.0) and nr[1].item() == 1
    assert nr[2].item() == 4 and nr_tight[2].item() == 5


# ---------------------------------------------------------------- margins
@pytest.mark.parametrize("per_run", [False, True])
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.activation}-{s.last_layer}")
def test_margins_vs_loop(spec, per_run):
    params, a = _params(spec), models.fixed_last_layer(spec, DT, "cpu")
    X, y = _data(per_run=per_run)
    out = D.margins(params, X, y, spec, a)
    assert out["margin"].shape == (R,)
    for r in range(R):
        Xr, yr = _slice(X, y, r)
        m = (yr * models.forward(_run(params, r), Xr, spec, a)).min().item()
        norm = math.sqrt(sum((p[r] ** 2).sum().item() for p in params))
        assert out["margin"][r].item() == pytest.approx(m, rel=1e-12)
        assert out["normalized_margin"][r].item() == pytest.approx(
            m / norm**spec.homogeneity, rel=1e-12
        )


def test_normalized_margin_scale_invariant():
    spec = SPECS[1]  # relu: exactly homogeneous of degree 2
    params, (X, y) = _params(spec), _data()
    a = D.margins(params, X, y, spec)["normalized_margin"]
    b = D.margins(tuple(3.0 * p for p in params), X, y, spec)["normalized_margin"]
    torch.testing.assert_close(a, b)


# ---------------------------------------------------------------- linear predictors
LINEAR = [
    ModelSpec(d=4, depth=k, width=5, activation="linear", parametrization=p)
    for k in (2, 3)
    for p in ("ntk", "standard", "direct")
] + [ModelSpec(d=4, depth=k, width=6, activation="linear", last_layer="fixed_sign") for k in (2, 3)]


@pytest.mark.parametrize(
    "spec",
    LINEAR,
    ids=lambda s: f"{s.parametrization}-{s.depth}-{s.last_layer}",
)
def test_linear_predictor_matches_network(spec):
    params, a = _params(spec), models.fixed_last_layer(spec, DT, "cpu")
    X, _ = _data(per_run=True)
    v = D.linear_predictor_batched(params, spec, a)
    assert v.shape == (R, spec.d)
    f = torch.stack([models.forward(_run(params, r), X[r], spec, a) for r in range(R)])
    torch.testing.assert_close(torch.einsum("rd,rnd->rn", v, X), f)


def test_linear_predictor_nonlinear():
    relu = SPECS[1]
    assert D.linear_predictor_batched(_params(relu), relu) is None
    spec = SPECS[2]  # fixed-sign leaky ReLU: v = W₁ᵀa
    params, a = _params(spec), models.fixed_last_layer(spec, DT, "cpu")
    v = D.linear_predictor_batched(params, spec, a)
    for r in range(R):
        torch.testing.assert_close(v[r], params[0][r].T @ a[0])


def test_geometric_margin_by_hand():
    v = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 0.0]], dtype=DT)
    X = torch.tensor([[2.0, 1.0], [-1.0, 3.0]], dtype=DT)
    y = torch.tensor([1.0, -1.0], dtype=DT)
    gm = D.geometric_margin(v, X, y)
    # run 0: y⟨v,x⟩ = 10, −9 → −9/5; run 1: 2, 1 → 1; run 2: v = 0 → NaN
    assert gm[0].item() == pytest.approx(-1.8) and gm[1].item() == pytest.approx(1.0)
    assert math.isnan(gm[2].item())
    X3 = torch.stack([X, -X, X])
    gm3 = D.geometric_margin(v, X3, y.expand(R, 2))
    assert gm3[1].item() == pytest.approx(-2.0)
    torch.testing.assert_close(gm3[0], gm[0])


# ---------------------------------------------------------------- SVM
def _separable_2d(seed, n=30):
    rng = np.random.default_rng(seed)
    w0 = rng.standard_normal(2)
    X = rng.standard_normal((4 * n, 2)) * rng.uniform(0.5, 3.0, (4 * n, 1))
    s = X @ w0 / np.linalg.norm(w0)
    keep = np.abs(s) > 0.2
    return X[keep][:n], np.sign(s[keep][:n])


@pytest.mark.parametrize("seed", range(4))
def test_svm_vs_brute_force_2d(seed):
    X, y = _separable_2d(seed)
    svm = D.svm_direction(X, y)
    assert svm.separable and np.linalg.norm(svm.w) == pytest.approx(1.0)
    theta = np.linspace(0, 2 * np.pi, 200_001)
    marg = ((y[:, None] * X) @ np.stack([np.cos(theta), np.sin(theta)])).min(0)
    best = marg.max()
    lip = np.linalg.norm(X, axis=1).max() * np.pi / len(theta)  # grid error bound
    assert best - 1e-12 <= svm.margin <= best + lip
    t = theta[marg.argmax()]
    assert svm.w @ [np.cos(t), np.sin(t)] > 1 - 1e-6
    assert svm.margin == pytest.approx((y * (X @ svm.w)).min(), rel=1e-12)
    assert D.separable_lp(X, y)


def test_svm_known_answers():
    svm = D.svm_direction(np.array([[1.0, 1.0], [1.0, -1.0]]), np.array([1.0, 1.0]))
    np.testing.assert_allclose(svm.w, [1.0, 0.0], atol=1e-12)
    assert svm.margin == pytest.approx(1.0)
    svm = D.svm_direction(
        np.array([[2.0, 0.5], [-2.0, -0.5], [3.0, 5.0]]), np.array([1.0, -1.0, 1.0])
    )
    np.testing.assert_allclose(svm.w, [2.0, 0.5] / np.linalg.norm([2.0, 0.5]), atol=1e-12)
    # orthogonal data x_i = c_i e_i (d ≫ n): α_i ∝ 1/c_i², w ∝ Σ y_i e_i / c_i, γ = (Σ c_i⁻²)^{-1/2}
    c = np.array([1.0, 2.0, 0.5, 3.0])
    y = np.array([1.0, -1.0, -1.0, 1.0])
    X = np.zeros((4, 50))
    X[np.arange(4), [3, 10, 20, 40]] = c
    svm = D.svm_direction(X, y)
    w = np.zeros(50)
    w[[3, 10, 20, 40]] = y / c
    np.testing.assert_allclose(svm.w, w / np.linalg.norm(w), atol=1e-12)
    assert svm.margin == pytest.approx((c**-2.0).sum() ** -0.5, rel=1e-12)


def _svm_slsqp(Z):
    """Primal QP min ½‖w‖² s.t. Z w ≥ 1 by SLSQP, started from a feasible point."""
    res = minimize(
        lambda w: 0.5 * w @ w,
        Z.mean(0) * 10,
        jac=lambda w: w,
        method="SLSQP",
        constraints={"type": "ineq", "fun": lambda w: Z @ w - 1, "jac": lambda w: Z},
        options={"ftol": 1e-14, "maxiter": 500},
    )
    assert res.success
    return res.x


@pytest.mark.parametrize(("n", "d"), [(20, 5), (15, 40)])
def test_svm_vs_slsqp(n, d):
    rng = np.random.default_rng(3)
    y = rng.choice([-1.0, 1.0], n)
    X = rng.standard_normal((n, d))
    X[:, 0] += 3 * y
    w = _svm_slsqp(y[:, None] * X)
    svm = D.svm_direction(X, y)
    np.testing.assert_allclose(svm.w, w / np.linalg.norm(w), atol=1e-6)
    assert svm.margin == pytest.approx(1 / np.linalg.norm(w), rel=1e-6)


def test_svm_not_separable_and_lp_agrees():
    x = np.array([[1.0, 2.0], [-1.0, -2.0], [0.3, 1.0]])
    svm = D.svm_direction(x, np.ones(3))  # x and −x with the same label
    assert not svm.separable and math.isnan(svm.margin) and np.isnan(svm.w).all()
    assert not D.separable_lp(x, np.ones(3))
    assert not D.svm_direction(np.zeros((3, 2)), np.ones(3)).separable
    rng = np.random.default_rng(0)
    for n, d, shift in [(100, 5, 0.0), (100, 5, 8.0), (40, 60, 0.0), (200, 20, 1.0)]:
        y = rng.choice([-1.0, 1.0], n)
        X = rng.standard_normal((n, d))
        X[:, 0] += shift * y
        svm = D.svm_direction(X, y)
        assert svm.separable == D.separable_lp(X, y)
        if svm.separable:  # optimality certificate: w = Σ α_i z_i over the active constraints
            Z = y[:, None] * X
            act = Z @ svm.w < svm.margin * (1 + 1e-7)
            _, res = nnls(Z[act].T, svm.w)
            assert res < 1e-8


def test_svm_metrics():
    X, y = _data(n=20, d=3, shift=4.0)
    svm = D.svm_direction(X, y)
    assert svm.separable
    w = torch.from_numpy(svm.w)
    v = torch.stack([2 * w, torch.tensor([1.0, 0.0, 0.0], dtype=DT), w + 0.1])
    out = D.svm_metrics(v, svm, X, y)
    for r in range(R):
        assert out["svm_cosine"][r].item() == pytest.approx((v[r] @ w / v[r].norm()).item())
        gm = D.geometric_margin(v[r : r + 1], X, y).item()
        assert out["margin_ratio"][r].item() == pytest.approx(gm / svm.margin)
    assert out["svm_cosine"][0].item() == pytest.approx(1.0) and out["margin_ratio"][
        0
    ].item() == pytest.approx(1.0)
    # per-run data with one SVM per run; a non-separable run gives NaN
    X3, y3 = _data(n=20, d=3, per_run=True, shift=4.0)
    y3[2, :] = 1.0
    X3[2, 1] = -X3[2, 0]
    svms = [D.svm_direction(X3[r], y3[r]) for r in range(R)]
    out3 = D.svm_metrics(v, svms, X3, y3)
    for r in range(2):
        ref = D.svm_metrics(v[r : r + 1], svms[r], X3[r], y3[r])
        torch.testing.assert_close(out3["margin_ratio"][r : r + 1], ref["margin_ratio"])
        torch.testing.assert_close(out3["svm_cosine"][r : r + 1], ref["svm_cosine"])
    assert math.isnan(out3["svm_cosine"][2].item()) and math.isnan(out3["margin_ratio"][2].item())


@pytest.mark.parametrize("per_run", [False, True])
def test_boundary_agreement(per_run):
    spec = SPECS[2]
    params, a = _params(spec), models.fixed_last_layer(spec, DT, "cpu")
    X, _ = _data(n=50, per_run=per_run)
    v = D.linear_predictor_batched(params, spec, a)
    ba = D.boundary_agreement(params, v, X, spec, a)
    for r in range(R):
        Xr = X[r] if per_run else X
        ref = (
            (torch.sign(models.forward(_run(params, r), Xr, spec, a)) == torch.sign(Xr @ v[r]))
            .double()
            .mean()
        )
        assert ba[r].item() == pytest.approx(ref.item())
    lin = LINEAR[0]
    p = _params(lin)
    assert torch.all(D.boundary_agreement(p, D.linear_predictor_batched(p, lin), X, lin) == 1.0)


# ---------------------------------------------------------------- KKT
@pytest.mark.parametrize("per_run", [False, True])
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.activation}-{s.last_layer}")
def test_per_sample_gradients_vs_jacrev(spec, per_run):
    params, a = _params(spec), models.fixed_last_layer(spec, DT, "cpu")
    X, _ = _data(n=5, per_run=per_run)
    G = D.per_sample_gradients(params, X, spec, a)
    assert G.shape == (R, 5, spec.n_params)
    for r in range(R):
        Xr = X[r] if per_run else X
        jac = jacrev(lambda p, Xr=Xr: models.forward(p, Xr, spec, a))(_run(params, r))
        torch.testing.assert_close(G[r], torch.cat([j.reshape(5, -1) for j in jac], 1))
        # and one sample by plain autograd
        p = tuple(w.clone().requires_grad_() for w in _run(params, r))
        grads = torch.autograd.grad(models.forward(p, Xr[2:3], spec, a).sum(), p)
        torch.testing.assert_close(G[r, 2], torch.cat([g.reshape(-1) for g in grads]))


def _kkt_reference(params, X, y, spec, a, tie_break=True):
    """Dense per-run reference: full jacobian, NNLS on the P × n system directly,
    with the documented tie-break rows ε·|s_i|/(1+|s_i|)·‖G_i‖ appended; on the
    homogenization of the net (leaky ReLU for the smoothed one)."""
    spec = spec.homogenized
    out = {"kkt_stationarity": [], "kkt_slackness": []}
    for r in range(R):
        Xr, yr = X[r] if X.ndim == 3 else X, y[r]
        p = _run(params, r)
        m = (yr * models.forward(p, Xr, spec, a)).min().item()
        pt = tuple(w / m ** (1 / spec.homogeneity) for w in p)
        jac = jacrev(lambda q, Xr=Xr: models.forward(q, Xr, spec, a))(pt)
        G = yr[:, None] * torch.cat([j.reshape(len(yr), -1) for j in jac], 1)
        th = torch.cat([w.reshape(-1) for w in pt])
        yf = (yr * models.forward(pt, Xr, spec, a)).numpy()
        A, b = G.T.numpy(), th.numpy()
        if tie_break:
            sl = np.abs(yf - 1)
            A = np.vstack([A, np.diag(1e-3 * sl / (1 + sl) * np.linalg.norm(A, axis=0))])
            b = np.concatenate([b, np.zeros(len(yf))])
        lam, _ = nnls(A, b, maxiter=5000)
        res = np.linalg.norm(th.numpy() - G.T.numpy() @ lam)
        out["kkt_stationarity"].append(res / th.norm().item())
        out["kkt_slackness"].append((lam * (yf - 1)).sum() / lam.sum())
    return {k: np.array(v) for k, v in out.items()}


def _svm_w(X, y):
    svm = D.svm_direction(X, y)
    return torch.from_numpy(svm.w / svm.margin)  # margin-1 SVM solution


def test_kkt_zero_at_svm_depth1_and_fixed_sign():
    X, y = _data(n=15, d=6, shift=2.0)
    w = _svm_w(X, y)
    one = ModelSpec(d=6, depth=1, width=1, parametrization="direct")
    params = (torch.stack([s * w[None] for s in (1.0, 0.3, 7.0)]),)
    out = D.kkt_residuals(params, X, y, one)
    assert out["kkt_stationarity"].abs().max() < 1e-6 and out["kkt_slackness"].abs().max() < 1e-6

    fs = ModelSpec(d=6, depth=2, width=8, activation="linear", last_layer="fixed_sign")
    a = models.fixed_last_layer(fs, DT, "cpu")
    params = (torch.stack([s * torch.outer(a[0], w) for s in (1.0, 0.1, 4.0)]),)
    out = D.kkt_residuals(params, X, y, fs, a)
    assert out["kkt_stationarity"].abs().max() < 1e-6 and out["kkt_slackness"].abs().max() < 1e-6


@pytest.mark.parametrize("depth", [2, 3])
@pytest.mark.parametrize("param", ["direct", "ntk"])
def test_kkt_zero_for_balanced_aligned_deep_linear(depth, param):
    """W_1 = β u_1 ŵᵀ, W_l = β u_l u_{l−1}ᵀ, W_L = β u_{L−1}ᵀ with ŵ the SVM direction is a KKT point."""
    d, m = 30, 5
    X, y = _data(n=10, d=d, shift=0.5)  # d > n: every point may be a support vector
    w_hat = _svm_w(X, y)
    w_hat = w_hat / w_hat.norm()
    spec = ModelSpec(d=d, depth=depth, width=m, activation="linear", parametrization=param)
    g = torch.Generator().manual_seed(5)
    runs = []
    for beta in (0.5, 1.0, 3.0):
        u = [
            torch.nn.functional.normalize(torch.randn(m, generator=g, dtype=DT), dim=0)
            for _ in range(depth - 1)
        ]
        layers = [beta * torch.outer(u[0], w_hat)]
        layers += [beta * torch.outer(u[k], u[k - 1]) for k in range(1, depth - 1)]
        layers += [beta * u[-1][None]]
        runs.append(layers)
    params = tuple(torch.stack(ws) for ws in zip(*runs, strict=True))
    out = D.kkt_residuals(params, X, y, spec)
    assert out["kkt_stationarity"].abs().max() < 1e-6 and out["kkt_slackness"].abs().max() < 1e-6


@pytest.mark.parametrize("per_run", [False, True])
@pytest.mark.parametrize(
    "spec", [*SPECS, LINEAR[1]], ids=lambda s: f"{s.activation}-{s.last_layer}-{s.depth}"
)
def test_kkt_random_nets_vs_dense_reference(spec, per_run):
    params, a = _params(spec), models.fixed_last_layer(spec, DT, "cpu")
    # labels from each run's own (homogenized) net (y is (R, n) even for shared X):
    # positive margin
    hom = spec.homogenized
    for seed in range(20):  # a data seed where no output is exactly 0 (dead ReLUs)
        X, _ = _data(n=8, per_run=per_run, seed=seed)
        f = torch.stack(
            [models.forward(_run(params, r), X[r] if per_run else X, hom, a) for r in range(R)]
        )
        if (f != 0).all():
            break
    y = torch.sign(f)
    out = D.kkt_residuals(params, X, y, spec, a)
    ref, plain = _kkt_reference(params, X, y, spec, a), _kkt_reference(params, X, y, spec, a, False)
    assert (out["kkt_stationarity"] > 1e-2).all()  # random nets are far from KKT points
    np.testing.assert_allclose(out["kkt_stationarity"].numpy(), ref["kkt_stationarity"], rtol=1e-6)
    np.testing.assert_allclose(
        out["kkt_slackness"].numpy(), ref["kkt_slackness"], rtol=1e-5, atol=1e-9
    )
    # the tie-break leaves the minimal stationarity alone, and λ too where it is unique
    np.testing.assert_allclose(
        out["kkt_stationarity"].numpy(), plain["kkt_stationarity"], rtol=1e-9
    )
    if spec.activation != "linear":  # G has full row rank: unique λ
        np.testing.assert_allclose(out["kkt_slackness"].numpy(), plain["kkt_slackness"], rtol=1e-4)
    chunked = D.kkt_residuals(params, X, y, spec, a, max_elements=1)  # one run per chunk
    for k in out:
        torch.testing.assert_close(chunked[k], out[k], rtol=1e-5, atol=0)


def test_kkt_of_smoothed_net_is_that_of_its_homogenization():
    """φ_H(cz)/c → leaky ReLU: the smoothed net's KKT residuals are the leaky-ReLU
    net's (Cai et al. 2025), and differ from the smoothed net's own at margin 1."""
    spec = SPECS[3]
    hom = spec.homogenized
    assert (
        hom.activation == "leaky_relu"
        and hom.leak == spec.leak
        and SPECS[2].homogenized is SPECS[2]
    )
    params, a = _params(spec), models.fixed_last_layer(spec, DT, "cpu")
    X, _ = _data(n=8)
    y = torch.sign(torch.stack([models.forward(_run(params, r), X, hom, a) for r in range(R)]))
    # the homogenization is the large-scale limit of the smoothed net
    big = tuple(p * 1e6 for p in params)
    f_s = torch.stack([models.forward(_run(big, r), X, spec, a) for r in range(R)])
    f_h = torch.stack([models.forward(_run(big, r), X, hom, a) for r in range(R)])
    torch.testing.assert_close(f_s / 1e6, f_h / 1e6, rtol=1e-5, atol=1e-5)
    out, ref = D.kkt_residuals(params, X, y, spec, a), D.kkt_residuals(params, X, y, hom, a)
    for k in out:
        torch.testing.assert_close(out[k], ref[k], rtol=0, atol=0)


def test_kkt_nan_for_negative_margin_and_nonfinite():
    spec = LINEAR[1]
    X, y = _data(n=8, shift=6.0)
    params = _params(spec)
    f = torch.stack([models.forward(_run(params, r), X, spec) for r in range(R)])
    sign = torch.sign((y * f).sum(-1))
    sign[0] *= -1  # run 0 now misclassifies most points
    last = params[-1] * sign.view(-1, 1, 1)
    last[2, 0, 0] = torch.nan
    with torch.no_grad():  # the engine evaluates metrics under no_grad
        out = D.kkt_residuals((*params[:-1], last), X, y, spec)
    assert math.isnan(out["kkt_stationarity"][0].item()) and math.isnan(
        out["kkt_slackness"][2].item()
    )
    assert math.isfinite(out["kkt_stationarity"][1].item())


def test_kkt_float32_output_dtype():
    spec = LINEAR[1]
    X, y = _data(n=8, shift=6.0)
    params = tuple(p.float() for p in _params(spec))
    out = D.kkt_residuals(params, X.float(), y.float(), spec)
    assert out["kkt_stationarity"].dtype == torch.float32


# ---------------------------------------------------------------- data geometry
def test_data_geometry_hand_made():
    X = np.array([[2.0, 0.0, 0.0], [0.5, 3.0, 0.0], [0.0, 0.0, 1.0]])
    y = np.array([1.0, -1.0, 1.0])
    g = D.data_geometry(X, y)
    # ‖x‖² = 4, 9.25, 1; max_{k≠i}|⟨x_i,x_k⟩| = 1, 1, 0 → ratios 4/3, 9.25/3, inf
    assert g["near_orthogonality"] == pytest.approx(4 / 3)
    assert g["rank"] == 3 and not g["degenerate"] and g["separable"] and g["class_overlap"] == 0.0
    assert g["svm_margin"] == pytest.approx(D.svm_direction(X, y).margin)
    assert set(map(type, g.values())) <= {bool, int, float}
    assert D.data_geometry(np.eye(4), np.ones(4))["near_orthogonality"] == math.inf
    # degenerate data x_i = s_i u with one flipped label: rank 1, overlap exactly 1/5
    u = np.array([0.6, 0.8, 0.0])
    s = np.array([1.0, 2.0, 3.0, -1.0, -2.0])
    y = np.array([1.0, 1.0, -1.0, -1.0, -1.0])
    g = D.data_geometry(s[:, None] * u, y)
    assert g["rank"] == 1 and g["degenerate"] and not g["separable"] and math.isnan(g["svm_margin"])
    assert g["class_overlap"] == pytest.approx(0.2)
    # float32 input: rank tolerance follows its dtype
    Xf = torch.from_numpy(s[:, None] * u).float()
    assert D.data_geometry(Xf, torch.from_numpy(-y))["rank"] == 1
    assert D.data_geometry(s[:, None] * u, np.sign(s))["class_overlap"] == 0.0


@pytest.mark.parametrize(("n", "d", "shift"), [(60, 5, 0.5), (10, 30, 0.0), (40, 40, 3.0)])
def test_data_geometry_vs_loops(n, d, shift):
    rng = np.random.default_rng(n + d)
    y = rng.choice([-1.0, 1.0], n)
    X = rng.standard_normal((n, d))
    X[:, 0] += shift * y
    g = D.data_geometry(X, y)
    ratios = [
        X[i] @ X[i] / (n * max(abs(X[i] @ X[k]) for k in range(n) if k != i)) for i in range(n)
    ]
    assert g["near_orthogonality"] == pytest.approx(min(ratios), rel=1e-12)
    assert g["rank"] == np.linalg.matrix_rank(X) and g["separable"] == D.separable_lp(X, y)
    errs = [0.0] if g["separable"] else []
    for w in (np.linalg.lstsq(X, y, rcond=None)[0], X.T @ y):
        errs += [np.mean(y * (X @ w) <= 0), np.mean(y * (X @ w) >= 0)]
    assert g["class_overlap"] == pytest.approx(min(errs))
    assert (g["class_overlap"] == 0) == g["separable"]


def test_explicit_x_in_dim():
    spec = SPECS[1]
    params = _params(spec)
    X, y = _data(per_run=True)
    auto = D.margins(params, X, y, spec)
    torch.testing.assert_close(D.margins(params, X, y, spec, None, x_in_dim=0), auto)
    Xs, ys = _data()
    torch.testing.assert_close(
        D.margins(params, Xs, ys, spec, x_in_dim=None), D.margins(params, Xs, ys, spec)
    )
