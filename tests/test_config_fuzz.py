"""Property: a wrong value for any key of SPEC §5's table ends in exit 2 and one line.

Hypothesis draws a key of the config table and a value of a wrong type or an
impossible value for it; ``validate`` and ``run`` (through the CLI entry point)
must exit 2 with exactly one line on stderr, no traceback, and write no
results folder.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

BASE = {
    "name": "fuzz",
    "data": {"kind": "overlap", "n_train": 8, "n_test": 4, "d": 3},
    "model": {"depth": 2, "width": 4},
    "train": {"steps": 3},
    "metrics": {"every": 2, "sharpness": {"iters": 3}},
}

# wrong values shared by kinds of key
NOT_A_NUMBER = st.sampled_from(["abc", "", [1], {"a": 1}, True, False])
NOT_A_POS_INT = st.one_of(
    NOT_A_NUMBER,
    st.integers(max_value=0),
    st.floats(allow_nan=True).filter(lambda x: x != int(x) if x == x and abs(x) < 1e300 else True),
)
NOT_A_NONNEG_INT = st.one_of(NOT_A_NUMBER, st.integers(max_value=-1), st.just(2.5))
NOT_A_POS_FLOAT = st.one_of(
    NOT_A_NUMBER, st.floats(max_value=0.0), st.sampled_from([float("nan"), float("inf")])
)
NOT_A_STRING_CHOICE = st.one_of(st.text(min_size=1, max_size=8), st.integers(), st.just([]))
NOT_A_LIST = st.one_of(st.text(min_size=1, max_size=5), st.integers(), st.just({"a": 1}))

#: (dotted key, strategy of wrong values), every key of SPEC §5's table
KEYS: list[tuple[str, st.SearchStrategy]] = [
    ("name", st.sampled_from([1, [1], {"a": 1}, None])),
    ("seed", st.one_of(NOT_A_NUMBER, st.integers(max_value=-1), st.integers(min_value=2**63))),
    (
        "data.kind",
        NOT_A_STRING_CHOICE.filter(
            lambda v: (
                v
                not in (
                    "file",
                    "overlap",
                    "separable",
                    "degenerate",
                    "gaussian_mixture",
                    "sklearn",
                    "torchvision",
                )
            )
        ),
    ),
    ("data.path", st.sampled_from(["missing.npz", "nowhere/x.csv", 3, [1]])),
    ("data.root", st.sampled_from(["no-such-folder", 3, [1]])),
    ("data.download", st.sampled_from(["yes", 1, [True]])),
    ("data.n_train", NOT_A_POS_INT),
    ("data.n_test", NOT_A_NONNEG_INT),
    ("data.d", NOT_A_POS_INT),
    ("data.mean_norm", st.one_of(NOT_A_NUMBER, st.floats(max_value=-1e-9))),
    ("data.label_noise", st.one_of(NOT_A_NUMBER, st.floats(min_value=0.5), st.just(-0.1))),
    ("data.margin", st.one_of(NOT_A_NUMBER, st.floats(max_value=-1e-9))),
    ("data.shift", st.one_of(NOT_A_NUMBER, st.floats(max_value=-1e-9))),
    ("data.p_positive", st.one_of(NOT_A_NUMBER, st.sampled_from([0, 1, 1.5, -0.2]))),
    ("data.name", st.sampled_from([3, [1], "no-such-set"])),
    ("data.classes", st.sampled_from(["ab", [[1, 2], "x"], {"a": 1}])),
    ("data.seed", st.one_of(NOT_A_NUMBER, st.integers(max_value=-1), st.integers(min_value=2**63))),
    (
        "data.normalize",
        NOT_A_STRING_CHOICE.filter(lambda v: v not in ("none", "unit", "standardize")),
    ),
    ("model.depth", NOT_A_POS_INT),
    ("model.width", NOT_A_POS_INT),
    (
        "model.activation",
        NOT_A_STRING_CHOICE.filter(
            lambda v: v not in ("linear", "relu", "leaky_relu", "smooth_leaky_relu")
        ),
    ),
    ("model.leak", st.one_of(NOT_A_NUMBER, st.sampled_from([-0.1, 1.0, 2.0]))),
    ("model.smoothing", NOT_A_POS_FLOAT),
    (
        "model.parametrization",
        NOT_A_STRING_CHOICE.filter(lambda v: v not in ("ntk", "standard", "direct")),
    ),
    ("model.last_layer", NOT_A_STRING_CHOICE.filter(lambda v: v not in ("trained", "fixed_sign"))),
    ("model.init_scale", NOT_A_POS_FLOAT),
    (
        "train.loss",
        NOT_A_STRING_CHOICE.filter(lambda v: v not in ("logistic", "exponential", "mse")),
    ),
    ("train.steps", NOT_A_POS_INT),
    ("train.lr", NOT_A_POS_FLOAT),
    ("train.lr_units", NOT_A_STRING_CHOICE.filter(lambda v: v not in ("absolute", "critical"))),
    (
        "train.schedule",
        st.sampled_from(
            ["bogus", 3, {"kind": "step", "at": "x"}, {"kind": "warmup", "steps": 0}, [1]]
        ),
    ),
    (
        "train.batch_size",
        st.one_of(
            NOT_A_POS_INT.filter(lambda v: v is not None), st.integers(min_value=9, max_value=10**6)
        ),
    ),
    ("train.dtype", NOT_A_STRING_CHOICE.filter(lambda v: v not in ("float32", "float64"))),
    ("train.device", NOT_A_STRING_CHOICE.filter(lambda v: v not in ("cpu", "cuda"))),
    ("metrics.every", NOT_A_POS_INT),
    ("metrics.at", st.one_of(NOT_A_LIST, st.just([-1]), st.just(["x"]))),
    (
        "metrics.sharpness",
        st.sampled_from([3, "yes", {"iters": 1}, {"top_k": 0}, {"iters": 3, "top_k": 4}]),
    ),
    ("metrics.ntk", st.sampled_from([3, "yes", [1], None])),
    ("metrics.stable_rank", st.sampled_from([3, "yes", [1], None])),
    ("metrics.margins", st.sampled_from([3, "yes", [1], None])),
    ("metrics.kkt", st.sampled_from([3, "yes", [1], None])),
    ("metrics.trace", st.sampled_from([3, "yes", [1], {"probes": 0}])),
    ("metrics.phase", st.sampled_from([3, {"catapult_rise": -1}, {"diverge_factor": 0.5}])),
    ("store.chunk_runs", NOT_A_POS_INT.filter(lambda v: v is not None)),
    ("store.weights", st.one_of(NOT_A_LIST, st.just(["middle"]))),
    (
        "sweep",
        st.sampled_from(
            [
                3,
                [1],
                {"train.lr": []},
                {"train.lr": 0.1},
                {"train.bogus": [1]},
                {"train.lr": [0.1, 0.1]},
            ]
        ),
    ),
]


def _set(cfg: dict, key: str, value) -> dict:
    node = cfg
    *path, last = key.split(".")
    for p in path:
        node = node.setdefault(p, {})
    node[last] = value
    return cfg


def _config(key: str, value) -> dict:
    import copy

    cfg = copy.deepcopy(BASE)
    if key == "data.path":
        cfg["data"] = {"kind": "file"}
    if key in ("data.root", "data.download"):
        cfg["data"] = {"kind": "torchvision", "name": "MNIST", "root": "no-such-folder"}
    if key in ("data.name", "data.classes"):
        cfg["data"] = {"kind": "sklearn", "name": "iris"}
    return _set(cfg, key, value)


def _invoke(*args: str):
    from typer.testing import CliRunner

    from implicit_bias.cli import app

    r = CliRunner().invoke(app, list(args))
    return r.exit_code, r.stdout, r.stderr


@st.composite
def bad_configs(draw):
    key, values = draw(st.sampled_from(KEYS))
    return key, draw(values)


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much],
)
@given(case=bad_configs())
def test_any_wrong_value_exits_2_with_one_line(tmp_path, case):
    key, value = case
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_config(key, value), sort_keys=False))
    out = tmp_path / "out"
    for verb in ("validate", "run"):
        extra = ["--out", str(out), "-q"] if verb == "run" else []
        code, stdout, stderr = _invoke(verb, str(path), *extra)
        lines = stderr.strip().splitlines()
        assert code == 2, (key, value, verb, stdout, stderr)
        assert len(lines) == 1 and "Traceback" not in stderr, (key, value, stderr)
        assert not out.exists(), (key, value)


def test_every_key_of_the_spec_table_is_fuzzed():
    spec = Path(__file__).resolve().parents[1] / "SPEC.md"
    keys = {k for k, _ in KEYS}
    for k in ("data.mean_norm", "model.init_scale", "train.schedule", "store.weights"):
        assert k in keys
    if spec.exists():  # the table's first column, where the spec is in the repository
        for line in spec.read_text().splitlines():
            if line.startswith("| `") and "." in line.split("|")[1]:
                for cell in line.split("|")[1].split(","):
                    k = cell.strip().strip("`")
                    if k.startswith("metrics.") or "." not in k:
                        continue
                    assert k in keys, k


@pytest.mark.parametrize(("key", "value"), [("seed", 2**64)])  # the rest: in process, above
def test_wrong_value_in_a_subprocess(tmp_path, key, value):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_config(key, value), sort_keys=False))
    r = subprocess.run(
        [sys.executable, "-m", "implicit_bias", "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and key in r.stderr
