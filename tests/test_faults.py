"""Fault tests (issue 11): kill -9 inside a chunk write, a damaged and a swapped
chunk, two concurrent runs. Each ends, after running the same command again,
with a folder whose dataset equals a clean run's (float64, within 1e-12)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from _helpers import assert_same_results

import implicit_bias as ib

SRC = Path(__file__).resolve().parents[1] / "src"
DELAY = "IMPLICIT_BIAS_TEST_WRITE_DELAY"  # sleep between a chunk's temp file and its rename

CFG = {
    "name": "faults",
    "data": {"kind": "overlap", "n_train": 16, "n_test": 20, "d": 4},
    "model": {"depth": 2, "width": 8, "activation": "linear", "parametrization": "ntk"},
    "train": {"loss": "logistic", "steps": 10, "lr_units": "critical", "dtype": "float64"},
    "metrics": {"every": 5, "sharpness": {"iters": 6}},
    "store": {"chunk_runs": 1},
    "sweep": {"train.lr": [0.5, 1.5, 2.5]},
}


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, **extra}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))
    return env


def _cmd(p: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "implicit_bias", "run", str(p), "--out", str(out), "-q"]


def _run(p: Path, out: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        _cmd(p, out), capture_output=True, text=True, timeout=300, env=_env(**env)
    )


def _wait_for(cond, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("clean")
    p = tmp / "cfg.yaml"
    p.write_text(yaml.safe_dump(CFG, sort_keys=False))
    return p, ib.run(p, out=tmp / "res")["group_000"].to_dataset()


def _assert_equal_to_clean(out: Path, ref) -> None:
    chunks = out / "chunks"
    assert sorted(f.name for f in chunks.iterdir()) == [f"g000-c0000{i}.nc" for i in range(3)]
    assert_same_results(ib.open_results(out)["group_000"].to_dataset(), ref)


def test_kill_9_inside_a_chunk_write(clean, tmp_path):
    p, ref = clean
    out = tmp_path / "res"
    chunks = out / "chunks"
    proc = subprocess.Popen(
        _cmd(p, out),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_env(**{DELAY: "60"}),
    )
    try:  # the first chunk's temporary file is whole, the rename not yet done
        _wait_for(lambda: chunks.is_dir() and any(chunks.glob("*.tmp")), "a chunk write")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not list(chunks.glob("*.nc")) and list(chunks.glob("*.tmp"))
    r = _run(p, out)  # the lock died with its holder: the same command finishes
    assert r.returncode == 0, r.stderr
    assert not list(chunks.glob("*.tmp"))
    _assert_equal_to_clean(out, ref)


def test_damaged_and_swapped_chunks(clean, tmp_path):
    p, ref = clean
    out = tmp_path / "res"
    ib.run(p, out=out)
    c = sorted((out / "chunks").glob("*.nc"))
    os.truncate(c[0], c[0].stat().st_size // 2)  # damaged
    c[2].write_bytes(c[1].read_bytes())  # swapped: a valid chunk over another
    r = subprocess.run(
        [sys.executable, "-m", "implicit_bias", "report", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(),
    )
    assert r.returncode == 2 and c[0].name in r.stderr and c[2].name in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (out / "report").exists()
    r = _run(p, out)  # the same command names both in one warning line and redoes them
    assert r.returncode == 0, r.stderr
    warn = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert len(warn) == 1 and c[0].name in warn[0] and c[2].name in warn[0], r.stderr
    assert "Traceback" not in r.stderr
    _assert_equal_to_clean(out, ref)


def test_two_concurrent_runs(clean, tmp_path):
    p, ref = clean
    out = tmp_path / "res"
    first = subprocess.Popen(
        _cmd(p, out),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(**{DELAY: "2"}),  # slow writes: the first still holds the folder
    )
    try:
        _wait_for(lambda: (out / ".implicit-bias.owner").exists(), "the first run's lock")
        second = _run(p, out)
        assert second.returncode == 2, second.stderr
        err = second.stderr.strip()
        assert "in use" in err and f"pid {first.pid}" in err and len(err.splitlines()) == 1
    finally:
        _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    _assert_equal_to_clean(out, ref)
