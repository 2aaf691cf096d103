"""Issue 11 (inputs): lazy planning, overrides vs sweeps, input errors found at validate."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml

import implicit_bias as ib
from implicit_bias import UserInputError
from implicit_bias import config as config_mod
from implicit_bias.config import ConfigWarning, load_config
from implicit_bias.config_sweep import expand_runs
from implicit_bias.sweep import _group_key, make_plan

TINY = {
    "name": "tiny",
    "data": {"kind": "overlap", "n_train": 16, "n_test": 20, "d": 4},
    "model": {"depth": 2, "width": 8},
    "train": {"steps": 10, "dtype": "float64"},
    "metrics": {"every": 5, "sharpness": {"iters": 5}},
}


def _write(tmp_path: Path, cfg: dict, name: str = "cfg.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return p


def _cli(*args: str):
    from typer.testing import CliRunner

    from implicit_bias.cli import app

    r = CliRunner().invoke(app, list(args))
    return subprocess.CompletedProcess(args, r.exit_code, r.stdout, r.stderr)


def _one_line_exit_2(r, needle: str) -> None:
    err = r.stderr.strip()
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert needle in err, err


# ------------------------------------------------------------------ 1. planning
def _brute_plan(cfg):
    """The plan as main computed it: every run built, groups by first appearance."""
    from implicit_bias.data import make_dataset

    members: dict[str, list[int]] = {}
    for i, (_, rc) in enumerate(expand_runs(cfg)):
        members.setdefault(_group_key(rc, make_dataset(rc.data)), []).append(i)
    return list(members.values())


@pytest.mark.parametrize(
    "sweep",
    [
        {"train.lr": [0.1, 0.2], "seed": [0, 1, 2]},
        {"seed": [0, 1], "data.n_train": [16, 12], "train.lr": [0.1, 0.3, 0.5]},
        {"model.init_scale": [1.0, 2.0], "model.width": [8, 6], "data.seed": [0, 1, 2]},
        {"data.mean_norm": [1.0, 2.0], "seed": [3, 4], "train.steps": [10, 12]},
    ],
)
def test_lazy_plan_matches_the_materialised_one(sweep):
    cfg = load_config({**TINY, "sweep": sweep, "store": {"chunk_runs": 4}})
    plan = make_plan(cfg)
    want = _brute_plan(cfg)
    assert len(plan.groups) == len(want) and len(plan.runs) == sum(map(len, want))
    got: dict[int, list[int]] = {}
    for c in plan.chunks:
        assert len(c.runs) <= 4
        got.setdefault(c.group, []).extend(c.runs)
    assert [got[g] for g in range(len(want))] == want
    for i in (0, len(plan.runs) - 1):
        coords, rc = expand_runs(cfg)[i]
        assert plan.runs[i].coords == coords and plan.runs[i].config.seed == rc.seed


def test_make_plan_does_not_build_every_run(monkeypatch):
    """10⁵ runs: planning validates a handful of configs, never one per run."""
    calls = []
    real = config_mod._validate
    monkeypatch.setattr(
        config_mod, "_validate", lambda raw, prefix="": calls.append(1) or real(raw)
    )
    sweep = {
        "train.lr": [0.01 * (i + 1) for i in range(250)],
        "seed": list(range(100)),
        "model.init_scale": [0.5, 1.0, 2.0, 4.0],
    }
    cfg = load_config({**TINY, "sweep": sweep})
    plan = make_plan(cfg)
    assert len(plan.runs) == 100_000 and len(plan.groups) == 1
    assert len(plan.chunks) == 196 and plan.chunk_sizes == [511]
    assert len(calls) < 400  # 1 + 249 + 99 + 3 singletons, not 10⁵
    last = plan.chunks[len(plan.chunks) - 1]
    assert last.runs[-1] == 99_999
    assert "plan: 100000 runs in 1 group(s)" in plan.summary()
    assert "per chunk" in plan.summary() and "validate CONFIG" in plan.summary()


@pytest.mark.slow
def test_validate_a_million_runs_is_fast_and_small(tmp_path):
    sweep = {
        "train.lr": [0.001 * (i + 1) for i in range(2500)],
        "seed": list(range(100)),
        "model.init_scale": [0.5, 1.0, 2.0, 4.0],
    }
    p = _write(tmp_path, {**TINY, "sweep": sweep})
    code = (
        "import resource, sys, time; t=time.perf_counter();"
        "from implicit_bias.cli import main; sys.argv=['ib','validate',sys.argv[1]]\n"
        "try: main()\nexcept SystemExit: pass\n"
        "print('SECONDS', time.perf_counter()-t, 'KB', "
        "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    r = subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True, text=True)
    assert "1000000 runs" in r.stdout, r.stderr
    words = r.stdout.split()
    seconds, kb = float(words[words.index("SECONDS") + 1]), int(words[words.index("KB") + 1])
    assert seconds <= 10 and kb < 1_000_000


def test_run_prints_the_plan(tmp_path):
    p = _write(tmp_path, {**TINY, "sweep": {"seed": [0, 1]}})
    r = _cli("run", str(p), "--out", str(tmp_path / "o"), "-q")
    assert r.returncode == 0, r.stderr
    assert "plan: 2 runs in 1 group(s), 1 chunk(s)" in r.stdout


def test_bench_figure_gives_a_time_estimate(tmp_path, monkeypatch):
    rec = tmp_path / "bench.json"
    rec.write_text('{"cpu": {"gflops": 10.0}}')
    monkeypatch.setenv("IMPLICIT_BIAS_BENCH", str(rec))
    assert "from the bench figure" in make_plan(load_config(TINY)).summary()


# ------------------------------------------------------------ 2. overrides
def test_set_on_a_swept_key_is_refused_with_the_fix(tmp_path):
    p = _write(tmp_path, {**TINY, "sweep": {"train.lr": [0.1, 0.2]}})
    r = _cli("validate", str(p), "--set", "train.lr=0.3")
    _one_line_exit_2(r, "sweep.train.lr=[0.3]")
    r = _cli("validate", str(p), "--set", "sweep.train.lr=[0.1, 0.3]")
    assert r.returncode == 0 and "2 runs" in r.stdout
    with pytest.raises(UserInputError, match="seed is swept"):
        ib.load_config({**TINY, "sweep": {"seed": [0, 1]}}, ["seed=1"])
    assert ib.load_config({**TINY, "sweep": {"seed": [0, 1]}}, ["sweep.seed=[1]"]).sweep == {
        "seed": [1]
    }


# --------------------------------------------------------- 3. run-time errors
@pytest.mark.parametrize(
    ("patch", "needle"),
    [
        ({"metrics": {"sharpness": {"iters": 3, "top_k": 5}}}, "metrics.sharpness.top_k"),
        ({"seed": 2**63}, "seed"),
        ({"sweep": {"seed": [0, 2**64]}}, "seed"),
        ({"data": {"kind": "overlap", "n_train": 10**12, "d": 20}}, "data.n_train"),
        ({"model": {"width": 10**9, "depth": 3}}, "model.width"),
        ({"train": {**TINY["train"], "steps": 10**12}}, "train.steps"),  # its traces
        ({"model": {"width": True}}, "model.width"),
        ({"model": {"init_scale": 0}}, "model.init_scale"),
        ({"train": {"batch_size": 17}}, "train.batch_size"),
        ({"seed": -1}, "seed"),
        ({"sweep": {"train.lr": [0.1, 0.1]}}, "sweep.train.lr"),
        ({"train": {"lr": "fast"}}, "train.lr"),
    ],
)
def test_refused_at_validate_and_run(tmp_path, patch, needle):
    p = _write(tmp_path, {**TINY, **patch})
    _one_line_exit_2(_cli("validate", str(p)), needle)
    _one_line_exit_2(_cli("run", str(p), "--out", str(tmp_path / "o"), "-q"), needle)
    assert not (tmp_path / "o").exists()


def test_out_below_a_file(tmp_path):
    p = _write(tmp_path, TINY)
    (tmp_path / "f").write_text("x")
    _one_line_exit_2(_cli("run", str(p), "--out", str(tmp_path / "f" / "sub"), "-q"), "is a file")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permissions")
def test_read_only_folder(tmp_path):
    p = _write(tmp_path, TINY)
    out = tmp_path / "o"
    assert _cli("run", str(p), "--out", str(out), "-q").returncode == 0
    before = (out / "config.yaml").stat().st_mtime_ns
    for d in (out, out / "chunks", out / "data"):
        d.chmod(0o555)
    try:
        assert _cli("run", str(p), "--out", str(out), "-q").returncode == 0  # nothing to do
        assert (out / "config.yaml").stat().st_mtime_ns == before
        r = _cli("run", str(p), "--out", str(out), "-q", "--set", "train.steps=11")
        _one_line_exit_2(r, "not writable")
    finally:
        for d in (out, out / "chunks", out / "data"):
            d.chmod(0o755)


def test_nothing_left_to_do_does_not_rewrite_config(tmp_path):
    p = _write(tmp_path, TINY)
    out = tmp_path / "o"
    assert _cli("run", str(p), "--out", str(out), "-q").returncode == 0
    before = (out / "config.yaml").stat().st_mtime_ns
    assert _cli("run", str(p), "--out", str(out), "-q").returncode == 0
    assert (out / "config.yaml").stat().st_mtime_ns == before


def test_scheduler_address_and_unreachable(tmp_path, monkeypatch):
    pytest.importorskip("dask.distributed")
    p = _write(tmp_path, TINY)
    r = _cli("run", str(p), "--out", str(tmp_path / "o"), "--scheduler", "notaurl", "-q")
    _one_line_exit_2(r, "--scheduler")
    assert not (tmp_path / "o").exists()
    monkeypatch.setattr("implicit_bias.sweep.CONNECT_TIMEOUT", 1.0)
    r = _cli("run", str(p), "--out", str(tmp_path / "o2"), "--scheduler", "tcp://127.0.0.1:9", "-q")
    _one_line_exit_2(r, "cannot connect")
    assert not (tmp_path / "o2").exists()  # found before the folder is written


def test_scheduler_address_that_is_not_dask(tmp_path, monkeypatch):
    """A server that answers something else (here HTTP) made distributed read a frame
    length of exabytes and die with a MemoryError traceback."""
    import socket
    import threading

    pytest.importorskip("dask.distributed")
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]

    def answer() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n" * 4)

    threading.Thread(target=answer, daemon=True).start()
    monkeypatch.setattr("implicit_bias.sweep.CONNECT_TIMEOUT", 2.0)
    p = _write(tmp_path, TINY)
    try:
        r = _cli(
            "run", str(p), "--out", str(tmp_path / "o"), "--scheduler", f"tcp://127.0.0.1:{port}"
        )
    finally:
        srv.close()
    _one_line_exit_2(r, "cannot connect to a Dask scheduler")
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------- 4. accepted silently
def test_steps_beyond_train_steps_warn():
    with pytest.warns(ConfigWarning, match="metrics.at"):
        load_config({**TINY, "metrics": {"at": [3, 50]}})
    with pytest.warns(ConfigWarning, match="train.schedule.at"):
        load_config({**TINY, "train": {"steps": 10, "schedule": {"kind": "step", "at": [20]}}})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_config({**TINY, "metrics": {"at": [3, 10]}})


def test_cli_prints_the_warning_as_one_line(tmp_path):
    p = _write(tmp_path, {**TINY, "metrics": {"at": [50]}})
    r = _cli("validate", str(p))
    assert r.returncode == 0 and r.stderr.strip().startswith("warning: metrics.at")


def test_duplicate_yaml_keys_refused(tmp_path):
    p = tmp_path / "dup.yaml"
    p.write_text("data: {kind: overlap}\ntrain: {lr: 0.1}\ntrain: {lr: 0.2}\n")
    _one_line_exit_2(_cli("validate", str(p)), "'train' appears twice")


def test_yaml_floats_without_a_dot(tmp_path):
    p = tmp_path / "f.yaml"
    p.write_text("data: {kind: overlap, n_train: 16, n_test: 4, d: 3}\ntrain: {lr: 1e-2}\n")
    assert load_config(p).train.lr == 0.01


def test_one_class_csv_names_the_real_problem(tmp_path):
    f = tmp_path / "d.csv"
    rows = "\n".join(f"{i},{i * 2},1" for i in range(10))
    f.write_text("a,b,y\n" + rows + "\n")
    cfg = {**TINY, "data": {"kind": "file", "path": str(f), "n_test": 5}}
    _one_line_exit_2(_cli("validate", str(_write(tmp_path, cfg))), "both classes")
    f.write_text("a,b,y\n" + "\n".join(f"{i},{i * 2},{i % 2}" for i in range(10)) + "\n")
    _one_line_exit_2(_cli("validate", str(_write(tmp_path, cfg))), "no test split")


# ------------------------------------------------------------ 6. papercuts
def test_version_and_plain_help():
    from implicit_bias import __version__

    r = _cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"implicit-bias {__version__}"
    for verb in ([], ["run"], ["validate"], ["report"], ["reproduce"], ["bench"], ["info"]):
        r = _cli(*verb, "--help")
        assert r.returncode == 0
        for bad in ("{", "<bool>", "<path>", "<str>", "<int>", "list[", "--no-"):
            assert bad not in r.stdout, (verb, bad, r.stdout)


def test_api_progress_and_progress_board(tmp_path):
    from implicit_bias.sweep import ProgressBoard

    ib.run(TINY, out=tmp_path / "a", progress=True)
    with ProgressBoard(2, "papers") as board:
        for name in ("x", "y"):
            board.start(f"paper/{name} …")
            ib.run(TINY, out=tmp_path / name, progress=board)
    assert np.isfinite(ib.open_results(tmp_path / "y")["group_000"]["final_loss"].values).all()
