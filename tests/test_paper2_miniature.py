"""Frei, Vardi, Bartlett, Srebro & Hu 2023 (arXiv 2210.07082) in miniature.

Two-layer net with fixed ±1/√m second layer on nearly-orthogonal Gaussian
mixture data: a small initialisation gives a rank-≈1 first layer after one
step and a decision boundary that is linear (sign f = sign⟨v, x⟩, v = W₁ᵀa);
a large initialisation keeps a high stable rank. All values are measured.
"""

from __future__ import annotations

import numpy as np
import pytest

import implicit_bias as ib


def _config(activation: str, scales: list[float]) -> dict:
    return {
        "name": "paper2-mini",
        "data": {
            "kind": "gaussian_mixture",
            "n_train": 30,
            "n_test": 200,
            "d": 4000,
            "mean_norm": 8.0,
        },
        "model": {
            "depth": 2,
            "width": 100,
            "activation": activation,
            "leak": 0.1,
            "smoothing": 1.0,
            "parametrization": "direct",
            "last_layer": "fixed_sign",
        },
        "train": {"loss": "logistic", "steps": 300, "lr": 0.01, "dtype": "float64"},
        "metrics": {
            "every": 100,
            "at": [1],
            "dense_early": False,  # the eval grid of the paper's recipe (papers/frei2023.py)
            "sharpness": False,
            "stable_rank": True,
            "margins": True,
            "kkt": True,
        },
        "sweep": {"model.init_scale": scales},
    }


@pytest.fixture(scope="module")
def smooth(tmp_path_factory):
    out = tmp_path_factory.mktemp("p2") / "smooth"
    return ib.run(_config("smooth_leaky_relu", [1e-6, 0.05]), out=out)["group_000"].to_dataset()


def _at(ds, var, scale, step):
    i = int(np.flatnonzero(ds["model.init_scale"].values == scale)[0])
    return (
        float(ds[var].sel(step=step).values[i])
        if "step" in ds[var].dims
        else float(ds[var].values[i])
    )


def test_data_is_nearly_orthogonal_and_separable(smooth):
    assert bool(smooth["data_separable"].values[0])
    assert smooth.attrs["data_separable"] == 1


def test_small_init_is_low_rank_from_step_one(smooth):
    assert _at(smooth, "stable_rank_W1", 1e-6, 0) > 30  # the random init is not low rank
    assert _at(smooth, "stable_rank_W1", 1e-6, 1) <= 1.5
    assert _at(smooth, "stable_rank_W1", 1e-6, 300) <= 1.5
    assert _at(smooth, "final_stable_rank_W1", 1e-6, None) <= 1.5


def test_small_init_has_a_linear_boundary(smooth):
    assert _at(smooth, "boundary_agreement", 1e-6, None) >= 0.99
    assert _at(smooth, "svm_cosine", 1e-6, None) > 0.9


def test_large_init_keeps_high_stable_rank(smooth):
    for step in (0, 1, 100, 200, 300):
        assert _at(smooth, "stable_rank_W1", 0.05, step) >= 30


def test_kkt_stationarity_falls_for_leaky_relu(tmp_path):
    """Exactly homogeneous leaky ReLU: the residual of the margin problem's KKT
    conditions falls over training (Frei et al. Thm 3.1, gradient flow)."""
    ds = ib.run(_config("leaky_relu", [1e-6]), out=tmp_path / "lr")["group_000"].to_dataset()
    kkt = ds["kkt_stationarity"].values[0]
    steps = list(ds["step"].values)
    assert kkt[steps.index(300)] < 0.5 * kkt[steps.index(1)]
    assert np.all(np.diff(kkt[1:]) < 0)


def test_kkt_stationarity_falls_for_smoothed_leaky_relu(smooth):
    """The smoothed net is near-homogeneous: its KKT residuals are those of its
    homogenization, the leaky-ReLU net (Cai et al. 2025, arXiv 2502.16075), and
    fall over training."""
    kkt = smooth["kkt_stationarity"].values[
        int(np.flatnonzero(smooth["model.init_scale"].values == 1e-6)[0])
    ]
    steps = list(smooth["step"].values)
    assert kkt[steps.index(300)] < 0.8 * kkt[steps.index(1)]
    assert np.all(np.diff(kkt[1:]) < 0)
