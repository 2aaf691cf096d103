"""A researcher's own sweep (issue 21): one runs table, figures across groups,
a results folder's config rerun, discoverable keys."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import implicit_bias as ib
from implicit_bias import UserInputError
from implicit_bias.config import load_config, suggest_key
from implicit_bias.plots_runs import choose_axes, phase_cells
from implicit_bias.report import write_report

#: rate × width × seed: the width splits the runs into two groups (W1 shapes differ)
RATE_WIDTH = {
    "name": "rate-width",
    "data": {"kind": "overlap", "n_train": 16, "n_test": 20, "d": 3},
    "model": {"depth": 2, "width": 4, "activation": "relu"},
    "train": {"loss": "logistic", "steps": 12, "lr_units": "critical", "dtype": "float64"},
    "metrics": {"every": 6, "sharpness": {"iters": 4}},
    "sweep": {"train.lr": [0.5, 4.0], "model.width": [4, 8], "seed": [0, 1]},
}


@pytest.fixture(scope="module")
def rate_width(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("user") / "rw"
    ib.run(RATE_WIDTH, out=out, progress=False)
    return out


def _csv(p: Path) -> list[dict[str, str]]:
    with open(p, newline="") as fh:
        return list(csv.DictReader(fh))


def test_runs_table_one_row_per_run_across_groups(rate_width):
    tree = ib.open_results(rate_width)
    df = ib.runs_table(rate_width)
    assert isinstance(df, pd.DataFrame)
    assert len(df) == 8 and sorted(df["group"].unique()) == ["group_000", "group_001"]
    assert df["run"].tolist() == list(range(8))
    assert {"model.width", "train.lr", "seed", "lr", "phase", "final_loss"} <= set(df.columns)
    # the critical-unit rate is not repeated as lr_critical / critical_ratio
    assert "lr_critical" not in df.columns and "critical_ratio" not in df.columns
    assert df.attrs["duplicates"] == {"lr_critical": "train.lr", "critical_ratio": "train.lr"}
    for name, node in tree.children.items():
        ds = node.to_dataset()
        sub = df[df["group"] == name].set_index("run")
        runs = ds["run"].values
        np.testing.assert_array_equal(sub.loc[runs, "model.width"], ds["model.width"].values)
        np.testing.assert_array_equal(sub.loc[runs, "phase"], ds["phase"].values.astype(str))
        np.testing.assert_allclose(sub.loc[runs, "final_loss"], ds["final_loss"].values)
    # the same table from the tree as from the folder
    pd.testing.assert_frame_equal(df, ib.runs_table(tree))


def test_report_draws_one_phase_diagram_over_rate_and_width(rate_width):
    paths = write_report(rate_width)
    out = rate_width / "report"
    names = {p.name for p in paths}
    assert "phase_diagram.png" in names and not any("phase_diagram_group" in n for n in names)
    cells = _csv(out / "phase_diagram.csv")
    assert list(cells[0])[:2] == ["model.width", "train.lr"]  # y, then x
    assert {(c["model.width"], c["train.lr"]) for c in cells} == {
        (w, r) for w in ("4", "8") for r in ("0.5", "4.0")
    }
    df = ib.runs_table(rate_width)
    for c in cells:
        sel = df[
            (df["model.width"] == int(c["model.width"])) & (df["train.lr"] == float(c["train.lr"]))
        ]
        assert int(c["n_runs"]) == len(sel) == 2
        assert sorted(c["phases"].split(";")) == sorted(sel["phase"])
        assert sum(int(c[p]) for p in _phases()) == 2
    # summary.csv is the runs table
    rows = _csv(out / "summary.csv")
    assert list(rows[0]) == [str(c) for c in df.columns] and len(rows) == 8
    # trace figures stay per group (their arrays differ in shape)
    assert {"loss_curves_group_000.png", "loss_curves_group_001.png"} <= names


def _phases() -> tuple[str, ...]:
    from implicit_bias.phases import PHASES

    return PHASES


def test_report_axes_options(rate_width):
    df = ib.runs_table(rate_width)
    axes = choose_axes(df, x="model.width", y="seed", facet=["train.lr"], critical=True)
    cells = phase_cells(df, axes)
    assert list(cells.columns)[:3] == ["train.lr", "seed", "model.width"]
    assert len(cells) == 8 and (cells["n_runs"] == 1).all()
    with pytest.raises(UserInputError, match=r"--x 'model.widht'.*model.width"):
        write_report(rate_width, x="model.widht")
    with pytest.raises(UserInputError, match="different keys"):
        write_report(rate_width, x="model.width", y="model.width")


def test_default_axes():
    df = pd.DataFrame(
        {
            "run": range(8),
            "model.width": [4, 8] * 4,
            "model.init_scale": [0.5, 0.5, 1.0, 1.0] * 2,
            "train.lr": [0.5] * 4 + [2.0] * 4,
            "seed": [0] * 8,
            "lr": np.linspace(1, 2, 8),
            "phase": ["lazy"] * 8,
        }
    )
    ax = choose_axes(df, critical=True)
    # the rate on x, init scale preferred on y, the rest as panels
    assert (ax.x, ax.y, ax.facet) == ("train.lr", "model.init_scale", ["model.width"])
    ax = choose_axes(df.drop(columns=["model.init_scale"]), critical=True)
    assert (ax.x, ax.y, ax.facet) == ("train.lr", "model.width", [])
    only_rate = df[["run", "train.lr", "seed", "lr", "phase"]].assign(seed=range(8))
    ax = choose_axes(only_rate, critical=True)
    assert (ax.x, ax.y, ax.facet) == ("train.lr", "seed", [])
    cells = phase_cells(only_rate, ax)
    assert len(cells) == 8 and (cells["n_runs"] == 1).all()


def test_saved_config_is_a_valid_input(rate_width, tmp_path):
    saved = rate_width / "config.yaml"
    assert "config_hash" in saved.read_text()
    cfg = load_config(saved)
    assert cfg.config_hash() == load_config(RATE_WIDTH).config_hash()
    again = ib.run(saved, out=tmp_path / "again", progress=False)
    a, b = ib.runs_table(again), ib.runs_table(rate_width)
    np.testing.assert_allclose(a["final_loss"], b["final_loss"], rtol=1e-12)


def test_saved_config_of_a_relative_data_file_reruns_anywhere(tmp_path, monkeypatch):
    # issue 21: `run DIR/config.yaml --out NEW` for a folder made from a data file
    # named relative to its config: the saved config lives in DIR, the data does not
    src = tmp_path / "project"
    (src / "data").mkdir(parents=True)
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((12, 3)), np.where(rng.standard_normal(12) > 0, 1, -1)
    np.savez(src / "data" / "d.npz", X_train=X, y_train=y, X_test=X[:4], y_test=y[:4])
    raw = {
        "name": "from-file",
        "data": {"kind": "file", "path": "data/d.npz"},
        "model": {"depth": 2, "width": 4},
        "train": {"steps": 4, "lr": 0.1, "dtype": "float64"},
        "metrics": {"every": 2, "sharpness": {"iters": 4}},
        "sweep": {"seed": [0, 1]},
    }
    p = src / "c.yaml"
    p.write_text(json.dumps(raw))
    first = tmp_path / "first"
    ib.run(p, out=first, progress=False)
    saved = first / "config.yaml"
    # the identity is that of the original config; the folder accepts its own file
    assert load_config(saved).config_hash() == load_config(p).config_hash()
    monkeypatch.chdir(tmp_path)  # neither the config's folder nor the data's
    again = ib.run(saved, out=tmp_path / "again", progress=False)
    np.testing.assert_allclose(
        ib.runs_table(again)["final_loss"], ib.runs_table(first)["final_loss"], rtol=1e-12
    )
    assert ib.run(saved, out=first, progress=False) is not None  # finished: read, not redone
    # a config elsewhere, or a folder without the record, still resolves beside the file
    (first / ".implicit-bias").write_text(
        json.dumps({**json.loads((first / ".implicit-bias").read_text()), "data_base_dir": 1})
    )
    with pytest.raises(UserInputError, match=r"data\.path: file not found"):
        ib.run(saved, out=tmp_path / "third", progress=False)


def test_misspelled_key_suggests_the_right_one():
    assert suggest_key("model.widht") == "model.width"
    assert suggest_key("metrics.sharpness.iter") == "metrics.sharpness.iters"
    assert suggest_key("train.schedule.factr") == "train.schedule.factor"
    assert suggest_key("model.qqqqq") is None
    with pytest.raises(
        UserInputError, match=r"unknown key 'model.widht' \(did you mean 'model.width'\?\)"
    ):
        load_config({**RATE_WIDTH, "model": {"widht": 8}})
    swept = {**RATE_WIDTH, "sweep": {"model.widht": [4, 8]}}
    with pytest.raises(UserInputError, match=r"did you mean 'model.width'"):
        load_config(swept)


def test_keys_lists_every_key_with_type_default_and_description(tmp_path):
    from implicit_bias.config import ExperimentConfig, _sections_of
    from implicit_bias.config_keys import json_schema, key_rows

    rows = {k: (t, d, s) for k, t, d, s in key_rows()}

    def leaves(model, prefix=""):
        for name, field in model.model_fields.items():
            yield prefix + name
            for sec in _sections_of(field.annotation):
                yield from leaves(sec, prefix + name + ".")

    for key in leaves(ExperimentConfig):
        assert key in rows, key
        assert rows[key][2], f"{key} has no description"
        assert "SPEC" not in rows[key][2] and "§" not in rows[key][2]
    assert rows["model.width"][:2] == ("int > 0", "256")
    assert rows["data.kind"][1] == "required" and "breast_cancer" in rows["data.kind"][2]
    assert rows["train.schedule.kind"][0] == '"constant" | "step" | "cosine" | "warmup"'
    schema = json_schema()
    assert "SPEC" not in json.dumps(schema)
    res = subprocess.run(
        [sys.executable, "-m", "implicit_bias", "keys", "--json-schema", str(tmp_path / "s.json")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert "model.width: int > 0  (default 256)" in res.stdout
    written = json.loads((tmp_path / "s.json").read_text())
    assert written == json.loads(json.dumps(schema))
    model = written["$defs"]["ModelConfig"]
    assert model["additionalProperties"] is False
    assert "Hidden width" in model["properties"]["width"]["description"]


def test_few_runs_are_drawn_run_by_run_and_log_axes_say_so(rate_width):
    from implicit_bias import plots
    from implicit_bias.views import group_views

    view = group_views(ib.open_results(rate_width))[0]  # 2 rates × 2 seeds
    fig = plots.loss_curves(view, "rate-width", False)
    ax = fig.axes[0]
    alive = view.phases() != "diverged"
    # one line per run that did not diverge (no median of two runs), none shaded
    solid = [ln for ln in ax.get_lines() if ln.get_linestyle() != ":"]
    assert len(solid) == int(alive.sum())
    assert not ax.collections  # no min–max band
    assert "(log scale)" in ax.get_ylabel()
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any("each run drawn" in t for t in labels)
    assert not any("range over seeds" in t for t in labels)


def test_estimate_measures_each_group(rate_width):
    from implicit_bias.estimate import estimate_seconds
    from implicit_bias.sweep import make_plan

    plan = make_plan(load_config(RATE_WIDTH))
    est = estimate_seconds(plan)
    assert len(est.per_group) == 2
    assert 0 < est.low <= est.seconds <= est.high < 600
    for step, ev, fixed, chunks in est.per_group:
        assert step > 0 and ev >= 0 and fixed >= 0 and chunks == 1
    assert est.text().startswith("time: about ")
