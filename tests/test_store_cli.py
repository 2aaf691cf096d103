"""Results folder, resume after kill -9, the CLI and its bad-input contract."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

import implicit_bias as ib
from implicit_bias.phases import PHASES

SMALL = {
    "name": "small",
    "data": {"kind": "overlap", "n_train": 32, "n_test": 50, "d": 6},
    "model": {"depth": 2, "width": 16, "activation": "linear", "parametrization": "ntk"},
    "train": {"loss": "logistic", "steps": 40, "lr_units": "critical", "dtype": "float64"},
    "metrics": {"every": 10, "sharpness": {"iters": 10}},
    "sweep": {"train.lr": [0.5, 1.5], "seed": [0, 1]},
}


def _write(tmp_path: Path, cfg: dict, name: str = "cfg.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return p


def _cli(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """The real command line, in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "implicit_bias", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
    )


def _cli_inproc(*args: str):
    """The same CLI in-process (typer's runner): fast, for the many bad-input cases."""
    from typer.testing import CliRunner

    from implicit_bias.cli import app

    r = CliRunner().invoke(app, list(args))
    return subprocess.CompletedProcess(args, r.exit_code, r.stdout, r.stderr)


def test_results_open_with_spec_names(tmp_path):
    tree = ib.run(SMALL, out=tmp_path / "res")
    assert list(tree.children) == ["group_000"]
    ds = tree["group_000"].to_dataset()
    assert ds.sizes["run"] == 4 and ds.sizes["iteration"] == 41
    # dense early eval steps by default (every step up to 10, then 13, 18, 24)
    assert list(ds["step"].values) == [*range(11), 13, 18, 20, 24, 30, 40]
    for name in ("train.lr", "lr", "seed"):
        assert name in ds.coords and ds[name].dims == ("run",)
    for name in ("loss", "train_acc", "lr_t"):
        assert ds[name].dims == ("run", "iteration")
    for name in ("sharpness", "test_loss", "test_acc"):
        assert ds[name].dims == ("run", "step")
    for name in ("phase", "sharpness_init", "final_loss", "final_sharpness"):
        assert ds[name].dims == ("run",)
    assert set(ds["phase"].values) <= set(PHASES)
    for name in ("spike_step", "spike_height", "critical_ratio", "final_train_acc", "dead_units"):
        assert ds[name].dims == ("run",)
    assert ds["X_train"].dims == ("sample", "feature") and ds["y_test"].shape == (50,)
    assert ds["init_W1"].shape == (4, 16, 6) and ds["final_W2"].shape == (4, 1, 16)
    # lr is the absolute rate: lr = train.lr × 2 / sharpness_init
    np.testing.assert_allclose(ds["lr"], ds["train.lr"] * 2 / ds["sharpness_init"], rtol=1e-10)
    # reopen from disk: same numbers
    again = ib.open_results(tmp_path / "res")["group_000"].to_dataset()
    np.testing.assert_array_equal(again["loss"].values, ds["loss"].values)
    assert (tmp_path / "res" / "config.yaml").exists()
    assert all(p.suffix == ".nc" for p in (tmp_path / "res" / "chunks").iterdir())


def test_groups_split_by_shape(tmp_path):
    cfg = {**SMALL, "sweep": {"model.width": [8, 16], "seed": [0, 1]}}
    tree = ib.run(cfg, out=tmp_path / "res")
    assert len(tree.children) == 2
    widths = sorted(int(tree[c]["model.width"].values[0]) for c in tree.children)
    assert widths == [8, 16]


def test_different_config_refused_unless_overwrite(tmp_path):
    ib.run(SMALL, out=tmp_path / "res")
    other = {**SMALL, "train": {**SMALL["train"], "steps": 41}}
    with pytest.raises(ib.UserInputError, match="another config"):
        ib.run(other, out=tmp_path / "res")
    tree = ib.run(other, out=tmp_path / "res", overwrite=True)
    assert tree["group_000"].sizes["iteration"] == 42


@pytest.mark.slow  # the default suite has tests/test_faults.py::test_kill_9_inside_a_chunk_write
def test_kill_9_then_resume_runs_only_missing_chunks(tmp_path):
    cfg = {
        **SMALL,
        "train": {**SMALL["train"], "steps": 150},
        "store": {"chunk_runs": 1},
        "metrics": {"every": 50, "sharpness": {"iters": 10}},
        "sweep": {"train.lr": [0.5, 1.0, 1.5, 2.0], "seed": [0, 1]},
    }
    p = _write(tmp_path, cfg)
    out = tmp_path / "res"
    proc = subprocess.Popen(
        [sys.executable, "-m", "implicit_bias", "run", str(p), "--out", str(out), "-q"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    chunks = out / "chunks"
    deadline = time.time() + 120
    while time.time() < deadline:
        done = list(chunks.glob("*.nc")) if chunks.exists() else []
        if len(done) >= 2:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {f.name: f.stat().st_mtime_ns for f in chunks.glob("*.nc")}
    assert 2 <= len(before) < 8, "kill landed outside the sweep"
    r = _cli("run", str(p), "--out", str(out), "-q")
    assert r.returncode == 0, r.stderr
    after = {f.name: f.stat().st_mtime_ns for f in chunks.glob("*.nc")}
    assert len(after) == 8
    assert all(after[k] == v for k, v in before.items()), "finished chunks were rewritten"
    assert not [f for f in chunks.iterdir() if f.suffix != ".nc"]
    ref = ib.run(cfg, out=tmp_path / "ref")["group_000"].to_dataset()
    got = ib.open_results(out)["group_000"].to_dataset()
    for v in ("loss", "sharpness", "final_W1"):
        np.testing.assert_array_equal(got[v].values, ref[v].values)


def test_cli_run_validate_info(tmp_path):
    p = _write(tmp_path, SMALL)
    r = _cli_inproc("validate", str(p))
    assert r.returncode == 0 and "4 runs" in r.stdout
    # the real command line once, end to end
    r = _cli("run", str(p), "--out", str(tmp_path / "o"), "--set", "train.steps=20", "-q")
    assert r.returncode == 0, r.stderr
    assert "lazy" in r.stdout and "results" in r.stdout
    assert _cli_inproc("info").returncode == 0


BAD = [
    ({"modle": {}}, [], "modle"),
    ({}, ["train.lrr=1"], "train.lrr"),
    ({}, ["train.lr=abc"], "train.lr"),
    ({}, ["train.lr=-0.1"], "train.lr"),
    ({}, ["model.width=0"], "model.width"),
    ({}, ["train.steps=0"], "train.steps"),
    ({"data": {"kind": "file", "path": "nope.npz"}}, [], "nope.npz"),
]


@pytest.mark.parametrize(("patch", "sets", "needle"), BAD, ids=[b[2] for b in BAD])
def test_cli_bad_input_exit_2_one_line(tmp_path, patch, sets, needle):
    p = _write(tmp_path, {**SMALL, **patch})
    args = [a for s in sets for a in ("--set", s)]
    for verb in ("validate", "run"):
        extra = ["--out", str(tmp_path / "o")] if verb == "run" else []
        r = _cli_inproc(verb, str(p), *args, *extra)
        assert r.returncode == 2, (verb, r.stdout, r.stderr)
        err = r.stderr.strip()
        assert needle in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o" / "chunks").exists()


def _data_file(tmp_path: Path, X, y) -> Path:
    f = tmp_path / "d.npz"
    np.savez(f, X_train=X, y_train=y)
    return f


@pytest.mark.parametrize(
    "case", ["nan", "inf", "labels", "length", "malformed", "missing_cfg", "yaml"]
)
def test_cli_bad_data_and_files(tmp_path, case):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(10, 3)), np.sign(rng.normal(size=10))
    if case == "nan":
        X[2, 1] = np.nan
    if case == "inf":
        X[0, 0] = np.inf
    if case == "labels":
        y = np.arange(10) % 3 + 0.5  # class indices 0…K−1 are valid labels now
    if case == "length":
        y = y[:7]
    f = _data_file(tmp_path, X, y)
    if case == "malformed":
        f.write_bytes(b"not a zip file")
    cfg = {**SMALL, "data": {"kind": "file", "path": str(f)}}
    p = _write(tmp_path, cfg)
    if case == "missing_cfg":
        p = tmp_path / "absent.yaml"
    if case == "yaml":
        p.write_text("data: {kind: [file\n")
    for verb in ("validate", "run"):
        extra = ["--out", str(tmp_path / "o")] if verb == "run" else []
        r = _cli_inproc(verb, str(p), *extra)
        assert r.returncode == 2, (verb, r.stderr)
        err = r.stderr.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err
        assert ("d.npz" in err) or (p.name in err)
    assert not (tmp_path / "o" / "chunks").exists()


def test_cli_refuses_other_config_in_folder(tmp_path):
    p = _write(tmp_path, {**SMALL, "train": {**SMALL["train"], "steps": 5}})
    out = tmp_path / "o"
    assert _cli_inproc("run", str(p), "--out", str(out), "-q").returncode == 0
    r = _cli("run", str(p), "--out", str(out), "--set", "train.steps=6", "-q")
    assert r.returncode == 2 and "another config" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = _cli_inproc("run", str(p), "--out", str(out), "--set", "train.steps=6", "--overwrite", "-q")
    assert r.returncode == 0


def test_dask_workers_give_identical_results(tmp_path):
    pytest.importorskip("dask.distributed")
    cfg = {**SMALL, "store": {"chunk_runs": 2}, "train": {**SMALL["train"], "steps": 20}}
    local = ib.run(cfg, out=tmp_path / "local")["group_000"].to_dataset()
    dask = ib.run(cfg, out=tmp_path / "dask", workers=2)["group_000"].to_dataset()
    assert len(list((tmp_path / "dask" / "chunks").glob("*.nc"))) == 2
    for v in ("loss", "sharpness", "final_W1", "phase"):
        np.testing.assert_array_equal(dask[v].values, local[v].values)


def test_automatic_chunk_size_follows_the_memory_each_run_needs(monkeypatch):
    """Chunks are cut from an estimate of a run's bytes; curvature metrics that are
    off (no Lanczos basis) do not shrink them."""
    from implicit_bias import planning as sweep
    from implicit_bias.config import load_config

    monkeypatch.setattr(sweep, "CHUNK_BYTES", 64 << 20)
    wide = {
        "name": "wide",
        "data": {"kind": "gaussian_mixture", "n_train": 10, "n_test": 0, "d": 2000},
        "model": {"depth": 2, "width": 256, "activation": "relu", "last_layer": "fixed_sign"},
        "train": {"steps": 1},
        "metrics": {"sharpness": False},
        "store": {"weights": []},
        "sweep": {"seed": list(range(8))},
    }
    # P = 512 000 float32: ≈ 12 MiB a run without a Lanczos basis → 5 fit; 8 runs → 2 × 4
    plain = sweep.make_plan(load_config(wide))
    assert [len(c.runs) for c in plain.chunks] == [4, 4]
    # 20 Lanczos vectors more per run: one run per chunk
    sharp = sweep.make_plan(load_config({**wide, "metrics": {"sharpness": {"iters": 20}}}))
    assert [len(c.runs) for c in sharp.chunks] == [1] * 8
    # KKT and NTK work from the layer-wise Gram (n², n·width), not an (n, P)
    # Jacobian: they barely change the chunk
    kkt = sweep.make_plan(
        load_config({**wide, "metrics": {"sharpness": False, "kkt": True, "ntk": True}})
    )
    assert [len(c.runs) for c in kkt.chunks] == [4, 4]
    # set by hand, it is what it says
    fixed = sweep.make_plan(load_config({**wide, "store": {"chunk_runs": 3, "weights": []}}))
    assert [len(c.runs) for c in fixed.chunks] == [3, 3, 2]


def test_cli_run_without_out_names_the_default_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = _write(tmp_path, SMALL)
    r = _cli_inproc("run", str(p), "--set", "train.steps=5", "-q")
    assert r.returncode == 0, r.stderr
    folder = Path("results") / SMALL["name"]
    assert f"results: {folder}" in r.stdout and (tmp_path / folder / "chunks").is_dir()
