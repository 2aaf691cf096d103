"""`reproduce`: recipes run through the ordinary engine, claims judged on measured numbers.

The default suite runs shrunken recipes (few steps, small nets) and checks the
plumbing: folders, reports, claims files, resumption, bad input, and that a
criterion that does not hold gives FAIL. The slow test runs the real quick
reproduction and checks the claims the papers make.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import subprocess
import sys

import pytest

from implicit_bias import reproduce as rp
from implicit_bias import run_data


def _shrink(cfg: dict) -> dict:
    cfg = copy.deepcopy(cfg)
    cfg["train"]["steps"] = 30
    sched = cfg["train"].get("schedule")
    if isinstance(sched, dict) and "at" in sched:  # keep the annealing step inside the run
        sched["at"] = [15]
    cfg["metrics"]["every"] = 10
    cfg["metrics"]["at"] = [s for s in cfg["metrics"].get("at", []) if s <= 30]
    if "width" in cfg["model"]:  # the MLPs (a convnet states channels instead)
        cfg["model"]["width"] = min(cfg["model"]["width"], 32)
    data = cfg["data"]
    data["n_train"] = min(data.get("n_train") or 40, 40)
    if data.get("d"):
        data["d"] = min(data["d"], 200)
    if "n_test" in data:
        data["n_test"] = min(data["n_test"], 50)
    sweep = cfg["sweep"]
    if "train.lr" in sweep:
        sweep["train.lr"] = sorted(sweep["train.lr"])[:: max(1, len(sweep["train.lr"]) // 3)]
    if len(sweep.get("model.init_scale", [])) > 2:
        sweep["model.init_scale"] = [min(sweep["model.init_scale"]), max(sweep["model.init_scale"])]
    sweep["seed"] = [0]
    return cfg


@pytest.fixture
def tiny(monkeypatch):
    for key, paper in list(rp.PAPERS.items()):
        exps = paper.experiments
        monkeypatch.setitem(
            rp.PAPERS,
            key,
            dataclasses.replace(
                paper,
                experiments=lambda quick, exps=exps: {
                    k: _shrink(v) for k, v in exps(quick).items()
                },
            ),
        )


#: the paper whose reports (figures) are drawn here; figures cost more than the
#: shrunken runs, and every paper's are drawn by the slow quick-reproduction test
REPORTED = "frei2023"


@pytest.mark.parametrize("paper", list(rp.PAPERS))
def test_reproduce_writes_claims_reports_and_resumes(tiny, tmp_path, paper):
    out = tmp_path / "rep"
    # one data draw keeps the default suite fast (test_data_seed_redraws_every_experiment has two)
    claims, files = rp.reproduce(paper, quick=True, out=out, reports=paper == REPORTED, draws=1)
    assert {c.paper for c in claims} == {paper}
    assert all(c.status in rp.STATUSES for c in claims)
    assert len({(c.paper, c.key) for c in claims}) == len(claims)
    for c in claims:
        for exp in c.experiment.split(", "):
            assert (out / c.paper / exp / "config.yaml").is_file()
        assert c.claim and c.criterion and c.measured
    rows = json.loads((out / "claims.json").read_text())
    assert [r["key"] for r in rows] == [c.key for c in claims]
    assert all(r["source"] and r["setting"] for r in rows)
    md = (out / "claims.md").read_text()
    assert md.count("| PASS |") + md.count("| FAIL |") + md.count("| n/a |") == len(claims)
    assert (out / paper / "claims.md").is_file()
    assert (out / "claims.csv").read_text().count("\n") == len(claims) + 1
    pngs = [f for f in files if f.suffix == ".png"]
    assert all(f.is_file() for f in pngs) and bool(pngs) == (paper == REPORTED)

    # a second call finds every chunk done and recomputes the same table
    chunks = sorted(out.glob("*/*/chunks/*"))
    stamps = [f.stat().st_mtime_ns for f in chunks]
    again, _ = rp.reproduce(paper, quick=True, out=out, reports=False, draws=1)
    assert [f.stat().st_mtime_ns for f in sorted(out.glob("*/*/chunks/*"))] == stamps
    assert again == claims
    assert all(set(c.draws) == {"0"} for c in claims)  # one draw, data seed 0

    # the paper's own figures (drawn by reproduce with its reports): every one declared
    results = {n: rp.open_experiment(out, paper, n) for n in rp.PAPERS[paper].experiments(True)}
    drawn = rp.PAPERS[paper].draw_figures(results, tmp_path / "figs")
    assert len(drawn) == len(rp.PAPERS[paper].figures) >= 1
    assert all(f.suffix == ".png" and f.stat().st_size > 0 for f in drawn)
    if paper == REPORTED:
        assert {f.name for f in drawn} <= {f.name for f in files}


def test_data_seed_redraws_every_experiment(tiny, tmp_path):
    for paper in rp.PAPERS.values():  # every experiment of every recipe sweeps the draws
        for quick, n in ((True, rp.QUICK_DRAWS), (False, rp.FULL_DRAWS)):
            for cfg in paper.configs(quick, data_seed=7).values():
                assert cfg["sweep"]["data.seed"] == list(range(7, 7 + n))
    assert rp.QUICK_DRAWS >= 2 and rp.FULL_DRAWS >= 5
    # F8 reads two experiments: both re-drawn, judged per draw
    out = tmp_path / "rep"
    claims, _ = rp.reproduce(
        "frei2023", quick=True, out=out, reports=False, data_seed=7, claim="F8"
    )
    for name in ("init_scale", "low_dim"):
        ds = rp.open_experiment(out, "frei2023", name)
        seeds = ds["data.seed"].values
        assert sorted(set(seeds.tolist())) == [7, 8]
        X = run_data(ds, "X_train")
        a, b = (X[seeds == s][0] for s in (7, 8))
        assert not (a == b).all()
    rows = json.loads((out / "frei2023" / "claims-F8.json").read_text())
    assert [set(r["draws"]) for r in rows] == [{"7", "8"}]
    assert rows[0]["rule"] == rp.EVERY_DRAW
    (c,) = claims
    assert (c.status == "PASS") == all(v == "PASS" for v in c.draws.values())
    assert "draw 7: " in c.measured and "draw 8: " in c.measured
    md = (out / "frei2023" / "claims-F8.md").read_text()
    assert f"7 {c.draws['7']}, 8 {c.draws['8']}" in md
    assert c.full and "full run" in md  # a quick table carries the full run's status


def test_claim_reruns_one_claim_only(tiny, tmp_path):
    out = tmp_path / "rep"
    claims, _ = rp.reproduce("all", quick=True, out=out, reports=False, claim="F5", seeds=2)
    assert [(c.paper, c.key) for c in claims] == [("frei2023", "F5")]
    assert sorted(p.name for p in (out / "frei2023").iterdir() if p.is_dir()) == ["leaky"]
    assert (out / "frei2023" / "claims-F5.md").is_file()
    assert not (out / "claims.md").exists()
    ds = rp.open_experiment(out, "frei2023", "leaky")
    assert sorted(set(ds["seed"].values.tolist())) == [0, 1]
    assert rp.default_out(True, 3, None, 2) == rp.Path("results/reproduce-quick-data3-seeds2")


def test_full_status_is_read_from_the_full_table(tmp_path):
    c = rp.Claim("p", "A", "claim", "x", "src", "set", "crit", "1", "PASS", "e")
    d = dataclasses.replace(c, key="B")
    path = tmp_path / "full.json"
    assert [x.full for x in rp.full_status([c], path)] == ["not run"]
    path.write_text(json.dumps([{**dataclasses.asdict(c), "status": "FAIL"},
                                {**dataclasses.asdict(d), "criterion": "another"}]))  # fmt: skip
    got = rp.full_status([c, d], path)
    assert [x.full for x in got] == ["FAIL", "not run"]  # B was judged by another criterion
    assert rp.headline(got) == "2 of 2 claims PASS; full run: 0 of 1 PASS (1 not run)"


def test_a_failing_criterion_is_fail(tiny, tmp_path):
    out = tmp_path / "rep"
    rp.run_recipe("frei2023", out, quick=True, reports=False)
    ds = rp.open_experiment(out, "frei2023", "init_scale")
    good = {c.key: c for c in rp.PAPERS["frei2023"].judge({"init_scale": ds})}
    bad_ds = ds.copy(deep=True)
    bad_ds["stable_rank_W1"][:] = 50.0  # no run is low rank any more
    bad_ds["boundary_agreement"][:] = 0.5
    bad = {c.key: c for c in rp.PAPERS["frei2023"].judge({"init_scale": bad_ds})}
    assert bad["F1"].status == "FAIL" and bad["F2"].status == "FAIL"
    assert "50" in bad["F1"].measured
    assert good.keys() == bad.keys()


def test_claims_text_counts():
    c = [
        rp.Claim("p", "A", "claim", "x", "src", "set", "y", "1", "PASS", "e"),
        rp.Claim("p", "B", "claim", "x", "src", "set", "y", "nan", "n/a", "e"),
        rp.Claim("p", "C", "sanity", "x", "src", "set", "y", "1", "PASS", "e"),
    ]
    text = rp.claims_text(c)
    assert text.splitlines()[-1] == "1 of 2 claims PASS (1 sanity checks listed apart)"
    assert "n/a" in text


def test_cli_unknown_paper_exit_2(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "implicit_bias", "reproduce", "nope", "--out", str(tmp_path / "x")],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "nope" in res.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"paper": "liu2023", "claim": "F1"}, "F1"),
        ({"paper": "all", "claim": "Z9"}, "Z9"),
        ({"paper": "all", "data_seed": -1}, "--data-seed"),
        ({"paper": "all", "draws": 0}, "--draws"),
        ({"paper": "all", "seeds": 0}, "--seeds"),
    ],
)
def test_bad_reproduce_options_name_the_option(tmp_path, kwargs, word):
    # the CLI turns UserInputError into one line and exit 2 (test_cli_unknown_paper_exit_2)
    with pytest.raises(rp.UserInputError, match=word):
        rp.reproduce(quick=True, out=tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()


def test_cli_refuses_a_folder_of_another_config(tmp_path):
    import implicit_bias as ib

    other = {
        "name": "other",
        "data": {"kind": "separable", "n_train": 8, "n_test": 4, "d": 3},
        "model": {"width": 4},
        "train": {"steps": 2},
        "metrics": {"sharpness": False},
    }
    ib.run(other, out=tmp_path / "frei2023" / "init_scale")
    cmd = [sys.executable, "-m", "implicit_bias", "reproduce", "frei2023", "--quick"]
    res = subprocess.run(
        [*cmd, "--out", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2
    assert "init_scale" in res.stderr and "--overwrite" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "claims.md").exists()


#: claims measured as FAIL on the quick settings (2 data draws, rule v2; 2026-12-02,
#: reproduce all --quick, 22 of 31 PASS):
#: L2/L3/L12 catapult on one draw only, L11 never (no rise above L₀ at depth 3), L10/L13
#: W8 gaps at noise level (< 2 SE), L14 1.06 > 1.05 on draw 0 (F9 passes since it is judged
#: against the clean-trained net at ‖μ‖ 12: loss 0.002, 0.004; L15 passes on both draws)
#: CF1: in the cohen2024 net GD oscillates in bursts and L + tr Σ/η over-predicts its
#: 40-iteration average (mean relative error 0.62, 0.67; the gradient flow's 0.74, 0.76)
#: E8: on the synthetic set the sharpness overshoots to 1.6–1.9 × 2/η after reaching it;
#: C2: RMSProp's peak 1.55 × its threshold on draw 1 (band 1.3). Second session of
#: 2026-12-02: 43 of 54 PASS.
KNOWN_FAIL: set[str] = {
    "L2", "L3", "L10", "L11", "L12", "L13", "L14", "W8", "E8", "C2", "CF1",
}  # fmt: skip


@pytest.mark.slow
def test_quick_reproduction_claims(tmp_path):
    """The real quick recipes (a few minutes on 2 cores): every claim holds, except
    those the README reports as honest FAILs (``KNOWN_FAIL``)."""
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "implicit_bias",
            "reproduce",
            "all",
            "--quick",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    for paper in rp.PAPERS:  # every paper's reports are drawn (the default suite draws one)
        assert list((tmp_path / paper).rglob("*.png")), paper
        # and the paper's own figures
        assert len(list((tmp_path / paper / "figures").glob("*.png"))) == len(
            rp.PAPERS[paper].figures
        )
    rows = {r["key"]: r for r in json.loads((tmp_path / "claims.json").read_text())}
    # every row judged on every quick data draw; a quick row carries the full run's status
    assert all(len(r["draws"]) == rp.QUICK_DRAWS and r["full"] for r in rows.values())
    failing = {
        k: r["measured"] for k, r in rows.items() if r["status"] != "PASS" and k not in KNOWN_FAIL
    }
    assert not failing


def test_reproduction_root_refuses_someone_elses_folder(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    with pytest.raises(rp.UserInputError, match=r"notes\.txt"):
        rp.reproduce("liu2023", quick=True, out=out)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # nothing written
    # a reproduction made before the marker existed (tables and paper folders) is ours
    old = tmp_path / "old"
    (old / "liu2023").mkdir(parents=True)
    (old / "claims.md").write_text("# Claims\n")
    rp.claim_root(old)
    assert (old / rp.REPRODUCTION_MARKER).is_file()
    (old / "claims.md").unlink()
    rp.claim_root(old)  # marked now: accepted whatever it holds
