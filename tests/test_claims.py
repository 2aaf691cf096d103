"""Every claim of every paper: a sourced row whose criterion can fail.

For each claim the negative control — the same criterion on a setting where
the phenomenon is absent (``ClaimSpec.control``) — is run through the ordinary
engine and must FAIL. A row that could not fail would be a sanity check, and
those are registered apart (``kind='sanity'``).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

from implicit_bias.papers import (
    EVERY_DRAW,
    KINDS,
    PAPERS,
    STATISTICAL,
    STATUSES,
    ClaimSpec,
    Outcome,
)
from implicit_bias.papers._base import gl, not_judged, significant
from implicit_bias.reproduce import _first_group
from implicit_bias.sweep import run_sweep

CLAIMS = [(p, c.key) for p, paper in PAPERS.items() for c in paper.claims if c.kind == "claim"]


def test_every_row_names_source_setting_and_criterion():
    for paper in PAPERS.values():
        keys = [c.key for c in paper.claims]
        assert len(keys) == len(set(keys)), paper.key
        exps = paper.experiments(True)
        for c in paper.claims:
            assert c.kind in KINDS
            assert c.claim and c.source and c.setting and c.criterion, (paper.key, c.key)
            assert set(c.uses) <= set(exps), (paper.key, c.key)
            if c.kind == "claim":
                assert c.control is not None and c.control_note, (paper.key, c.key)


def test_missing_experiment_is_na():
    paper = PAPERS["liu2023"]
    rows = paper.judge({})
    assert {r.status for r in rows} == {"n/a"}
    assert all(r.status in STATUSES for r in rows)
    assert not any(r.judged for r in rows)


def _fake(values: dict[int, list[float]]) -> xr.Dataset:
    """A Dataset of runs with ``data.seed`` and ``seed`` coordinates and one scalar ``v``."""
    seeds = [s for s, vs in values.items() for _ in vs]
    v = [x for vs in values.values() for x in vs]
    inits = [i for vs in values.values() for i in range(len(vs))]
    return xr.Dataset(
        {"v": ("run", np.array(v, dtype=float))},
        coords={"data.seed": ("run", seeds), "seed": ("run", inits)},
    )


def _spec(judge, statistical=False) -> ClaimSpec:
    return ClaimSpec("X1", "c", "s", "set", "crit", ("e",), judge, None, "", "claim", statistical)


def test_claims_are_judged_draw_by_draw():
    def judge(r):
        v = r.scalar("v")
        if not v.size:
            return not_judged("nothing")
        return bool(np.all(v > 0)), gl(v)

    row = _spec(judge).evaluate("p", {"e": _fake({0: [1.0, 2.0], 3: [1.0, -1.0]})})
    assert row.draws == {"0": "PASS", "3": "FAIL"} and row.status == "FAIL"
    assert row.rule == EVERY_DRAW and row.judged
    assert "draw 3: [1, -1]" in row.measured
    row = _spec(judge).evaluate("p", {"e": _fake({0: [1.0], 1: [2.0]})})
    assert row.draws == {"0": "PASS", "1": "PASS"} and row.status == "PASS"
    # a guard (nothing to compare) is n/a and not judged: a control failing that way is caught
    row = _spec(lambda r: not_judged("no runs to judge")).evaluate("p", {"e": _fake({0: [1.0]})})
    assert (row.status, row.judged) == ("n/a", False)
    row = _spec(lambda r: (False, "a guard's FAIL")).evaluate("p", {"e": _fake({0: [1.0]})})
    assert (row.status, row.judged) == ("FAIL", True)  # a plain tuple is the criterion's verdict
    # one draw of the data without a data.seed coordinate is judged as one draw
    row = _spec(judge).evaluate("p", {"e": _fake({0: [1.0]}).drop_vars("data.seed")})
    assert row.draws == {"all": "PASS"} and row.status == "PASS"


def test_a_statistical_claim_pools_draws_and_seeds():
    def judge(r):
        v = r.scalar("v")
        return Outcome(bool(v.mean() > 0), gl(v), effects=tuple(v))

    # effects 0.5, 1.5, 0.5, 1.5: mean 1 > 2 × SE 0.289
    row = _spec(judge, True).evaluate("p", {"e": _fake({0: [0.5, 1.5], 1: [0.5, 1.5]})})
    assert row.status == "PASS" and row.rule == STATISTICAL
    assert row.measured.startswith("effect 1 ± 0.289")
    # mean 0.25 against SE 0.75: at noise level, FAIL although one draw's mean is > 0
    row = _spec(judge, True).evaluate("p", {"e": _fake({0: [-1.0, 2.0], 1: [-1.0, 1.0]})})
    assert row.status == "FAIL" and row.draws == {"0": "PASS", "1": "FAIL"}
    # one sample: no standard error, not judged as a PASS or FAIL
    row = _spec(judge, True).evaluate("p", {"e": _fake({0: [1.0]})})
    assert row.status == "n/a"
    assert significant([1.0, 1.0, 1.0])[0] is True  # no spread: any positive mean
    assert significant([0.0, 0.0])[0] is False
    assert significant([0.01, 0.02], minimum=0.05)[0] is False  # significant but too small


_RUNS: dict[str, object] = {}


def _run(cfg: dict, tmp_root) -> object:
    """Run a control config once per test process (several claims share one control)."""
    key = json.dumps(cfg, sort_keys=True)
    if key not in _RUNS:
        folder = tmp_root / f"ctrl{len(_RUNS)}"
        _RUNS[key] = _first_group(run_sweep(cfg, folder))
    return _RUNS[key]


@pytest.fixture(scope="session")
def control_root(tmp_path_factory):
    return tmp_path_factory.mktemp("controls")


def _controls_of(paper: str) -> type:
    """A test class for one paper's controls (ids read ``TestControls_<paper>::…[key]``).

    Controls that share a run reuse it within a test process (``_run``); under
    xdist a shared run may be made once per worker.
    """

    @pytest.mark.parametrize("key", [k for p, k in CLAIMS if p == paper])
    def test_negative_control_fails(self, key, control_root):
        spec = next(c for c in PAPERS[paper].claims if c.key == key)
        cfgs = PAPERS[paper].control_configs(key)
        assert set(cfgs) == set(spec.uses)
        results = {name: _run(cfg, control_root) for name, cfg in cfgs.items()}
        # the control's runs exist: a criterion with nothing to judge proves nothing
        assert all(ds.sizes["run"] > 0 for ds in results.values()), (paper, key)
        row = spec.evaluate(paper, results)
        note = f"{paper} {key} control ({spec.control_note}): {row.measured}"
        # the criterion's own comparison ran (no guard decided) and it failed
        assert row.judged, "decided by a guard, not the criterion: " + note
        assert row.status == "FAIL", note

    return type(
        f"TestControls_{paper}", (), {"test_negative_control_fails": test_negative_control_fails}
    )


for _paper in PAPERS:
    globals()[f"TestControls_{_paper}"] = _controls_of(_paper)
