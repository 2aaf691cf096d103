"""Curvature toolbox against dense float64 references (SPEC §3)."""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import pytest
import torch
from torch.func import grad, hessian, jacrev

from implicit_bias.curvature import (
    flatten,
    gauss_newton_operator,
    hessian_operator,
    hutchinson_trace,
    lanczos,
    ntk_gram,
    ntk_operator,
    spectral_density,
    unflatten,
)
from implicit_bias.losses import mean_loss, per_sample
from implicit_bias.models import ModelSpec, fixed_last_layer, forward, init_params

DT = torch.float64
R = 3
N = 8


@dataclass(frozen=True)
class Case:
    name: str
    spec: ModelSpec
    loss: str
    init_scale: float = 1.0


CASES = [
    Case("lin2-ntk-logistic", ModelSpec(d=3, depth=2, width=4), "logistic"),
    Case(
        "relu2-standard-exp",
        ModelSpec(d=3, depth=2, width=5, activation="relu", parametrization="standard"),
        "exponential",
        0.7,
    ),
    Case(
        "sleaky3-direct-mse",
        ModelSpec(d=2, depth=3, width=3, activation="smooth_leaky_relu", parametrization="direct"),
        "mse",
        0.8,
    ),
    Case(
        "relu2-fixedsign-logistic",
        ModelSpec(d=3, depth=2, width=4, activation="relu", last_layer="fixed_sign"),
        "logistic",
        2.0,
    ),
    Case(
        "lin3-fixedsign-standard-exp",
        ModelSpec(
            d=2,
            depth=3,
            width=3,
            parametrization="standard",
            last_layer="fixed_sign",
        ),
        "exponential",
    ),
]
IDS = [c.name for c in CASES]
LAYOUTS = [None, 0]  # data shared by all runs / one data set per run


def setup(case: Case, layout: int | None):
    """Batched params of R seeds, data in the given layout, and per-run closures."""
    spec = case.spec
    runs = [init_params(spec, seed, case.init_scale, dtype=DT) for seed in (11, 12, 13)]
    params = tuple(torch.stack(ws) for ws in zip(*runs, strict=True))
    gen = torch.Generator().manual_seed(zlib.crc32(case.name.encode()))
    shape = (N,) if layout is None else (R, N)
    X = torch.randn((*shape, spec.d), generator=gen, dtype=DT)
    y = torch.randint(0, 2, shape, generator=gen).to(DT) * 2 - 1
    a = fixed_last_layer(spec, DT, "cpu")

    def output_fn(p, x):
        return forward(p, x, spec, a)

    def loss_fn(p, x, yy):
        return mean_loss(output_fn(p, x), yy, case.loss)

    return params, X, y, output_fn, loss_fn


def run_data(t: torch.Tensor, layout: int | None, r: int) -> torch.Tensor:
    return t if layout is None else t[r]


def dense(matvec, R: int, P: int) -> torch.Tensor:
    """Materialise a batched operator column by column: (R, P, P)."""
    eye = torch.eye(P, dtype=DT).expand(R, P, P)
    return torch.vmap(matvec, in_dims=2, out_dims=2)(eye)


def single(flat: torch.Tensor, params):
    """Unbatched tuple for one run from its flat vector (P,)."""
    return unflatten(flat, params)


def dense_hessian(params, X, y, loss_fn, layout):
    flat = flatten(params)
    out = []
    for r in range(R):
        x, yy = run_data(X, layout, r), run_data(y, layout, r)
        out.append(hessian(lambda th, x=x, yy=yy: loss_fn(single(th, params), x, yy))(flat[r]))
    return torch.stack(out)


def rel_err(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor | float) -> float:
    return float(((a - b).abs() / scale).max())


def sym_batch(eigs: torch.Tensor, seed: int) -> torch.Tensor:
    """R symmetric matrices Uᵣ diag(eigs[r]) Uᵣᵀ with random orthogonal Uᵣ."""
    gen = torch.Generator().manual_seed(seed)
    P = eigs.shape[-1]
    U, _ = torch.linalg.qr(torch.randn(eigs.shape[0], P, P, generator=gen, dtype=eigs.dtype))
    return U @ torch.diag_embed(eigs) @ U.mT


def mv(A: torch.Tensor):
    return lambda v: torch.einsum("rij,rj->ri", A, v)


# ---------------------------------------------------------------- operators


def test_flatten_roundtrip():
    params, *_ = setup(CASES[2], None)
    flat = flatten(params)
    assert flat.shape == (R, CASES[2].spec.n_params)
    back = unflatten(flat, params)
    assert all(torch.equal(p, q) for p, q in zip(params, back, strict=True))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_hessian_operator_matches_dense(case, layout):
    params, X, y, _, loss_fn = setup(case, layout)
    P = case.spec.n_params
    H = dense(hessian_operator(loss_fn, params, (X, y), (layout, layout)), R, P)
    ref = dense_hessian(params, X, y, loss_fn, layout)
    assert rel_err(H, ref, ref.abs().max()) <= 1e-10


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_lanczos_exact_on_hessian(case, layout):
    params, X, y, _, loss_fn = setup(case, layout)
    P = case.spec.n_params
    op = hessian_operator(loss_fn, params, (X, y), (layout, layout))
    ref = torch.linalg.eigvalsh(dense_hessian(params, X, y, loss_fn, layout)).flip(-1)
    scale = ref.abs().amax(-1, keepdim=True)
    gen = torch.Generator().manual_seed(0)
    v0 = torch.randn(R, P, generator=gen, dtype=DT)
    for k in (1, 3):
        out = lanczos(op, v0, iters=P + 5, k=k, generator=gen)  # capped at P: exact
        assert out.eigenvalues.shape == (R, k) and out.eigenvectors.shape == (R, k, P)
        assert rel_err(out.eigenvalues, ref[:, :k], scale) <= 1e-6
        assert (out.residuals <= 1e-8 * scale).all() and out.converged.all()


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gauss_newton_matches_dense(case, layout):
    params, X, y, output_fn, _ = setup(case, layout)
    P = case.spec.n_params
    G = dense(gauss_newton_operator(output_fn, case.loss, params, X, y, (layout, layout)), R, P)
    flat = flatten(params)
    # ℓ'' from autograd on the losses module, independent of the operator's formulas.
    d2 = torch.vmap(grad(grad(lambda f, yy: per_sample(f, yy, case.loss))))
    refs = []
    for r in range(R):
        x, yy = run_data(X, layout, r), run_data(y, layout, r)
        J = jacrev(lambda th, x=x: output_fn(single(th, params), x))(flat[r])
        f = output_fn(single(flat[r], params), x)
        refs.append(J.T @ (d2(f, yy)[:, None] * J) / N)
    ref = torch.stack(refs)
    assert rel_err(G, ref, ref.abs().max()) <= 1e-10


def test_gauss_newton_equals_hessian_for_linear_model():
    """For f linear in θ (depth 1) the Hessian of the loss is exactly its GGN."""
    case = Case("linear", ModelSpec(d=5, depth=1), "logistic")
    params, X, y, output_fn, loss_fn = setup(case, None)
    H = dense(hessian_operator(loss_fn, params, (X, y)), R, 5)
    G = dense(gauss_newton_operator(output_fn, "logistic", params, X, y), R, 5)
    assert rel_err(H, G, H.abs().max()) <= 1e-12


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_ntk_gram_and_top_eigenvalue(case, layout):
    params, X, _, output_fn, _ = setup(case, layout)
    flat = flatten(params)
    ref = []
    for r in range(R):
        x = run_data(X, layout, r)
        J = jacrev(lambda th, x=x: output_fn(single(th, params), x))(flat[r])
        ref.append(J @ J.T / N)
    ref = torch.stack(ref)
    gram = ntk_gram(output_fn, params, X, layout)
    op = ntk_operator(output_fn, params, X, layout)
    scale = ref.abs().max()
    assert gram.shape == (R, N, N) and rel_err(gram, ref, scale) <= 1e-12
    assert rel_err(dense(op, R, N), ref, scale) <= 1e-12
    gen = torch.Generator().manual_seed(1)
    out = lanczos(op, torch.zeros(R, N, dtype=DT), iters=N, generator=gen)
    top = torch.linalg.eigvalsh(ref)[:, -1:]
    assert rel_err(out.eigenvalues, top, top) <= 1e-6


def test_ntk_top_equals_mse_gauss_newton_top():
    """Θ = JJᵀ/n and the MSE GGN JᵀJ/n share their nonzero spectrum."""
    case = CASES[2]
    params, X, y, output_fn, _ = setup(case, None)
    P, gen = case.spec.n_params, torch.Generator().manual_seed(2)
    ggn = gauss_newton_operator(output_fn, "mse", params, X, y)
    a = lanczos(ggn, torch.zeros(R, P, dtype=DT), iters=P, generator=gen).eigenvalues
    b = lanczos(ntk_operator(output_fn, params, X), torch.ones(R, N, dtype=DT), N).eigenvalues
    assert rel_err(a, b, b) <= 1e-10


# ---------------------------------------------------------------- Lanczos


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-6), (torch.float32, 1e-4)])
def test_lanczos_few_iterations_with_gap(dtype, tol):
    P, gen = 200, torch.Generator().manual_seed(3)
    bulk = torch.rand(R, P - 3, generator=gen, dtype=DT) * 2 - 1  # in [−1, 1]
    eigs = torch.cat([torch.tensor([10.0, 9.0, 8.0], dtype=DT).expand(R, 3), bulk], 1)
    eigs[1] *= 0.5  # different scales per run
    A = sym_batch(eigs, seed=4)
    v0 = torch.randn(R, P, generator=gen, dtype=DT).to(dtype)
    out = lanczos(mv(A.to(dtype)), v0, iters=40, k=3, generator=gen)
    top = eigs.sort(-1, descending=True).values[:, :3]
    assert out.eigenvalues.dtype == dtype
    assert rel_err(out.eigenvalues.double(), top, top[:, :1]) <= tol
    assert out.converged.all()
    # The stored residuals are the true ones (to roundoff at ‖A‖ = 10).
    V, lam = out.eigenvectors.double(), out.eigenvalues.double()
    res = (torch.einsum("rij,rkj->rki", A, V) - lam[..., None] * V).norm(dim=-1)
    assert torch.allclose(out.residuals.double(), res, atol=1000 * torch.finfo(dtype).eps)
    assert torch.allclose(V.norm(dim=-1), torch.ones(R, 3, dtype=DT))


def test_lanczos_without_residuals_gives_the_same_pairs_with_one_matvec_fewer():
    P, gen = 50, torch.Generator().manual_seed(11)
    eigs = torch.linspace(-1, 4, P, dtype=DT).expand(R, P).clone()
    A = sym_batch(eigs, seed=12)
    v0 = torch.randn(R, P, generator=gen, dtype=DT)
    calls = {True: 0, False: 0}
    outs = {}
    for explicit in (True, False):

        def counted(v, explicit=explicit):
            calls[explicit] += 1
            return mv(A)(v)

        outs[explicit] = lanczos(counted, v0, 30, k=1, tol=1e-6, early_stop=True,
                                 residuals=explicit)  # fmt: skip
    assert calls[False] == calls[True] - 1
    assert torch.equal(outs[False].eigenvalues, outs[True].eigenvalues)
    assert torch.equal(outs[False].eigenvectors, outs[True].eigenvectors)
    assert outs[False].residuals.isnan().all() and not outs[False].converged.any()


def test_lanczos_returns_top_algebraic_not_largest_magnitude():
    P = 30
    d = torch.cat([torch.tensor([-10.0, 5.0]), torch.linspace(0, 1, P - 2)]).to(DT)
    A = sym_batch(d.expand(R, P), seed=5)
    gen = torch.Generator().manual_seed(6)
    for iters in (P, 20):
        out = lanczos(mv(A), torch.randn(R, P, generator=gen, dtype=DT), iters, k=1)
        assert torch.allclose(out.eigenvalues, torch.full((R, 1), 5.0, dtype=DT), rtol=1e-6)
    diag = torch.diag_embed(torch.tensor([-10.0, 1, 2, 3, 4], dtype=DT).expand(R, 5))
    out = lanczos(mv(diag), torch.ones(R, 5, dtype=DT), iters=5, k=2)
    assert torch.allclose(out.eigenvalues, torch.tensor([4.0, 3.0], dtype=DT).expand(R, 2))


def test_lanczos_breakdown_restarts_without_nan():
    """iters > rank: exact breakdown (run 1), roundoff breakdown (run 0), zero matrix (run 2)."""
    P, gen = 20, torch.Generator().manual_seed(7)
    B = torch.randn(P, 3, generator=gen, dtype=DT)
    A = torch.stack(
        [
            B @ B.T,
            torch.diag(torch.tensor([3.0, 2, 1] + [0] * (P - 3), dtype=DT)),
            torch.zeros(P, P),
        ]
    ).to(DT)
    v0 = torch.zeros(R, P, dtype=DT)
    v0[0] = torch.randn(P, generator=gen, dtype=DT)
    v0[1, :2] = 1.0  # Krylov space spanned after 2 steps: β = 0 exactly
    ref = torch.linalg.eigvalsh(A).flip(-1)
    scale = ref.abs().amax(-1, keepdim=True).clamp_min(1.0)
    out = lanczos(mv(A), v0, iters=8, k=3, generator=gen)
    assert torch.isfinite(out.eigenvalues).all() and torch.isfinite(out.eigenvectors).all()
    assert rel_err(out.eigenvalues, ref[:, :3], scale) <= 1e-10 and out.converged.all()
    # The full spectrum (k = P), and the restarted basis stays orthonormal.
    full = lanczos(mv(A), v0, iters=P, k=P, generator=gen)
    assert torch.isfinite(full.eigenvalues).all()
    assert rel_err(full.eigenvalues, ref, scale) <= 1e-10
    V = full.eigenvectors
    assert torch.allclose(V @ V.mT, torch.eye(P, dtype=DT).expand(R, P, P), atol=1e-10)


def test_lanczos_warm_start_and_bad_start_rows():
    P, gen = 12, torch.Generator().manual_seed(8)
    eigs = torch.linspace(-3, 2, P, dtype=DT).expand(R, P).clone()
    A = sym_batch(eigs, seed=9)
    _, U = torch.linalg.eigh(A)
    out = lanczos(mv(A), U[:, :, -1], iters=1)  # exact eigenvector: one step suffices
    assert torch.allclose(out.eigenvalues, torch.full((R, 1), 2.0, dtype=DT))
    assert (out.residuals < 1e-12).all()
    v0 = torch.randn(R, P, generator=gen, dtype=DT)
    v0[0], v0[2, 3] = 0.0, float("nan")  # replaced by random vectors
    out = lanczos(mv(A), v0, iters=P, k=2, generator=gen)
    assert torch.allclose(out.eigenvalues, torch.tensor([2.0, eigs[0, -2]], dtype=DT).expand(R, 2))
    with pytest.raises(ValueError, match="k"):
        lanczos(mv(A), v0, iters=2, k=3)


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
def test_nonfinite_run_is_isolated(bad_value):
    P = 15
    eigs = torch.linspace(-1, 4, P, dtype=DT).expand(R, P)
    A = sym_batch(eigs, seed=10)

    def broken(v):
        out = mv(A)(v).clone()
        out[1] = bad_value
        return out

    v0 = torch.randn(R, P, generator=torch.Generator().manual_seed(0), dtype=DT)
    clean = lanczos(mv(A), v0, P, k=2, generator=torch.Generator().manual_seed(1))
    out = lanczos(broken, v0, P, k=2, generator=torch.Generator().manual_seed(1))
    for field in ("eigenvalues", "eigenvectors", "residuals"):
        got, ref = getattr(out, field), getattr(clean, field)
        assert torch.isnan(got[1]).all()
        assert torch.allclose(got[[0, 2]], ref[[0, 2]], rtol=1e-12, atol=1e-12)
    assert not out.converged[1].any() and out.converged[[0, 2]].all()
    nodes, weights = spectral_density(broken, R, P, probes=2, iters=5, dtype=DT)
    assert torch.isnan(nodes[1]).all() and torch.isnan(weights[1]).all()
    assert torch.isfinite(nodes[[0, 2]]).all() and torch.isfinite(weights[[0, 2]]).all()
    tr = hutchinson_trace(broken, R, P, probes=3, dtype=DT)
    assert not torch.isfinite(tr[1]) and torch.isfinite(tr[[0, 2]]).all()


# ---------------------------------------------------------------- trace and density


def hutchinson_sd(A: torch.Tensor) -> torch.Tensor:
    """Std of one Rademacher probe: √(2(‖A‖²_F − Σ Aᵢᵢ²))."""
    return (2 * (A.square().sum((-1, -2)) - A.diagonal(0, -2, -1).square().sum(-1))).sqrt()


def test_hutchinson_trace():
    P = 10
    diag = torch.diag_embed(torch.randn(R, P, generator=torch.Generator().manual_seed(0)))
    diag = diag.to(DT)
    tr = hutchinson_trace(mv(diag), R, P, probes=1, dtype=DT)
    assert torch.allclose(tr, diag.diagonal(0, -2, -1).sum(-1), atol=1e-12)  # exact for diagonal
    # A Hessian (dense, as the operator is checked above): within 5 standard errors.
    case = CASES[1]
    params, X, y, _, loss_fn = setup(case, 0)
    H = dense_hessian(params, X, y, loss_fn, 0)
    P, probes = case.spec.n_params, 400
    gen = torch.Generator().manual_seed(1)
    est = hutchinson_trace(mv(H), R, P, probes=probes, dtype=DT, generator=gen)
    exact = H.diagonal(0, -2, -1).sum(-1)
    assert ((est - exact).abs() <= 5 * hutchinson_sd(H) / math.sqrt(probes)).all()
    # The operator gives the same estimate as its dense matrix for the same probes.
    op = hessian_operator(loss_fn, params, (X, y), (0, 0))
    a = hutchinson_trace(op, R, P, 5, DT, "cpu", torch.Generator().manual_seed(2))
    b = hutchinson_trace(mv(H), R, P, 5, DT, "cpu", torch.Generator().manual_seed(2))
    assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_spectral_density_slq():
    case = CASES[2]
    params, X, y, _, loss_fn = setup(case, None)
    H = dense_hessian(params, X, y, loss_fn, None)
    P, probes, iters = case.spec.n_params, 100, 8
    gen = torch.Generator().manual_seed(2)
    nodes, weights = spectral_density(mv(H), R, P, probes, iters, dtype=DT, generator=gen)
    assert nodes.shape == weights.shape == (R, probes * iters)
    assert torch.allclose(weights.sum(-1), torch.ones(R, dtype=DT), atol=1e-12)
    assert (weights >= 0).all()
    lam = torch.linalg.eigvalsh(H)
    slack = 1e-10 * lam.abs().amax(-1, keepdim=True)
    assert (nodes >= lam[:, :1] - slack).all() and (nodes <= lam[:, -1:] + slack).all()
    # Σ wᵢ θᵢ = mean_z zᵀHz / P: a Hutchinson estimate of tr H / P, 5 standard errors.
    mean = (weights * nodes).sum(-1)
    exact = H.diagonal(0, -2, -1).sum(-1) / P
    assert ((mean - exact).abs() <= 5 * hutchinson_sd(H) / P / math.sqrt(probes)).all()
    # The Hessian operator gives the same quadrature as its dense matrix.
    op = hessian_operator(loss_fn, params, (X, y))
    a = spectral_density(op, R, P, 2, P, DT, "cpu", torch.Generator().manual_seed(3))
    b = spectral_density(mv(H), R, P, 2, P, DT, "cpu", torch.Generator().manual_seed(3))
    scale = lam.abs().max()
    assert rel_err(a[0], b[0], scale) <= 1e-8 and rel_err(a[1], b[1], 1.0) <= 1e-8
    # For a diagonal matrix every Rademacher probe gives the trace exactly.
    D = torch.diag_embed(torch.linspace(-2, 3, 7, dtype=DT).expand(R, 7))
    nodes, weights = spectral_density(mv(D), R, 7, probes=3, iters=20, dtype=DT, generator=gen)
    assert nodes.shape == (R, 21)
    assert torch.allclose((weights * nodes).sum(-1), torch.full((R,), 0.5, dtype=DT))


@pytest.mark.parametrize("vmappable", [True, False])
def test_probe_blocks_equal_one_probe_at_a_time(monkeypatch, vmappable):
    """Probes go through the operator in vmapped blocks; the same numbers as one
    probe per matvec (the loop the block replaces), and a matvec vmap cannot
    trace (a host read) falls back to that loop."""
    import implicit_bias.curvature as cv

    case = CASES[2]
    params, X, y, _, loss_fn = setup(case, None)
    op = hessian_operator(loss_fn, params, (X, y))
    P = case.spec.n_params

    def host_read(v):
        assert v.abs().max().item() >= 0  # .item() cannot be vmapped
        return op(v)

    f = op if vmappable else host_read

    def both():
        gen = torch.Generator().manual_seed(5)
        tr = hutchinson_trace(f, R, P, 7, DT, "cpu", gen)
        return tr, *spectral_density(f, R, P, 6, 5, DT, "cpu", gen)

    assert cv._probe_block(7, R, P, 5, DT) == 7  # a small problem: one block
    # few parameters but large activations (n·width·depth): one probe at a time
    assert cv._probe_block(400, 1, 100, 10, DT, matvec_elems=10**8) == 1
    assert cv._probe_block(400, 1, 100, 10, DT, matvec_elems=10**5) == 165  # 128 MiB / 0.81 MB
    blocked = both()
    monkeypatch.setattr(cv, "PROBE_BLOCK_BYTES", 1)  # one probe per block
    assert cv._probe_block(7, R, P, 5, DT) == 1
    single = both()
    for a, b in zip(blocked, single, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
