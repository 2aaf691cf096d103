"""Config validation, overrides and sweep expansion."""

from __future__ import annotations

import pytest

from implicit_bias import UserInputError
from implicit_bias.config import load_config, parse_override
from implicit_bias.config_sweep import expand_runs

EXAMPLE = """
name: catapult-demo
data: {kind: overlap, n_train: 200, n_test: 1000, d: 20}
model: {depth: 2, width: 256, activation: linear, parametrization: ntk}
train: {loss: logistic, steps: 2000, lr_units: critical}
metrics: {every: 20, sharpness: {iters: 20}}
sweep: {train.lr: [0.5, 1.0, 1.5, 1.8, 3.0], seed: [0, 1, 2, 3]}
"""


def test_spec_example_parses_and_expands(tmp_path):
    p = tmp_path / "demo.yaml"
    p.write_text(EXAMPLE)
    cfg = load_config(p)
    assert cfg.name == "catapult-demo"
    runs = expand_runs(cfg)
    assert len(runs) == 20
    coords, rc = runs[7]
    assert coords == {"train.lr": 1.0, "seed": 3}
    assert rc.train.lr == 1.0 and rc.seed == 3 and rc.sweep == {}


def test_defaults_match_spec():
    cfg = load_config({"data": {"kind": "overlap"}})
    assert cfg.model.depth == 2 and cfg.model.width == 256 and cfg.model.activation == "linear"
    assert cfg.model.leak == 0.1 and cfg.model.smoothing == 1.0
    assert cfg.model.parametrization == "ntk" and cfg.model.last_layer == "trained"
    assert cfg.train.loss == "logistic" and cfg.train.steps == 1000 and cfg.train.lr == 0.1
    assert cfg.train.lr_units == "absolute" and cfg.train.schedule.kind == "constant"
    assert (
        cfg.train.dtype == "float32" and cfg.train.device == "cpu" and cfg.train.batch_size is None
    )
    assert cfg.metrics.every == 10 and cfg.metrics.at == []
    assert cfg.metrics.sharpness is not None and cfg.metrics.sharpness.iters == 20
    assert cfg.metrics.phase.catapult_rise == 0.01 and cfg.metrics.phase.diverge_factor == 1e6
    assert (
        cfg.store.weights == ["init", "final"]
        and cfg.data.seed == 0
        and cfg.data.normalize == "none"
    )


def test_sharpness_false_turns_it_off():
    cfg = load_config({"data": {"kind": "overlap"}, "metrics": {"sharpness": False}})
    assert cfg.metrics.sharpness is None


def test_overrides_take_field_types():
    cfg = load_config(
        {"data": {"kind": "overlap"}}, ["train.lr=1e-2", "model.width=64", "sweep.seed=[1,2]"]
    )
    assert cfg.train.lr == 0.01 and cfg.model.width == 64 and cfg.sweep == {"seed": [1, 2]}
    assert parse_override("train.schedule.kind=cosine") == ("train.schedule.kind", "cosine")


@pytest.mark.parametrize(
    ("raw", "overrides", "needle"),
    [
        ({"data": {"kind": "overlap"}, "modle": {}}, None, "modle"),
        ({"data": {"kind": "overlap"}}, ["train.lrr=0.1"], "train.lrr"),
        ({"data": {"kind": "overlap"}}, ["train.lr=fast"], "train.lr"),
        ({"data": {"kind": "overlap"}}, ["train.lr=-1"], "train.lr"),
        ({"data": {"kind": "overlap"}}, ["train.lr=0"], "train.lr"),
        ({"data": {"kind": "overlap"}}, ["model.width=0"], "model.width"),
        ({"data": {"kind": "overlap"}}, ["train.steps=-5"], "train.steps"),
        ({"data": {"kind": "overlap"}}, ["model.activation=swish"], "model.activation"),
        ({"data": {"kind": "nope"}}, None, "data.kind"),
        ({"model": {}}, None, "data"),
        ({"data": {"kind": "file"}}, None, "data.path"),
        ({"data": {"kind": "overlap"}, "sweep": {"train.lr": [0.1, -2]}}, None, "train.lr"),
        ({"data": {"kind": "overlap"}, "sweep": {"train.bogus": [1]}}, None, "train.bogus"),
        ({"data": {"kind": "overlap"}, "sweep": {"seed": []}}, None, "sweep.seed"),
    ],
)
def test_bad_config_names_the_key(raw, overrides, needle):
    with pytest.raises(UserInputError) as err:
        load_config(raw, overrides)
    msg = str(err.value)
    assert needle in msg and "\n" not in msg


def test_bad_files(tmp_path):
    with pytest.raises(UserInputError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {kind: overlap\n  model: [")
    with pytest.raises(UserInputError, match="malformed YAML"):
        load_config(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(UserInputError, match="mapping"):
        load_config(lst)


def test_hash_changes_with_config():
    a = load_config({"data": {"kind": "overlap"}})
    b = load_config({"data": {"kind": "overlap"}}, ["train.lr=0.2"])
    assert a.config_hash() != b.config_hash()
    assert a.config_hash() == load_config({"data": {"kind": "overlap"}}).config_hash()


#: configs whose folder identity was fixed before later keys were added (torchvision's
#: data.root/download, the flows' train.flow*): a key added with a default must leave
#: the hash of every existing results folder alone, or resuming it is refused
_GOLDEN = [
    (
        {
            "name": "golden",
            "data": {"kind": "overlap", "n_train": 20, "n_test": 10, "d": 5},
            "model": {"depth": 2, "width": 8},
            "train": {"steps": 5, "lr": 0.1},
            "sweep": {"seed": [0, 1]},
        },
        "e5168b7795423836",
    ),
    (
        {
            "name": "golden-digits",
            "data": {"kind": "sklearn", "name": "digits", "n_train": 64},
            "model": {"depth": 3, "width": 16, "activation": "tanh"},
            "train": {"loss": "mse", "steps": 5},
        },
        "36ef18614347d8d4",
    ),
]


@pytest.mark.parametrize(("raw", "expected"), _GOLDEN)
def test_folder_identity_survives_new_keys_with_defaults(raw, expected):
    assert load_config(raw).config_hash() == expected
