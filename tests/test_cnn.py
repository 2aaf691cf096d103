"""``model.kind: cnn`` and ``module`` on the generic path (float64)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.func import functional_call, hessian, jacrev

from implicit_bias import UserInputError, curvature
from implicit_bias.config import load_config
from implicit_bias.engine import Trainer
from implicit_bias.losses import mean_loss
from implicit_bias.models.cnn import convnet
from implicit_bias.models.generic import module_backend
from implicit_bias.sweep import make_plan

IMG = (1, 4, 4)


@pytest.mark.parametrize(
    ("loss", "pool", "channels"),
    [
        ("mse", "avg", [1]),
        pytest.param("cross_entropy", "max", [1, 2], marks=pytest.mark.slow),
    ],
)
def test_cnn_hvp_sharpness_and_ntk_equal_dense_references(loss, pool, channels):
    """H v, the top eigenvalue by Lanczos, and the NTK Gram of a small convnet equal the
    dense torch.func.hessian / jacrev ones (two runs, different weights)."""
    build = lambda: convnet(IMG, 3, channels, "tanh", pool)  # noqa: E731
    be = module_backend(build, loss, 3, IMG)
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(6, 16, generator=gen, dtype=torch.float64)
    y = torch.tensor([0.0, 1, 2, 2, 1, 0], dtype=torch.float64)
    params = tuple(
        torch.stack(ps)
        for ps in zip(*[be.init_one(s, 1.0, torch.float64) for s in (0, 1)], strict=True)
    )
    P = be.n_params
    skeleton = build().double()
    names = [n for n, _ in skeleton.named_parameters()]
    sizes = [p[0].numel() for p in params]
    hvp = be.hvp_operator(params, X, y, None)
    op = lambda v: curvature.flatten(hvp(curvature.unflatten(v, params)))  # noqa: E731
    v0 = torch.randn(2, P, generator=gen, dtype=torch.float64)
    top = curvature.lanczos(op, v0, iters=P, k=1).eigenvalues[:, 0]
    K, _, _ = be.jacobian_gram(params, X, None)
    for r in range(2):
        theta = curvature.flatten(params)[r]

        def f_of(t):
            ps = dict(
                zip(
                    names,
                    (c.reshape(p.shape[1:]) for c, p in zip(t.split(sizes), params, strict=True)),
                    strict=True,
                )
            )
            return functional_call(skeleton, ps, (X.reshape(-1, *IMG),))

        H = hessian(lambda t: mean_loss(f_of(t), y, loss, 3))(theta)
        torch.testing.assert_close(op(v0)[r], H @ v0[r], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(top[r], torch.linalg.eigvalsh(H)[-1], rtol=1e-8, atol=1e-10)
        J = jacrev(f_of)(theta).reshape(-1, P)
        torch.testing.assert_close(K[r], J @ J.T, rtol=1e-10, atol=1e-12)


DIGITS_CNN = {
    "name": "cnn",
    "data": {"kind": "sklearn", "name": "digits", "classes": "all", "n_train": 12, "n_test": 6},
    "model": {
        "kind": "cnn",
        "channels": [2, 3],
        "activation": "relu",
        "pool": "avg",
        "init_scale": 0.5,
    },
    "train": {"loss": "mse", "steps": 3, "lr": 0.01, "dtype": "float64"},
    "metrics": {"every": 3, "sharpness": {"iters": 3}, "stable_rank": True, "dense_early": False},
    "sweep": {"seed": [0, 1]},
}
USER = {
    **DIGITS_CNN,
    "model": {"kind": "module", "module": "_user_modules:small_mlp", "kwargs": {"width": 5}},
    "train": {**DIGITS_CNN["train"], "loss": "cross_entropy", "lr": 0.5},
    "sweep": {"seed": [0, 1]},
}


def _loop(run, make, image):
    """One run the plain way: the nn.Module itself (its own init under the run seed,
    times init_scale), autograd, a float rate."""
    torch.manual_seed(run.config.seed)
    net = make().double()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(run.config.model.init_scale)
    X = torch.as_tensor(run.data.X_train).reshape(-1, *image)
    y = torch.as_tensor(run.data.y_train).long()
    for _ in range(run.config.train.steps):
        f = net(X)
        if run.config.train.loss == "mse":
            val = 0.5 * (f - torch.nn.functional.one_hot(y, 10)).square().sum(1).mean()
        else:
            val = torch.nn.functional.cross_entropy(f, y)
        net.zero_grad()
        val.backward()
        with torch.no_grad():
            for p in net.parameters():
                p -= run.config.train.lr * p.grad
    return {n.replace(".", "_"): p.detach().numpy() for n, p in net.named_parameters()}


@pytest.mark.parametrize("which", ["cnn", "module"])
def test_batched_equals_per_run_loop(which):
    import _user_modules

    raw = DIGITS_CNN if which == "cnn" else USER
    plan = make_plan(load_config(raw))
    tr = Trainer(plan.runs)
    res = tr.train()
    if which == "cnn":
        make = lambda: convnet((1, 8, 8), 10, [2, 3], "relu", "avg")  # noqa: E731
        assert tr.param_names == ("0_weight", "0_bias", "3_weight", "3_bias", "7_weight", "7_bias")
        assert "stable_rank_0_weight" in res.per_step and "stable_rank_7_weight" in res.per_step
    else:
        make = lambda: _user_modules.small_mlp(width=5)  # noqa: E731
        assert tr.param_names == ("body_0_weight", "body_0_bias", "head_weight", "head_bias")
    for i, run in enumerate(plan.runs):
        image = (1, 8, 8) if which == "cnn" else (64,)
        for name, w in _loop(run, make, image).items():
            np.testing.assert_allclose(res.weights[f"final_{name}"][i], w, rtol=1e-9, atol=1e-12)
    assert np.isfinite(res.per_step["sharpness"]).all()


def _refused(raw, needle):
    with pytest.raises(UserInputError, match=needle):
        make_plan(load_config(raw))


@pytest.mark.parametrize(
    ("model", "needle"),
    [
        (
            {"kind": "module", "module": "_user_modules:with_batchnorm"},
            "BatchNorm1d .* holds buffers",
        ),
        ({"kind": "module", "module": "_user_modules:with_dropout"}, "Dropout .* is random"),
        ({"kind": "module", "module": "no_such_package.nets:make"}, "model.module: cannot import"),
        ({"kind": "module", "module": "_user_modules:nothing"}, "has no callable 'nothing'"),
        (
            {"kind": "module", "module": "_user_modules:small_mlp", "kwargs": {"outputs": 3}},
            r"outputs of shape \(3,\) .* 10 classes",
        ),
        ({"kind": "module", "module": "_user_modules:small_mlp", "kwargs": {"nope": 1}}, "failed"),
    ],
)
def test_bad_modules_are_refused_when_planned(model, needle):
    _refused({**DIGITS_CNN, "model": model}, needle)


def test_cnn_on_vectors_is_refused():
    raw = {**DIGITS_CNN, "data": {"kind": "overlap", "n_train": 8, "d": 3}}
    raw["train"] = {**raw["train"], "loss": "mse"}
    _refused(raw, "model.kind: cnn needs image data")


def test_cli_bad_module_exit_2_one_line_and_no_folder(tmp_path):
    import yaml
    from typer.testing import CliRunner

    from implicit_bias.cli import app

    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {**DIGITS_CNN, "model": {"kind": "module", "module": "_user_modules:with_batchnorm"}}
        )
    )
    r = CliRunner().invoke(app, ["run", str(cfg), "--out", str(tmp_path / "out")])
    assert r.exit_code == 2
    lines = [ln for ln in (r.stderr or r.stdout).strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "BatchNorm1d" in lines[0]
    assert not (tmp_path / "out").exists()


def test_image_npz_files(tmp_path):
    from implicit_bias.data import make_dataset

    rng = np.random.default_rng(0)
    X = rng.normal(size=(12, 2, 4, 4))
    y = np.arange(12) % 3
    np.savez(tmp_path / "img.npz", X_train=X, y_train=y)
    cfg = load_config({"data": {"kind": "file", "path": str(tmp_path / "img.npz")}})
    ds = make_dataset(cfg.data)
    assert ds.image_shape == (2, 4, 4) and ds.X_train.shape == (12, 32) and ds.n_classes == 3
    np.testing.assert_array_equal(ds.X_train.reshape(12, 2, 4, 4), X)


def test_loop_batching_equals_vmap():
    """``model.batching: loop`` gives the numbers of vmap (what ``auto`` takes)."""
    build = lambda: convnet(IMG, 3, [2], "elu", "max")  # noqa: E731
    loop = module_backend(build, "cross_entropy", 3, IMG, batching="loop")
    vm = module_backend(build, "cross_entropy", 3, IMG, batching="auto")
    assert loop.loop and not vm.loop
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(3, 5, 16, generator=gen, dtype=torch.float64)  # per-run inputs
    y = torch.tensor([[0.0, 1, 2, 1, 0]] * 3, dtype=torch.float64)
    params = tuple(
        torch.stack(ps)
        for ps in zip(*[vm.init_one(s, 1.0, torch.float64) for s in range(3)], strict=True)
    )
    V = tuple(torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in params)
    a, b = loop.value_and_grad(params, X, y, 0), vm.value_and_grad(params, X, y, 0)
    for u, w in zip((a[0], a[1], *a[2]), (b[0], b[1], *b[2]), strict=True):
        torch.testing.assert_close(u, w, rtol=1e-12, atol=1e-13)
    for gn in (False, True):
        for u, w in zip(
            loop.hvp_operator(params, X, y, 0, gn)(V),
            vm.hvp_operator(params, X, y, 0, gn)(V),
            strict=True,
        ):
            torch.testing.assert_close(u, w, rtol=1e-12, atol=1e-13)
    for u, w in zip(loop.jacobian_gram(params, X, 0), vm.jacobian_gram(params, X, 0), strict=True):
        torch.testing.assert_close(u, w, rtol=1e-12, atol=1e-13)


def test_chunk_sizing_counts_the_generic_models_memory():
    """Planning builds the model once: its parameters and activations size the chunks."""
    from implicit_bias.data import make_dataset
    from implicit_bias.engine import describe_model
    from implicit_bias.sweep import estimate_run_bytes

    cfg = load_config(DIGITS_CNN)
    data = make_dataset(cfg.data)
    size = describe_model(cfg, data)
    net = convnet((1, 8, 8), 10, [2, 3], "relu", "avg")
    assert size.n_params == sum(p.numel() for p in net.parameters()) and size.generic
    assert size.outputs == 10 and size.act_per_sample == 2 * 2 * 64 + 2 * 16 + 2 * 3 * 16 + 3 * 4
    small = estimate_run_bytes(cfg, 20, 64, 10, size)
    wide = load_config({**DIGITS_CNN, "model": {**DIGITS_CNN["model"], "channels": [64, 64]}})
    big = estimate_run_bytes(wide, 20, 64, 10, describe_model(wide, data))
    assert big > 10 * small  # ~1000x the parameters, ~20x the activations
    with_ntk = load_config({**DIGITS_CNN, "metrics": {**DIGITS_CNN["metrics"], "ntk": True}})
    # the (n·K, P) Jacobian jacrev forms per run
    extra = estimate_run_bytes(with_ntk, 20, 64, 10, size) - small
    assert extra >= 8 * 20 * 10 * size.n_params
