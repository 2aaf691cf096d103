"""The CUDA path: the same batched engine on the GPU gives the CPU's numbers.

Marked ``cuda`` and skipped where no GPU is present (the default run
deselects them; ``pytest -m cuda`` runs them on a GPU machine).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import implicit_bias as ib

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]

CFG = {
    "data": {"kind": "overlap", "n_train": 64, "n_test": 64, "d": 8},
    "model": {"depth": 3, "width": 32, "activation": "relu"},
    "train": {"steps": 100, "lr_units": "critical", "dtype": "float64"},
    "metrics": {"every": 20, "sharpness": {"iters": 20}, "stable_rank": True, "margins": True},
    "sweep": {"train.lr": [0.5, 1.5, 50.0], "seed": [0, 1]},
}


def test_cuda_matches_cpu(tmp_path):
    cpu = ib.run(CFG, out=tmp_path / "cpu")["group_000"].to_dataset()
    gpu = ib.run(CFG, out=tmp_path / "gpu", device="cuda")["group_000"].to_dataset()
    np.testing.assert_allclose(gpu["loss"].values, cpu["loss"].values, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(gpu["sharpness"].values, cpu["sharpness"].values, rtol=1e-6)
    np.testing.assert_array_equal(gpu["phase"].values, cpu["phase"].values)
