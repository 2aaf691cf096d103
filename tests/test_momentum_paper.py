"""The momentum rows' judges on made-up runs: each criterion can PASS and can FAIL.

The negative controls (run through the engine) are in tests/test_claims.py; here
the window criterion (K1) is checked on small
hand-built Datasets, so what they compare is pinned without running anything.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from implicit_bias.papers import PAPERS

RATES = [0.9, 1.15, 1.6, 2.3]


def _window(phases: dict[float, list[str]]) -> xr.Dataset:
    """Runs over β × RATES with the given phases per β (one per rate)."""
    beta, lr, ph = [], [], []
    for b, phs in phases.items():
        for x, p in zip(RATES, phs, strict=True):
            beta.append(b), lr.append(x), ph.append(p)
    n = len(ph)
    loss = np.tile(np.array([1.0, 3.0, 0.5, 0.1]), (n, 1))
    return xr.Dataset(
        {"phase": ("run", np.array(ph)), "loss": (("run", "step"), loss)},
        coords={"train.lr": ("run", lr), "train.momentum": ("run", beta), "seed": ("run", [0] * n)},
    )


def _k1(ds: xr.Dataset):
    return PAPERS["momentum"].spec("K1").evaluate("momentum", {"window": ds})


def test_window_needs_catapults_and_a_falling_edge():
    row = _k1(
        _window(
            {
                0.0: ["lazy", "catapult", "catapult", "diverged"],
                0.5: ["lazy", "catapult", "diverged", "diverged"],
                0.9: ["lazy", "diverged", "diverged", "diverged"],
            }
        )
    )
    # β 0.9 has no catapult above its threshold: FAIL although the edges fall
    assert row.status == "FAIL" and row.judged, row.measured
    row = _k1(
        _window(
            {
                0.0: ["lazy", "catapult", "catapult", "catapult"],
                0.5: ["lazy", "catapult", "catapult", "diverged"],
                0.9: ["lazy", "catapult", "diverged", "diverged"],
            }
        )
    )
    assert row.status == "PASS", row.measured
    assert "β 0.9: edge 1.15×" in row.measured and "β 0: edge 2.3×" in row.measured


def test_window_edge_not_falling_fails():
    row = _k1(
        _window(
            {
                0.0: ["lazy", "catapult", "catapult", "diverged"],
                0.5: ["lazy", "catapult", "catapult", "diverged"],
                0.9: ["lazy", "catapult", "diverged", "diverged"],
            }
        )
    )
    assert row.status == "FAIL" and row.judged, row.measured
