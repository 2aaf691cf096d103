"""Every claim of every paper: a sourced row whose criterion can fail.

For each claim the negative control — the same criterion on a setting where
the phenomenon is absent (``ClaimSpec.control``) — is run through the ordinary
engine and must FAIL. A row that could not fail would be a sanity check, and
those are registered apart (``kind='sanity'``).
"""

from __future__ import annotations

import json

import pytest

from implicit_bias.papers import KINDS, PAPERS, STATUSES
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
        row = spec.evaluate(paper, results)
        assert row.status == "FAIL", f"{paper} {key} control ({spec.control_note}): {row.measured}"

    return type(
        f"TestControls_{paper}", (), {"test_negative_control_fails": test_negative_control_fails}
    )


for _paper in PAPERS:
    globals()[f"TestControls_{_paper}"] = _controls_of(_paper)
