"""The central flow and gradient flow beside GD (implicit_bias.flows; issue 19).

Float64 throughout; the problems are tiny so the whole file stays fast.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _helpers import validate_error_lines
from torch import Tensor
from torch.func import hessian

from implicit_bias import curvature, flows

DT = torch.float64


# ------------------------------------------------------------------ problems
def _mlp_loss(p, X, y):
    """A one-run tanh net with the square loss (what the engine's MLP computes)."""
    W, a = p
    return 0.5 * ((torch.tanh(X @ W.T) @ a - y) ** 2).mean()


def _mlp_problem(R: int = 2, n: int = 12, d: int = 3, m: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=DT)
    y = torch.sign(torch.randn(n, generator=g, dtype=DT))
    W = torch.randn(R, m, d, generator=g, dtype=DT)
    a = 2 * torch.randn(R, m, generator=g, dtype=DT)
    return (W, a), X, y


def _product_loss(p, X, y):
    """½(⟨a, b⟩ − 1)²: gradient flow sharpens towards the minimum (S rises from 9.20
    to 9.32 from the start below), so the edge is reached within a few steps."""
    a, b = p
    return 0.5 * (((a * b).sum() * X[:, 0] - y) ** 2).mean()


def _product_problem(R: int = 1):
    a = torch.tensor([[3.0, 0.3]], dtype=DT).repeat(R, 1)
    b = torch.tensor([[0.01, 0.2]], dtype=DT).repeat(R, 1)
    a = a * (1 + 0.05 * torch.arange(R, dtype=DT))[:, None]
    return (a, b), torch.ones(1, 1, dtype=DT), torch.ones(1, dtype=DT)


def _dense_top(loss_fn, w: Tensor, like, X, y) -> Tensor:
    """λ_max of the dense Hessian of one run at flat ``w (P,)``."""
    return torch.linalg.eigvalsh(_dense_hessian(loss_fn, w, like, X, y))[-1]


def _flows(loss_fn, params, X, y, substeps=4, eigs=1):
    model = flows.FlowModel(loss_fn, params, X, y, None)
    v0 = torch.ones_like(curvature.flatten(params))
    return flows.CentralFlows(model, params, v0, substeps=substeps, eigs=eigs)


# ------------------------------------------------------------------ ∇S
def test_grad_sharpness_matches_finite_differences_of_the_dense_eigenvalue():
    params, X, y = _mlp_problem(R=2, n=8, d=2, m=2)
    model = flows.FlowModel(_mlp_loss, params, X, y, None)
    w = curvature.flatten(params)
    # the exact eigenvector (Lanczos to the full dimension), so only ∇S is under test
    eig = curvature.lanczos(model.hessian(w), torch.ones_like(w), w.shape[1], 1)
    G, vals = model.curvature_gradients(w, eig.eigenvectors, [(0, 0)])
    eps = 1e-5
    for r in (1,):  # one run against the dense Hessian (run 0 only shapes the batch)
        lam = _dense_top(_mlp_loss, w[r], params, X, y)
        assert float(vals[r, 0]) == pytest.approx(float(lam), rel=1e-9)  # uᵀHu = S
        E = torch.eye(w.shape[1], dtype=DT)
        fd = torch.stack(
            [
                (_dense_top(_mlp_loss, w[r] + eps * e, params, X, y)
                 - _dense_top(_mlp_loss, w[r] - eps * e, params, X, y)) / (2 * eps)
                for e in E
            ]
        )  # fmt: skip
        assert float((fd - G[r, 0]).norm() / fd.norm()) < 1e-6


def test_third_derivative_by_differences_of_hvps_equals_the_exact_one():
    params, X, y = _mlp_problem(R=3)
    ad = flows.FlowModel(_mlp_loss, params, X, y, None)
    fd = flows.FlowModel(_mlp_loss, params, X, y, None, third="fd")
    w = curvature.flatten(params)
    U = ad.top_eigs(w, torch.ones_like(w), 2).eigenvectors
    pairs = [(0, 0), (0, 1), (1, 1)]
    G, v = ad.curvature_gradients(w, U, pairs)
    Gf, vf = fd.curvature_gradients(w, U, pairs)
    assert float(((Gf - G).norm(dim=-1) / G.norm(dim=-1)).max()) < 1e-8
    torch.testing.assert_close(vf, v, rtol=1e-9, atol=1e-8)  # O(ε²) from the midpoint


def _dense_hessian(loss_fn, w: Tensor, like, X, y) -> Tensor:
    """The dense Hessian ``(P, P)`` of one run at flat ``w (P,)``."""
    one = tuple(p[0] for p in curvature.unflatten(w[None], like))
    sizes = [p.numel() for p in one]
    H = hessian(lambda q: loss_fn(q, X, y))(one)
    rows = [torch.cat([H[i][j].reshape(sizes[i], sizes[j]) for j in range(len(one))], 1)
            for i in range(len(one))]  # fmt: skip
    return torch.cat(rows, 0)


@pytest.mark.parametrize("third", ["ad", "fd"])
def test_refine_top_is_one_rayleigh_ritz_step_with_its_exact_residual(third):
    """The tracked eigenpair within a GD step: the top Ritz pair on span{u, Hu}, its
    residual computed from the same products, and ∇S at the new vector to second order."""
    params, X, y = _mlp_problem(R=2)
    model = flows.FlowModel(_mlp_loss, params, X, y, None, third=third)
    exact = flows.FlowModel(_mlp_loss, params, X, y, None)
    w = curvature.flatten(params)
    H = torch.stack([_dense_hessian(_mlp_loss, w[r], params, X, y) for r in range(2)])
    top = torch.linalg.eigh(H).eigenvectors[:, :, -1]  # (R, P)
    noise = torch.randn(w.shape, generator=torch.Generator().manual_seed(1), dtype=DT)
    u = top + 1e-3 * noise
    u = u / u.norm(dim=1, keepdim=True)
    u2, lam, res, gS = model.refine_top(w, u)
    for r in range(2):
        hu = H[r] @ u[r]
        q = hu - (u[r] @ hu) * u[r]
        Q = torch.stack([u[r], q / q.norm()], 1)  # (P, 2)
        theta, S = torch.linalg.eigh(Q.T @ H[r] @ Q)
        ref = Q @ S[:, -1]
        assert float(lam[r]) == pytest.approx(float(theta[-1]), rel=1e-9)
        assert abs(float(ref @ u2[r])) == pytest.approx(1.0, abs=1e-9)
        explicit = (H[r] @ u2[r] - lam[r] * u2[r]).norm()
        assert float(res[r]) == pytest.approx(float(explicit), rel=1e-4, abs=1e-12)
        assert float(u[r] @ H[r] @ u[r]) <= float(lam[r]) <= float(torch.linalg.eigvalsh(H[r])[-1])
    g_new = exact.curvature_gradients(w, u2[:, None], [(0, 0)])[0][:, 0]
    g_old = exact.curvature_gradients(w, u[:, None], [(0, 0)])[0][:, 0]
    err_new = ((gS - g_new).norm(dim=1) / g_new.norm(dim=1)).max()
    err_old = ((g_old - g_new).norm(dim=1) / g_new.norm(dim=1)).max()
    # the dropped b²·G_qq term is second order in the residual: far below using u as is
    assert float(err_new) < 1e-5 and float(err_new) < 0.01 * float(err_old)


def test_tracking_within_a_step_agrees_with_a_solve_at_every_substep(monkeypatch):
    """Substeps 2.. keep the refined eigenvector (no Lanczos) and give the same flow."""
    params, X, y = _product_problem(R=3)
    lr = torch.tensor([0.2155, 0.2, 0.01], dtype=DT)  # at, past and far below the edge
    calls = {"n": 0}
    solve = flows.FlowModel.top_eigs

    def counted(self, *a, **k):
        calls["n"] += 1
        return solve(self, *a, **k)

    monkeypatch.setattr(flows.FlowModel, "top_eigs", counted)
    runs, keep = {}, flows.TRACK_TOL
    for tol in (keep, -1.0):  # -1: every check fails, so every substep solves
        monkeypatch.setattr(flows, "TRACK_TOL", tol)
        calls["n"] = 0
        cf = _flows(_product_loss, params, X, y, substeps=4)
        outs = []
        for t in range(8):
            outs.append(cf.measure(t, lr, params))
            cf.advance(t, lr)
        runs[tol] = (outs, calls["n"])
    (tracked, n_tracked), (solved, n_solved) = runs[keep], runs[-1.0]
    assert n_tracked < n_solved
    for a, b in zip(tracked, solved, strict=True):
        for name in flows.STEP_NAMES:
            # both eigenvectors meet the residual test Lanczos is held to (1e-3·S):
            # S stays pinned alike; σ² and L(w_CF) agree to the eigen-solve's tolerance
            rtol = PIN_TOL if name.endswith("sharpness") else 1e-4
            torch.testing.assert_close(a[name], b[name], rtol=rtol, atol=1e-10, equal_nan=True)


def test_sigma2_keeps_the_sharpness_still_to_first_order():
    """σ² = 2⟨−∇L, ∇S⟩/‖∇S‖² makes ⟨∇S, ∇L + ½σ²∇S⟩ = 0 (and is 0 when GF lowers S)."""
    g = torch.tensor([[1.0, -2.0, 0.5], [1.0, 0.0, 0.0]], dtype=DT)
    gs = torch.tensor([[-0.5, 1.0, 2.0], [1.0, 1.0, 0.0]], dtype=DT)
    s2 = flows.sigma2_one_direction(g, gs)
    assert float((gs[0] * (g[0] + 0.5 * s2[0] * gs[0])).sum()) == pytest.approx(0.0, abs=1e-14)
    assert float(s2[1]) == 0.0  # ⟨−∇L, ∇S⟩ < 0: gradient flow already lowers S


# ------------------------------------------------------------------ the integrator
def test_below_the_edge_the_central_flow_is_the_gradient_flow():
    params, X, y = _mlp_problem()
    cf = _flows(_mlp_loss, params, X, y, substeps=2)
    lr = torch.tensor([0.01, 0.02], dtype=DT)  # 2/η = 200, 100: far above S ≈ 3
    for t in range(3):
        out = cf.measure(t, lr, params)
        cf.advance(t, lr)
    assert torch.equal(cf.w_cf, cf.w_gf)
    assert not torch.equal(cf.w_cf, curvature.flatten(params))
    out = cf.measure(3, lr, params)
    assert torch.equal(out["cf_sigma2"], torch.zeros(2, dtype=DT))
    assert torch.equal(out["cf_predicted_loss"], out["cf_loss"])
    assert torch.equal(out["cf_loss"], out["gf_loss"])
    torch.testing.assert_close(out["cf_sharpness"], out["gf_sharpness"], rtol=1e-8, atol=0)
    assert cf.per_run()["cf_edge_step"].tolist() == [-1, -1]


#: |S·η/2 − 1| along the constrained segment: the Newton correction after each Euler
#: substep holds it to round-off on this problem; 1e-6 leaves room for the eigen-solve
PIN_TOL = 1e-6


def test_the_sharpness_stays_at_two_over_eta_once_the_edge_is_reached():
    params, X, y = _product_problem()
    cf = _flows(_product_loss, params, X, y)
    S0 = float(cf.measure(0, torch.ones(1, dtype=DT), params)["cf_sharpness"][0])
    lr = torch.tensor([2 / (1.01 * S0)], dtype=DT)  # 1 % below the edge at θ₀
    ratios, sig = [], []
    for t in range(8):
        out = cf.measure(t, lr, params)
        ratios.append(float(out["cf_sharpness"][0] * lr[0] / 2))
        sig.append(float(out["cf_sigma2"][0]))
        cf.advance(t, lr)
    edge = int(cf.per_run()["cf_edge_step"][0])
    assert 0 <= edge <= 3
    assert ratios[0] < 0.995
    after = np.array(ratios[edge + 1 :])
    assert len(after) >= 3 and np.abs(after - 1).max() < PIN_TOL, ratios
    # the gradient flow, unconstrained, sharpens past 2/η
    out = cf.measure(8, lr, params)
    assert float(out["gf_sharpness"][0] * lr[0] / 2) > 1.001
    assert float(out["cf_loss"][0]) <= float(out["gf_loss"][0]) + 1e-12 or sig[edge] > 0


def test_batched_runs_equal_one_run_at_a_time():
    params, X, y = _product_problem(R=3)
    lr = torch.tensor([0.2155, 0.2, 0.01], dtype=DT)  # at, past and far below the edge
    both = _flows(_product_loss, params, X, y, substeps=2)
    for t in range(4):
        both.measure(t, lr, params)
        both.advance(t, lr)
    out = both.measure(4, lr, params)
    for r in range(3):
        one_p = tuple(p[r : r + 1] for p in params)
        one = _flows(_product_loss, one_p, X, y, substeps=2)
        for t in range(4):
            one.measure(t, lr[r : r + 1], one_p)
            one.advance(t, lr[r : r + 1])
        o1 = one.measure(4, lr[r : r + 1], one_p)
        torch.testing.assert_close(one.w_cf[0], both.w_cf[r], rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(one.w_gf[0], both.w_gf[r], rtol=1e-12, atol=1e-14)
        for name in flows.STEP_NAMES:
            torch.testing.assert_close(o1[name][0], out[name][r], rtol=1e-6, atol=1e-10)
        assert one.per_run()["cf_edge_step"][0] == both.per_run()["cf_edge_step"][r]


def test_a_flow_that_breaks_gives_nan_for_its_run_only():
    params, X, y = _product_problem(R=2)
    cf = _flows(_product_loss, params, X, y, substeps=1)
    lr = torch.tensor([0.01, math.inf], dtype=DT)
    cf.advance(0, lr)
    out = cf.measure(1, lr, params)
    assert torch.isfinite(out["cf_loss"][0]) and torch.isfinite(out["gf_loss"][0])
    assert torch.isnan(out["cf_loss"][1]) and torch.isnan(out["gd_gf_distance"][1])


# ------------------------------------------------------------------ k ≥ 2
def test_psd_solve_of_a_hand_checkable_two_by_two_case():
    """With G_11 = e1, G_22 = e2, G_12 = e3/√2 the quadratic is ¼‖x‖² in the orthonormal
    basis, so Σ is the PSD projection of −2B: B = [[−1, 2], [2, −1]] gives −2B with
    eigenvalues 6 (along (1, −1)/√2) and −2, and Σ = 3·[[1, −1], [−1, 1]]."""
    pytest.importorskip("cvxpy")
    G = np.zeros((2, 2, 3))
    G[0, 0, 0] = G[1, 1, 1] = 1.0
    G[0, 1, 2] = G[1, 0, 2] = 1 / math.sqrt(2)
    grad = np.array([-1.0, -1.0, 2 * math.sqrt(2)])  # B_ij = ⟨G_ij, ∇L⟩
    np.testing.assert_allclose(
        flows.solve_sigma(G, grad), [[3.0, -3.0], [-3.0, 3.0]], rtol=1e-6, atol=1e-6
    )
    # no coupling: Σ diagonal, Σ_ii = max(0, −2B_ii/‖G_ii‖²) (the k = 1 formula per direction)
    np.testing.assert_allclose(
        flows.solve_sigma(G, np.array([-1.5, 0.5, 0.0])), np.diag([3.0, 0.0]), atol=1e-6
    )


def test_psd_solve_reduces_to_sigma2_when_the_second_direction_is_not_pushed_up():
    """G_11, G_12, G_22 generic; ∇L = −G_11 + c·q with q ⟂ G_11, G_12 and ⟨q, G_22⟩ > 0.
    Then Σ = diag(σ², 0), σ² = 2⟨−∇L, G_11⟩/‖G_11‖² = 2, satisfies the KKT conditions
    (Z = B + 𝒜(Σ) = [[0, 0], [0, c⟨G_22, q⟩]] ⪰ 0, ⟨Σ, Z⟩ = 0): rank one, the k = 1 value."""
    pytest.importorskip("cvxpy")
    rng = np.random.default_rng(0)
    g11, g12, g22 = rng.standard_normal((3, 6))
    Q, _ = np.linalg.qr(np.stack([g11, g12], 1), mode="complete")
    q = Q[:, 2:] @ (Q[:, 2:].T @ g22)  # g22's part orthogonal to g11 and g12
    G = np.stack([np.stack([g11, g12]), np.stack([g12, g22])])
    grad = -g11 + 0.7 * q
    sig = flows.solve_sigma(G, grad)
    np.testing.assert_allclose(sig, [[2.0, 0.0], [0.0, 0.0]], atol=1e-6)
    assert flows.solve_sigma(G[:1, :1], grad)[0, 0] == pytest.approx(2.0, rel=1e-12)


def test_two_tracked_directions_with_the_second_far_below_the_edge_equal_one():
    pytest.importorskip("cvxpy")
    params, X, y = _product_problem()
    lr = torch.tensor([0.2155], dtype=DT)
    one, two = (_flows(_product_loss, params, X, y, substeps=4, eigs=k) for k in (1, 2))
    for t in range(3):
        o1, o2 = one.measure(t, lr, params), two.measure(t, lr, params)
        one.advance(t, lr)
        two.advance(t, lr)
    assert int(one.per_run()["cf_edge_step"][0]) >= 0
    torch.testing.assert_close(two.w_cf, one.w_cf, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(o2["cf_sigma2"], o1["cf_sigma2"], rtol=1e-6, atol=1e-12)


# ------------------------------------------------------------------ the engine
def _tiny(**train):
    return {
        "name": "cf",
        "data": {"kind": "overlap", "n_train": 24, "n_test": 10, "d": 3, "seed": 0},
        "model": {"depth": 2, "width": 6, "activation": "tanh"},
        "train": {
            "loss": "mse",
            "steps": 6,
            "lr": 0.5,
            "dtype": "float64",
            "flow": "central",
            "flow_substeps": 2,
            **train,
        },
        "metrics": {"every": 3, "dense_early": False, "sharpness": {"iters": 10}},
        "sweep": {"seed": [0, 1]},
    }


def test_the_engine_writes_every_flow_variable_and_leaves_gd_alone(tmp_path):
    import implicit_bias as ib

    raw = _tiny()
    # two data seeds: the runs of a chunk hold their own data (the per-run layout)
    raw["sweep"] = {"data.seed": [0, 1], "train.flow": ["none", "central"]}
    tree = ib.run(raw, out=tmp_path / "cf", progress=False)
    groups = [g.to_dataset() for g in tree.children.values()]
    (ds,) = [g for g in groups if "cf_loss" in g]
    (plain,) = [g for g in groups if "cf_loss" not in g]
    for name in flows.STEP_NAMES:
        assert ds[name].dims == ("run", "step"), name
        assert np.isfinite(ds[name].values).all(), name
    assert ds["cf_edge_step"].dims == ("run",)
    assert not np.allclose(ds["cf_loss"].values[0], ds["cf_loss"].values[1])
    assert "cf_edge_step" not in plain
    # the flows run beside GD and leave it as it was, run by run
    by_seed = {int(s): i for i, s in enumerate(plain["data.seed"].values)}
    for i, seed in enumerate(ds["data.seed"].values):
        j = by_seed[int(seed)]
        np.testing.assert_array_equal(ds["loss"].values[i], plain["loss"].values[j])
        np.testing.assert_array_equal(ds["sharpness"].values[i], plain["sharpness"].values[j])
    # at step 0 all three coincide
    np.testing.assert_allclose(ds["gd_cf_distance"].values[:, 0], 0.0, atol=1e-12)
    np.testing.assert_allclose(ds["cf_loss"].values[:, 0], ds["loss"].values[:, 0], rtol=1e-12)
    np.testing.assert_allclose(
        ds["cf_sharpness"].values[:, 0], ds["sharpness"].values[:, 0], rtol=1e-4
    )


@pytest.mark.slow
def test_the_generic_backend_and_per_run_data_give_the_same_flows(tmp_path):
    """The hand-written MLP path and the torch.func path feed the flows the same
    gradients and HVPs; data drawn per run (two data seeds in one chunk) is batched too."""
    import implicit_bias as ib

    raw = _tiny(steps=2)
    raw["sweep"] = {"data.seed": [0, 1], "model.backend": ["auto", "generic"]}
    tree = ib.run(raw, out=tmp_path / "cf", progress=False)
    a, b = sorted(
        (g.to_dataset() for g in tree.children.values()),
        key=lambda d: str(d["model.backend"].values[0]),
    )
    assert a.sizes["run"] == b.sizes["run"] == 2
    for name in flows.STEP_NAMES:
        np.testing.assert_allclose(a[name].values, b[name].values, rtol=1e-7, atol=1e-10)
    assert not np.allclose(a["cf_loss"].values[0], a["cf_loss"].values[1])


def test_without_flow_there_are_no_flow_variables_and_the_hash_is_unchanged():
    from implicit_bias.config import load_config

    raw = _tiny()
    del raw["train"]["flow"], raw["train"]["flow_substeps"]
    base = load_config(raw)
    assert base.train.flow == "none"
    with_keys = load_config({**raw, "train": {**raw["train"], "flow_substeps": 8}})
    assert base.config_hash() == with_keys.config_hash()


@pytest.mark.parametrize(
    ("train", "key"),
    [
        ({"optimizer": "momentum"}, "train.flow"),
        ({"batch_size": 8}, "train.flow"),
        ({"flow_substeps": 0}, "train.flow_substeps"),
        ({"flow_eigs": 0}, "train.flow_eigs"),
        ({"flow_substeps": 10**9}, "train.flow_substeps"),  # bounded: not a run that never ends
        ({"flow_eigs": 3000}, "train.flow_eigs"),
        ({"flow": "centre"}, "train.flow"),
    ],
)
def test_bad_flow_settings_name_the_key(train, key):
    from implicit_bias._errors import UserInputError
    from implicit_bias.config import load_config

    with pytest.raises(UserInputError, match=key.replace(".", r"\.")) as err:
        load_config(_tiny(**train))
    assert "\n" not in str(err.value)


def test_more_directions_than_parameters_is_refused_in_one_line(tmp_path):
    import implicit_bias as ib
    from implicit_bias._errors import UserInputError

    pytest.importorskip("cvxpy")
    # 30 directions: within the key's bound, above the tiny net's 24 trained parameters
    with pytest.raises(UserInputError, match=r"train\.flow_eigs=30 exceeds") as err:
        ib.run(_tiny(flow_eigs=30), out=tmp_path / "x", progress=False)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "x").exists()


def test_cli_flow_with_another_optimizer_exits_2_with_one_line(tmp_path):
    lines = validate_error_lines(
        tmp_path, "data: {kind: overlap}\ntrain: {optimizer: adam, flow: central}\n"
    )
    assert len(lines) == 1 and "train.flow" in lines[0], lines


@pytest.mark.slow
def test_the_shipped_config_pins_the_sharpness_and_its_integrator_has_converged(tmp_path):
    """configs/central-flow.yaml for 40 steps at η = 0.5 (edge from step ~5): after the
    edge S(w_CF) stays within 2 % of 2/η, and 4 and 8 Euler substeps agree on L(w_CF)
    within 5 % (the integrator's error is below what the comparisons read)."""
    from pathlib import Path

    import implicit_bias as ib

    cfg = Path(__file__).resolve().parents[1] / "configs" / "central-flow.yaml"
    tree = ib.run(
        cfg,
        out=tmp_path / "cf",
        overrides={"train.steps": 40, "sweep.train.lr": [0.5], "sweep.train.flow_substeps": [4, 8]},
        progress=False,
    )
    (a, b) = sorted(
        (g.to_dataset() for g in tree.children.values()),
        key=lambda d: int(d["train.flow_substeps"].values[0]),
    )
    for ds in (a, b):
        edge = int(ds["cf_edge_step"].values[0])
        assert 0 <= edge < 30
        after = ds["step"].values > edge
        ratio = ds["cf_sharpness"].values[0][after] * float(ds["lr"].values[0]) / 2
        assert np.abs(ratio - 1).max() < 0.02, ratio
        assert (ds["cf_sigma2"].values[0] >= 0).all()
    np.testing.assert_allclose(a["cf_loss"].values, b["cf_loss"].values, rtol=0.05)
