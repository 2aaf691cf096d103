"""Longer checks, run by `make test-slow` (not in the default suite)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import implicit_bias as ib

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_spec_example_sweep_catapults_above_the_critical_rate(tmp_path):
    """SPEC §5's example config (configs/catapult-demo.yaml), as `make demo` runs it."""
    ds = ib.run(ROOT / "configs" / "catapult-demo.yaml", out=tmp_path / "demo")[
        "group_000"
    ].to_dataset()
    assert ds.sizes["run"] == 20 and ds.sizes["iteration"] == 2001
    rate = ds["train.lr"].values
    phase = ds["phase"].values
    assert set(phase[rate <= 1.0]) == {"lazy"}
    # phase rule v2: between 1 and 2 critical units the curvature falls without a loss
    # spike above L₀ (sharpness_reduction, Kalra & Barkeshli 2023); at 3 the loss spikes
    assert set(phase[(rate > 1.0) & (rate < 2.0)]) == {"sharpness_reduction"}
    assert set(phase[rate >= 2.0]) == {"catapult"}
    assert not (phase == "diverged").any()
    # every run ends at or below the edge of stability 2/η, catapults well below their start
    assert np.all(ds["final_sharpness"].values < 2 / ds["lr"].values)
    cat = phase == "catapult"
    assert np.all(ds["final_sharpness"].values[cat] < 0.8 * ds["sharpness_init"].values[cat])
