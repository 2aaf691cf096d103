"""Report: figures, per-run tables and the ``report`` CLI verb (SPEC §5)."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import implicit_bias as ib
from implicit_bias import plots
from implicit_bias.phases import PHASES
from implicit_bias.report import summary_table, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

BASE = {
    "data": {"kind": "overlap", "n_train": 32, "n_test": 50, "d": 6},
    "model": {"depth": 2, "width": 16, "activation": "linear", "parametrization": "ntk"},
    "train": {"loss": "logistic", "steps": 60, "lr_units": "critical"},
    "metrics": {"every": 20, "sharpness": {"iters": 8}, "stable_rank": True, "margins": True},
}

#: a logistic sweep over (rate, init scale, seed): every figure has data
SWEEP = {
    **BASE,
    "name": "report-sweep",
    "sweep": {"train.lr": [0.5, 2.0], "model.init_scale": [0.5, 1.0], "seed": [0, 1]},
}

#: squared loss at 50× the critical rate diverges; 0.5× does not
DIVERGING = {
    **BASE,
    "name": "report-diverging",
    "train": {**BASE["train"], "loss": "mse"},
    "metrics": {"every": 20, "sharpness": {"iters": 8}},
    "sweep": {"train.lr": [0.5, 50.0], "seed": [0, 1]},
}

ALL_FIGURES = (
    "loss_curves",
    "sharpness",
    "final_sharpness_vs_lr",
    "phase_diagram",
    "stable_rank",
    "margins",
    "test_acc_vs_lr",
)
COLUMNS = (
    "group",
    "run",
    "model.init_scale",
    "train.lr",
    "seed",
    "lr",
    "phase",
    "sharpness_init",
    "final_sharpness",
    "final_loss",
    "final_test_acc",
)


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "r"
    ib.run(SWEEP, out=out, progress=False)
    return out


@pytest.fixture(scope="module")
def diverging_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "d"
    ib.run(DIVERGING, out=out, progress=False)
    return out


def _is_png(p: Path) -> bool:
    return p.stat().st_size > 1000 and p.read_bytes()[:8] == PNG_MAGIC


def _csv_rows(p: Path) -> list[dict[str, str]]:
    with open(p, newline="") as fh:
        return list(csv.DictReader(fh))


def test_report_writes_figures_and_tables(sweep_dir):
    paths = write_report(sweep_dir)
    out = sweep_dir / "report"
    assert all(p.parent == out and p.exists() for p in paths)
    for name in ALL_FIGURES:
        assert _is_png(out / f"{name}.png"), name
    assert {p.name for p in paths} == {f"{n}.png" for n in ALL_FIGURES} | {
        "summary.md",
        "summary.csv",
        # the per-run figures over all groups carry their data beside them
        "phase_diagram.csv",
        "final_sharpness_vs_lr.csv",
        "test_acc_vs_lr.csv",
    }

    ds = ib.open_results(sweep_dir)["group_000"].to_dataset()
    rows = _csv_rows(out / "summary.csv")
    assert len(rows) == ds.sizes["run"] == 8
    assert set(COLUMNS) <= set(rows[0])
    # η·λ₀/2 (lr_critical) and critical_ratio repeat the swept critical-unit rate: left out
    assert "lr_critical" not in rows[0] and "critical_ratio" not in rows[0]
    # diagnostics present in the results become columns too
    assert {"final_stable_rank_W1", "final_normalized_margin"} <= set(rows[0])
    assert sorted(int(r["run"]) for r in rows) == sorted(ds["run"].values.tolist())
    by_run = {int(r["run"]): r for r in rows}
    for i, run in enumerate(ds["run"].values):
        r = by_run[int(run)]
        assert r["phase"] == str(ds["phase"].values[i])
        assert float(r["lr"]) == pytest.approx(float(ds["lr"].values[i]))
        # η·λ₀/2 equals the swept value in critical units
        lam0 = float(ds["sharpness_init"].values[i])
        assert float(r["lr"]) * lam0 / 2 == pytest.approx(float(r["train.lr"]), rel=1e-5)

    md = (out / "summary.md").read_text()
    header = "| " + " | ".join(rows[0].keys()) + " |"
    assert header in md and md.count("\n| group_000 |") == 8
    assert "## Phase counts" in md and "loss_curves.png" in md


def test_report_with_diverged_runs(diverging_dir):
    ds = ib.open_results(diverging_dir)["group_000"].to_dataset()
    phase = ds["phase"].values
    assert (phase == "diverged").sum() == 2 and (phase != "diverged").sum() == 2
    paths = write_report(diverging_dir)
    names = {p.name for p in paths}
    # no stable rank or margins measured: those figures are skipped, the rest drawn
    assert "stable_rank.png" not in names and "margins.png" not in names
    for name in (
        "loss_curves",
        "sharpness",
        "final_sharpness_vs_lr",
        "phase_diagram",
        "test_acc_vs_lr",
    ):
        assert _is_png(diverging_dir / "report" / f"{name}.png"), name
    rows = _csv_rows(diverging_dir / "report" / "summary.csv")
    assert len(rows) == 4
    for r in rows:
        if r["phase"] == "diverged":
            assert math.isnan(float(r["final_loss"])) and math.isnan(float(r["final_sharpness"]))
            assert int(r["divergence_step"]) >= 0
        else:
            assert math.isfinite(float(r["final_loss"]))
    text = summary_table(ib.open_results(diverging_dir))
    assert "diverged" in text and "critical units" in text and "50" in text


def test_figures_skip_missing_variables_and_name_groups(sweep_dir, tmp_path):
    ds = ib.open_results(sweep_dir)["group_000"].to_dataset()
    sharp = ("sharpness", "final_sharpness")
    optional = [
        v
        for v in ds.data_vars
        if v.startswith(
            (
                *sharp,
                "stable_rank",
                "numerical_rank",
                "final_stable",
                "final_numerical",
                "margin",
                "normalized_margin",
                "final_margin",
                "final_normalized",
                "test_",
                "final_test",
            )
        )
    ]
    bare = ds.drop_vars(optional)
    with_sharpness = ds.drop_vars([v for v in optional if not v.startswith(sharp)])
    # two groups: files get a group suffix; only what a group measured is drawn
    tree = xr.DataTree.from_dict(
        {"/": xr.Dataset(), "/group_000": bare, "/group_001": with_sharpness}
    )
    paths = plots.write_all(tree, tmp_path / "figs")
    assert sorted(p.name for p in paths) == sorted(
        [
            "loss_curves_group_000.png",
            "phase_diagram_group_000.png",
            "loss_curves_group_001.png",
            "phase_diagram_group_001.png",
            "sharpness_group_001.png",
            "final_sharpness_vs_lr_group_001.png",
        ]
    )
    assert all(_is_png(p) for p in paths)


def test_summary_table_counts_phases(sweep_dir):
    tree = ib.open_results(sweep_dir)
    text = summary_table(tree)
    ds = tree["group_000"].to_dataset()
    assert text.startswith("group_000: 8 runs")
    assert "model.init_scale" in text and "lr (critical units)" in text
    counts = {p: int((ds["phase"].values == p).sum()) for p in PHASES}
    for p in PHASES:  # every label is counted, also those no run has
        assert f"{counts[p]} {p}" in text
    # after "lr (critical units)", init
    assert text.splitlines()[1].split()[4 : 4 + len(PHASES)] == list(PHASES)
    body = [ln.split() for ln in text.splitlines()[2:]]
    assert len(body) == 4  # 2 rates × 2 init scales
    assert sum(int(c) for r in body for c in r[2:7]) == 8


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "implicit_bias", *args], capture_output=True, text=True, timeout=120
    )


def test_cli_report(diverging_dir, tmp_path):
    res = _cli("report", str(diverging_dir))
    assert res.returncode == 0, res.stderr
    printed = [Path(p) for p in res.stdout.split()]
    assert diverging_dir / "report" / "summary.csv" in printed
    assert all(p.exists() for p in printed)

    res = _cli("report", str(tmp_path / "missing"))
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    assert "missing" in res.stderr


def test_markdown_and_csv_handle_nan(tmp_path):
    from implicit_bias.report import markdown_table, write_csv

    header, rows = ["a", "b", "c"], [[1, float("nan"), None], [2, np.float64(0.5), "x|y"]]
    md = markdown_table(header, rows)
    assert md.splitlines()[0] == "| a | b | c |" and "nan" in md and r"x\|y" in md
    write_csv(tmp_path / "t.csv", header, rows)
    got = _csv_rows(tmp_path / "t.csv")
    assert got[0] == {"a": "1", "b": "nan", "c": ""} and got[1]["b"] == "0.5"
