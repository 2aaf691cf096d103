"""Issue 11, data safety: a folder is ours or untouched, chunks are verified before
they are trusted, one writer per folder, a run that breaks numerically is a
diverged run, and a failing chunk (locally or on Dask) does not stop the others."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import implicit_bias as ib
from implicit_bias import _linalg
from implicit_bias._errors import ChunksFailed, ChunkWarning

SRC = Path(__file__).resolve().parents[1] / "src"

TINY = {
    "name": "tiny",
    "data": {"kind": "overlap", "n_train": 16, "n_test": 20, "d": 4},
    "model": {"depth": 2, "width": 8, "activation": "linear", "parametrization": "ntk"},
    "train": {"loss": "logistic", "steps": 10, "dtype": "float64"},
    "metrics": {"every": 5, "sharpness": {"iters": 6}},
    "store": {"chunk_runs": 1},
    "sweep": {"train.lr": [0.1, 0.2, 0.3]},
}


def _write(tmp_path: Path, cfg: dict, name: str = "cfg.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return p


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    e = {**os.environ, **(env or {})}
    e["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "implicit_bias", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=e,
    )


def _one_line(err: str) -> str:
    err = err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def _ds(tree) -> object:
    return tree["group_000"].to_dataset()


# ------------------------------------------------- 1. only our folders are touched
@pytest.mark.parametrize("overwrite", [False, True])
def test_foreign_folder_is_refused_and_untouched(tmp_path, overwrite):
    thesis = tmp_path / "thesis"
    (thesis / "code").mkdir(parents=True)
    (thesis / "thesis.tex").write_text("\\section{Results}")
    (thesis / "code" / "a.py").write_text("x = 1")
    before = sorted(str(p.relative_to(thesis)) for p in thesis.rglob("*"))
    p = _write(tmp_path, TINY)
    args = ["run", str(p), "--out", str(thesis), "-q"] + (["--overwrite"] if overwrite else [])
    r = _cli(*args)
    assert r.returncode == 2, r.stderr
    assert str(thesis) in _one_line(r.stderr) and "not an implicit-bias results folder" in r.stderr
    assert sorted(str(p.relative_to(thesis)) for p in thesis.rglob("*")) == before
    assert (thesis / "thesis.tex").read_text() == "\\section{Results}"


def test_empty_folder_is_used_and_marked(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    ib.run(TINY, out=out)
    marker = json.loads((out / ".implicit-bias").read_text())
    assert marker["tool"] == "implicit-bias" and "config_hash" in marker


def test_overwrite_replaces_our_folder_only(tmp_path):
    out = tmp_path / "res"
    ib.run(TINY, out=out)
    (out / "notes.txt").write_text("mine")
    other = {**TINY, "train": {**TINY["train"], "steps": 6}}
    tree = ib.run(other, out=out, overwrite=True)
    assert _ds(tree).sizes["iteration"] == 7
    assert (out / "notes.txt").read_text() == "mine"  # not ours: kept


def test_folder_of_the_previous_version_is_recognised(tmp_path):
    """config.yaml + chunks/ without the marker: resumed, and replaceable by --overwrite."""
    out = tmp_path / "res"
    ref = _ds(ib.run(TINY, out=out))
    (out / ".implicit-bias").unlink()
    chunks = sorted((out / "chunks").glob("*.nc"))
    chunks[-1].unlink()
    mtimes = {c.name: c.stat().st_mtime_ns for c in chunks[:-1]}
    got = _ds(ib.run(TINY, out=out))
    assert all((out / "chunks" / k).stat().st_mtime_ns == v for k, v in mtimes.items())
    np.testing.assert_array_equal(got["loss"].values, ref["loss"].values)
    (out / ".implicit-bias").unlink()
    other = {**TINY, "train": {**TINY["train"], "steps": 6}}
    assert _ds(ib.run(other, out=out, overwrite=True)).sizes["iteration"] == 7


# --------------------------------------------------- 2. chunks verified before use
def _damage(kind: str, out: Path) -> str:
    chunks = sorted((out / "chunks").glob("*.nc"))
    target = chunks[1]
    if kind == "truncate":
        os.truncate(target, 100)
    elif kind == "swap":  # a valid chunk copied over another
        target.write_bytes(chunks[0].read_bytes())
    elif kind == "foreign":  # the same chunk of a folder made for another config
        other = out.parent / "other"
        ib.run({**TINY, "train": {**TINY["train"], "steps": 11}}, out=other)
        target.write_bytes((other / "chunks" / target.name).read_bytes())
    elif kind == "bits":  # one bit of the stored X_train flipped
        x = ib.open_results(out)["group_000"]["X_train"].values
        raw = target.read_bytes()
        at = raw.find(np.ascontiguousarray(x, dtype="<f8").tobytes()[:64])
        assert at > 0
        b = bytearray(raw)
        b[at + 3] ^= 0x10
        target.write_bytes(bytes(b))
    return target.name


@pytest.mark.parametrize("kind", ["truncate", "swap", "foreign", "bits"])
def test_damaged_chunk_is_refused_then_redone(tmp_path, kind):
    """In process (the CLI's one-line messages for the same cases: test_faults.py)."""
    out = tmp_path / "res"
    ref = _ds(ib.run(TINY, out=out))
    name = _damage(kind, out)
    with pytest.raises(ib.UserInputError, match=name) as err:
        ib.open_results(out)
    assert f"implicit-bias run <config> --out {out}" in str(err.value)
    # the same call names it in one warning and redoes it
    with pytest.warns(ChunkWarning, match=name) as warned:
        tree = ib.run(TINY, out=out)
    assert len([w for w in warned if issubclass(w.category, ChunkWarning)]) == 1
    got = _ds(tree)
    assert list(got["run"].values) == [0, 1, 2]
    for v in ("loss", "sharpness", "final_W1", "X_train"):
        np.testing.assert_allclose(got[v].values, ref[v].values, rtol=0, atol=1e-12)
    assert not (out / "report").exists()


def test_edited_or_lost_config_yaml_is_refused_then_restored(tmp_path):
    out = tmp_path / "res"
    ib.run(TINY, out=out)
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "chunks").iterdir()}
    cfg = out / "config.yaml"
    good = cfg.read_text()
    cfg.write_text(good.replace("steps: 10", "steps: 11"))  # no longer what the chunks hold
    with pytest.raises(ib.UserInputError, match=r"config\.yaml was changed after the run"):
        ib.open_results(out)
    ib.run(TINY, out=out)  # the same call restores it and keeps every chunk
    assert cfg.read_text() == good
    cfg.unlink()
    with pytest.raises(ib.UserInputError, match=r"has lost its config\.yaml"):
        ib.open_results(out)
    r = _cli("report", str(out))
    assert r.returncode == 2 and "has lost its config.yaml" in _one_line(r.stderr)
    assert list(_ds(ib.run(TINY, out=out))["run"].values) == [0, 1, 2]
    assert cfg.read_text() == good
    assert {p.name: p.stat().st_mtime_ns for p in (out / "chunks").iterdir()} == stamps


def test_chunks_that_is_not_a_folder_or_empty(tmp_path):
    out = tmp_path / "res"
    ib.run(TINY, out=out)
    for p in (out / "chunks").iterdir():
        p.unlink()
    with pytest.raises(ib.UserInputError, match="no finished chunks"):
        ib.open_results(out)
    (out / "chunks").rmdir()
    (out / "chunks").write_text("x")
    for call in (lambda: ib.open_results(out), lambda: ib.run(TINY, out=out)):
        with pytest.raises(ib.UserInputError, match="chunks is not a folder"):
            call()
    tree = ib.run(TINY, out=out, overwrite=True)
    assert list(_ds(tree)["run"].values) == [0, 1, 2]


# ---------------------------------------------------------- 3. one writer a folder
def test_second_writer_is_refused_naming_the_holder(tmp_path):
    from filelock import FileLock

    out = tmp_path / "res"
    ib.run(TINY, out=out)
    # a finished folder is only read (no lock needed, it may be read-only): leave work to do
    next(iter(sorted((out / "chunks").glob("*.nc")))).unlink()
    holder = FileLock(out / ".implicit-bias.lock", thread_local=False)
    with holder:
        (out / ".implicit-bias.owner").write_text("pid 4242 on host elsewhere")
        p = _write(tmp_path, TINY)
        r = _cli("run", str(p), "--out", str(out), "-q")
        assert r.returncode == 2
        err = _one_line(r.stderr)
        assert "in use" in err and "pid 4242 on host elsewhere" in err and str(out) in err
    # released: the next run goes ahead
    assert list(_ds(ib.run(TINY, out=out))["run"].values) == [0, 1, 2]


# ------------------------- 4. numerical breakage: a diverged run, or a failed measurement
def test_linalg_fails_per_matrix_not_per_batch():
    g = torch.Generator().manual_seed(0)
    good = torch.randn(5, 5, generator=g, dtype=torch.float64)
    good = good + good.T
    bad = torch.full((5, 5), float("nan"), dtype=torch.float64)
    with _linalg.recording() as rec:
        vals, vecs, failed = _linalg.eigh(torch.stack([good, bad, good]), "test eigh")
    assert failed.tolist() == [False, True, False]
    assert torch.isnan(vals[1]).all() and torch.isnan(vecs[1]).all()
    np.testing.assert_array_equal(vals[0].numpy(), torch.linalg.eigh(good)[0].numpy())
    assert rec and rec[0][0] == "test eigh" and rec[0][1].tolist() == [False, True, False]


def test_float32_rate_1e30_beside_a_healthy_rate_is_a_diverged_run(tmp_path):
    """Today: torch._C._LinAlgError (linalg.eigh failed to converge) for the chunk."""
    cfg = {
        **TINY,
        "train": {**TINY["train"], "dtype": "float32", "steps": 20},
        "metrics": {"every": 5, "sharpness": {"iters": 6}, "stable_rank": True, "ntk": True},
        "store": {"chunk_runs": 2},
        "sweep": {"train.lr": [0.1, 1e30]},
    }
    got = _ds(ib.run(cfg, out=tmp_path / "a"))
    # the healthy run barely trains at lr 1e-6 (SPEC §3 may call it dead): it must not diverge
    assert got["phase"].values[0] != "diverged" and got["phase"].values[1] == "diverged"
    # the healthy run is what it is beside a healthy neighbour (same batch size: exact) ...
    pair = _ds(ib.run({**cfg, "sweep": {"train.lr": [0.1, 0.2]}}, out=tmp_path / "b"))
    # ... and alone (batch size 1: float32 rounding of the batched kernels only)
    alone = _ds(ib.run({**cfg, "sweep": {"train.lr": [0.1]}}, out=tmp_path / "c"))
    for v in ("loss", "sharpness", "ntk_max", "stable_rank_W1", "final_W1", "test_loss"):
        np.testing.assert_array_equal(got[v].values[0], pair[v].values[0])
        np.testing.assert_allclose(got[v].values[0], alone[v].values[0], rtol=2e-6, atol=1e-7)


def test_a_linalg_failure_is_a_failed_measurement_not_a_divergence(tmp_path, monkeypatch):
    """float64: eigh made to fail on any batch holding a matrix above 1e3 (as float32
    eigh fails at a rate of 1e30): the run with init scale 100 (curvature ≈ 10⁴×)
    fails its measurement at step 0 and is flagged with the cause (SPEC §3: a
    per-run flag, not a phase); it keeps training, its loss stays finite, its
    sharpness is NaN where the solve broke; the other equals the run alone
    within 1e-12."""
    eigh = torch.linalg.eigh

    def fragile(A, *args, **kwargs):
        if bool((A.abs() > 1e3).any()):
            raise torch.linalg.LinAlgError("linalg.eigh: failed to converge (injected)")
        return eigh(A, *args, **kwargs)

    cfg = {
        **TINY,
        "train": {**TINY["train"], "lr": 1e-6, "loss": "mse"},
        "store": {"chunk_runs": 2},
        "sweep": {"model.init_scale": [1.0, 100.0]},
    }
    monkeypatch.setattr(torch.linalg, "eigh", fragile)
    got = _ds(ib.run(cfg, out=tmp_path / "a"))
    alone = _ds(ib.run({**cfg, "sweep": {"model.init_scale": [1.0]}}, out=tmp_path / "b"))
    # neither diverges: the healthy run barely trains at lr 1e-6; the init-100 run
    # (curvature 10⁴×) does, and with no curvature measured its label reads the loss
    # only (phases module docstring): lazy, its band unchecked
    assert list(got["phase"].values) == ["not_converged", "lazy"]
    assert np.isnan(got["min_sharpness_rel"].values[1])
    assert list(got["divergence_step"].values) == [-1, -1]
    assert list(got["divergence_cause"].values) == ["", ""]
    assert list(got["measurement_failed"].values) == [False, True]
    cause = got["measurement_cause"].values
    assert cause[0] == "" and "eigh" in cause[1] and "step 0" in cause[1]
    assert np.isfinite(got["loss"].values[1]).all()  # it kept training
    assert np.isnan(got["sharpness"].values[1, 0]) and np.isnan(got["sharpness_init"].values[1])
    assert np.isfinite(got["final_W1"].values[1]).all()
    assert not (got["final_W1"].values[1] == got["init_W1"].values[1]).all()
    for v in ("loss", "sharpness", "final_W1", "final_sharpness", "test_loss"):
        np.testing.assert_allclose(got[v].values[0], alone[v].values[0], rtol=0, atol=1e-12)


# ------------------------------------- 5. failed chunks do not spread (locally or on Dask)
@pytest.mark.parametrize("where", ["local", "dask"])
def test_failing_chunk_keeps_the_others_then_is_redone(tmp_path, monkeypatch, where):
    """Locally and on Dask, a chunk that raises is reported, with the others finished."""
    from contextlib import nullcontext

    from implicit_bias import sweep

    class Flaky(sweep.Trainer):
        def train(self):
            if any(r.index == 1 for r in self.runs):
                raise RuntimeError("injected failure")
            return super().train()

    if where == "dask":
        distributed = pytest.importorskip("dask.distributed")
        cluster = distributed.LocalCluster(
            n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
        )
    out = tmp_path / "res"
    with cluster if where == "dask" else nullcontext():
        kw = {"scheduler": cluster.scheduler_address} if where == "dask" else {}
        monkeypatch.setattr(sweep, "Trainer", Flaky)
        with pytest.raises(ChunksFailed, match=r"1 of 3 chunk\(s\) failed.*g000-c00001\.nc") as err:
            ib.run(TINY, out=out, **kw)
        if where == "local":  # the API keeps the first traceback
            assert isinstance(err.value.__cause__, RuntimeError)
        kept = {p.name: p.stat().st_mtime_ns for p in (out / "chunks").iterdir()}
        assert sorted(kept) == ["g000-c00000.nc", "g000-c00002.nc"]
        monkeypatch.setattr(sweep, "Trainer", Flaky.__mro__[1])
        tree = ib.run(TINY, out=out, **kw)
    assert all((out / "chunks" / k).stat().st_mtime_ns == v for k, v in kept.items())
    ref = _ds(ib.run(TINY, out=tmp_path / "ref"))
    for v in ("loss", "sharpness", "final_W1"):
        np.testing.assert_allclose(_ds(tree)[v].values, ref[v].values, rtol=0, atol=1e-12)


def test_cli_failed_chunks_exit_1_one_line(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from implicit_bias import cli, sweep

    def boom(*a, **k):
        raise ChunksFailed("1 of 3 chunk(s) failed in X: g000-c00001.nc (RuntimeError: x)")

    monkeypatch.setattr(sweep, "run_sweep", boom)
    r = CliRunner().invoke(cli.app, ["run", str(_write(tmp_path, TINY)), "-q"])
    assert r.exit_code == 1 and "g000-c00001.nc" in _one_line(r.stderr)


def test_folder_killed_while_being_prepared_is_still_ours(tmp_path):
    """The marker is written first: a folder that got no further (no config.yaml,
    no chunks/) is ours, and the same run completes it."""
    out = tmp_path / "res"
    ib.run(TINY, out=out)
    ref = _ds(ib.open_results(out))
    for p in ("config.yaml", "chunks", "data", "chunking.json"):
        q = out / p
        if q.is_dir():
            shutil.rmtree(q)
        else:
            q.unlink()
    assert sorted(p.name for p in out.iterdir() if not p.name.endswith((".lock", ".owner"))) == [
        ".implicit-bias"
    ]
    got = _ds(ib.run(TINY, out=out))
    for v in ("loss", "sharpness", "final_W1"):
        np.testing.assert_allclose(got[v].values, ref[v].values, rtol=0, atol=1e-12)
