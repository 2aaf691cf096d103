"""The 10-class digits CNN sweep of ``configs/cohen-digits-cnn.yaml`` (shrunk with
``--set``) resumes after kill -9 inside a chunk write to the dataset of a clean
run (float64, within 1e-12), as the MLP sweeps do in tests/test_faults.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _helpers import assert_same_results

import implicit_bias as ib

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "cohen-digits-cnn.yaml"
DELAY = "IMPLICIT_BIAS_TEST_WRITE_DELAY"  # sleep between a chunk's temp file and its rename
SHRINK = [
    "train.steps=12",
    "train.dtype=float64",
    "metrics.every=6",
    "metrics.sharpness.iters=5",
    "data.n_train=48",
    "data.n_test=48",
    "model.channels=[4]",
    "store.chunk_runs=1",
    "sweep.train.lr=[0.05, 0.2]",
    "sweep.seed=[0]",
]


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, **extra}
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])
    )
    return env


def _cmd(out: Path) -> list[str]:
    sets = [a for s in SHRINK for a in ("--set", s)]
    return [
        sys.executable,
        "-m",
        "implicit_bias",
        "run",
        str(CONFIG),
        "--out",
        str(out),
        "-q",
        *sets,
    ]


def _run(out: Path) -> None:
    r = subprocess.run(_cmd(out), capture_output=True, text=True, timeout=300, env=_env())
    assert r.returncode == 0, r.stderr[-2000:]


@pytest.mark.slow
def test_cnn_sweep_resumes_after_kill_9(tmp_path):
    clean = tmp_path / "clean"
    _run(clean)
    ref = ib.open_results(clean)["group_000"].to_dataset()
    assert ref.sizes["run"] == 2 and "sharpness" in ref

    out = tmp_path / "killed"
    chunks = out / "chunks"
    proc = subprocess.Popen(
        _cmd(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(**{DELAY: "60"})
    )
    try:  # the first chunk's temporary file is whole, its rename not yet done
        deadline = time.monotonic() + 240
        while not (chunks.is_dir() and any(chunks.glob("*.tmp"))):
            assert proc.poll() is None, "the run ended before its first chunk write"
            assert time.monotonic() < deadline, "timed out waiting for a chunk write"
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not list(chunks.glob("*.nc"))
    _run(out)  # the same command again finishes the sweep
    assert not list(chunks.glob("*.tmp"))
    assert_same_results(ib.open_results(out)["group_000"].to_dataset(), ref)
