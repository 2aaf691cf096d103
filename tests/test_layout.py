"""Module layout (issue 12): no import circles between engine and metrics, report and plots."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "implicit_bias"


def _imports(module: str) -> set[str]:
    """Sibling modules ``module`` imports anywhere (TYPE_CHECKING and function bodies too)."""
    tree = ast.parse((SRC / f"{module}.py").read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                out.add(node.module.split(".")[0])
            else:
                out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("implicit_bias."):
            out.add(node.module.split(".")[1])
    return out


def test_metrics_does_not_import_the_engine():
    assert "engine" not in _imports("metrics")
    assert "metrics" in _imports("engine")


def test_plots_does_not_import_report():
    assert "report" not in _imports("plots")
    assert "plots" in _imports("report")
    assert "views" in _imports("plots") and "views" in _imports("report")


def test_trainer_is_a_chunk_for_the_metrics():
    from implicit_bias import metrics
    from implicit_bias.config import load_config
    from implicit_bias.engine import Trainer
    from implicit_bias.sweep import make_plan

    cfg = load_config(
        {
            "data": {"kind": "overlap", "n_train": 8, "n_test": 4, "d": 3},
            "model": {"depth": 2, "width": 4},
            "train": {"steps": 2},
        }
    )
    tr = Trainer(make_plan(cfg).runs)
    ctx = metrics.EvalContext(chunk=tr, params=tr.init())
    out = metrics.step_metrics(ctx)
    assert {"sharpness", "test_loss", "test_acc"} <= set(out)
