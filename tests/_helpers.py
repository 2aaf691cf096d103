"""Checks shared by several test files (the tests folder is on ``sys.path``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np


def assert_same_results(got, ref) -> None:
    """Two results datasets hold the same variables and values (floats to 1e-12)."""
    assert set(got.variables) == set(ref.variables)
    for v in ref.variables:
        a, b = got[v].values, ref[v].values
        if a.dtype.kind == "f":
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-12, err_msg=str(v))
        else:
            np.testing.assert_array_equal(a, b, err_msg=str(v))


def validate_error_lines(tmp_path: Path, config_text: str) -> list[str]:
    """``implicit-bias validate`` on ``config_text``: asserts exit 2 and returns stderr's lines."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(config_text)
    proc = subprocess.run(
        [sys.executable, "-m", "implicit_bias", "validate", str(cfg)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2, proc.stderr
    return proc.stderr.strip().splitlines()
