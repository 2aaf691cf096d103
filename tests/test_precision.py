"""train.matmul_precision: TF32 for the training GEMMs only, curvature in full precision.

The device-dependent setting is mocked (``precision.applies`` → True, the
torch setter replaced by a recorder), so the scoping is checked on the CPU:
inside the training step the level is the config's, inside every metric
(initial sharpness, eval steps, final metrics) it is ``highest``, and the
process-wide setting is restored afterwards.
"""

from __future__ import annotations

import pytest
import torch

from implicit_bias import UserInputError, metrics, precision
from implicit_bias.config import load_config
from implicit_bias.engine import Trainer
from implicit_bias.models import mlp
from implicit_bias.sweep import make_plan

CFG = {
    "data": {"kind": "overlap", "n_train": 16, "n_test": 4, "d": 4},
    "model": {"depth": 2, "width": 8, "activation": "relu"},
    "train": {"steps": 6, "lr": 1.0, "lr_units": "critical"},
    "metrics": {"every": 3, "sharpness": {"iters": 5}, "stable_rank": True, "margins": True},
    "sweep": {"seed": [0, 1]},
}


@pytest.fixture
def recorded(monkeypatch):
    """A fake process-wide precision; what each engine piece saw."""
    state = {"level": "highest", "seen": {}, "sets": 0}

    def _set(level):
        state["level"] = level
        state["sets"] += 1

    monkeypatch.setattr(precision, "applies", lambda device: True)
    monkeypatch.setattr(precision, "_get", lambda: state["level"])
    monkeypatch.setattr(precision, "_set", _set)

    def spy(module, name):
        fn = getattr(module, name)

        def wrapped(*args, **kwargs):
            state["seen"].setdefault(name, set()).add(state["level"])
            return fn(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapped)

    for name in ("forward_loss", "descend", "hvp_operator"):
        spy(mlp, name)
    for name in ("top_sharpness", "step_metrics", "final_metrics"):
        spy(metrics, name)
    return state


@pytest.mark.parametrize("level", ["high", "highest"])
def test_training_step_at_the_policy_metrics_in_full_precision(recorded, level):
    cfg = load_config({**CFG, "train": {**CFG["train"], "matmul_precision": level}})
    Trainer(make_plan(cfg).runs).train()
    seen = recorded["seen"]
    assert seen["forward_loss"] == {level} and seen["descend"] == {level}
    for name in ("top_sharpness", "step_metrics", "final_metrics", "hvp_operator"):
        assert seen[name] == {"highest"}, name
    assert recorded["level"] == "highest"  # restored


def test_process_wide_setting_is_restored(recorded):
    recorded["level"] = "medium"  # whatever the user had set stays theirs
    cfg = load_config({**CFG, "train": {**CFG["train"], "matmul_precision": "high"}})
    Trainer(make_plan(cfg).runs).train()
    assert recorded["seen"]["descend"] == {"high"}
    assert recorded["seen"]["step_metrics"] == {"highest"}
    assert recorded["level"] == "medium"


def test_cpu_is_a_no_op(monkeypatch):
    """On the CPU nothing is set, and `high` gives the same numbers as `highest`."""
    calls = []
    monkeypatch.setattr(precision, "_set", calls.append)
    cfg = {**CFG, "metrics": {"every": 3, "sharpness": False}, "train": {"steps": 6}}
    a = Trainer(make_plan(load_config(cfg)).runs).train()
    cfg["train"] = {"steps": 6, "matmul_precision": "high"}
    b = Trainer(make_plan(load_config(cfg)).runs).train()
    assert calls == []
    assert (a.per_iteration["loss"] == b.per_iteration["loss"]).all()
    assert torch.get_float32_matmul_precision() == "highest"


def test_config_key_is_validated_and_group_level():
    with pytest.raises(UserInputError, match="matmul_precision"):
        load_config({**CFG, "train": {"matmul_precision": "medium"}})
    base = load_config({"data": {"kind": "overlap"}})
    same = load_config({"data": {"kind": "overlap"}, "train": {"matmul_precision": "highest"}})
    high = load_config({"data": {"kind": "overlap"}, "train": {"matmul_precision": "high"}})
    assert base.train.matmul_precision == "highest"
    # the default keeps the hash of folders made before the key existed; `high` is another config
    assert base.config_hash() == same.config_hash() != high.config_hash()
    # sweeping it makes two groups (it fixes the code a chunk runs, like dtype)
    plan = make_plan(load_config({**CFG, "sweep": {"train.matmul_precision": ["highest", "high"]}}))
    assert len(plan.groups) == 2
