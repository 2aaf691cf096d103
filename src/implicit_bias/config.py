"""Experiment configuration: pydantic models for SPEC §5, YAML in and out, sweeps.

A config file has the sections ``data``, ``model``, ``train``, ``metrics``,
``store`` and ``sweep`` plus ``name`` and ``seed``. Every model forbids unknown
keys. A sweep maps dotted keys to lists; runs are their cartesian product
(times ``sweep.seed``), each a fully resolved :class:`ExperimentConfig`.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ._errors import UserInputError

PositiveInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Probability = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


# --------------------------------------------------------------------------- data
class DataConfig(_Strict):
    """Where the training data comes from (SPEC §4)."""

    kind: Literal["file", "overlap", "separable", "degenerate", "gaussian_mixture", "sklearn"]
    path: str | None = None
    labels: str | None = None
    label_column: str | int | None = None
    n_train: PositiveInt | None = None
    n_test: NonNegInt | None = None
    d: PositiveInt | None = None
    mean_norm: NonNegFloat | None = None
    label_noise: Annotated[float, Field(ge=0, lt=0.5, allow_inf_nan=False)] | None = None
    margin: NonNegFloat | None = None
    shift: NonNegFloat | None = None
    p_positive: Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)] | None = None
    separable: bool | None = None
    name: str | None = None
    classes: list[list[int]] | list[int] | None = None
    test_fraction: Annotated[float, Field(ge=0, lt=1)] | None = None
    seed: int = 0
    normalize: Literal["none", "unit", "standardize"] = "none"

    @model_validator(mode="after")
    def _kind_requirements(self) -> DataConfig:
        if self.kind == "file" and not self.path:
            raise ValueError("data.path is required when data.kind is 'file'")
        if self.kind == "sklearn" and not self.name:
            raise ValueError("data.name is required when data.kind is 'sklearn'")
        return self


# -------------------------------------------------------------------------- model
class ModelConfig(_Strict):
    """The bias-free fully connected network of SPEC §2."""

    depth: Annotated[int, Field(ge=1)] = 2
    width: PositiveInt = 256
    activation: Literal["linear", "relu", "leaky_relu", "smooth_leaky_relu"] = "linear"
    leak: Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)] = 0.1
    smoothing: PositiveFloat = 1.0
    parametrization: Literal["ntk", "standard", "direct"] = "ntk"
    last_layer: Literal["trained", "fixed_sign"] = "trained"
    init_scale: NonNegFloat = 1.0

    @model_validator(mode="after")
    def _fixed_sign_needs_hidden(self) -> ModelConfig:
        if self.last_layer == "fixed_sign" and self.depth < 2:
            raise ValueError("model.depth must be >= 2 when model.last_layer is 'fixed_sign'")
        if self.last_layer == "fixed_sign" and self.width % 2:
            raise ValueError("model.width must be even when model.last_layer is 'fixed_sign'")
        return self


# -------------------------------------------------------------------------- train
class ConstantSchedule(_Strict):
    kind: Literal["constant"] = "constant"


class StepSchedule(_Strict):
    """Multiply the rate by ``factor`` at each step in ``at`` (annealing, Liu et al.)."""

    kind: Literal["step"]
    at: list[NonNegInt] = Field(default_factory=list)
    factor: PositiveFloat = 0.1


class CosineSchedule(_Strict):
    kind: Literal["cosine"]
    final: NonNegFloat = 0.0


class WarmupSchedule(_Strict):
    kind: Literal["warmup"]
    steps: PositiveInt = 100


Schedule = Annotated[
    ConstantSchedule | StepSchedule | CosineSchedule | WarmupSchedule,
    Field(discriminator="kind"),
]


class TrainConfig(_Strict):
    loss: Literal["logistic", "exponential", "mse"] = "logistic"
    steps: PositiveInt = 1000
    lr: PositiveFloat = 0.1
    lr_units: Literal["absolute", "critical"] = "absolute"
    schedule: Schedule = Field(default_factory=ConstantSchedule)
    batch_size: PositiveInt | None = None
    dtype: Literal["float32", "float64"] = "float32"
    device: Literal["cpu", "cuda"] = "cpu"
    #: float32 matmuls of the training steps: ``high`` allows TF32 on CUDA (curvature
    #: and eigensolvers stay in full precision; a no-op on the CPU), see precision.py
    matmul_precision: Literal["highest", "high"] = "highest"

    @field_validator("schedule", mode="before")
    @classmethod
    def _schedule_shorthand(cls, v: Any) -> Any:
        if isinstance(v, str):
            return {"kind": v}
        return v


# ------------------------------------------------------------------------ metrics
class SharpnessConfig(_Strict):
    iters: Annotated[int, Field(ge=2)] = 20
    top_k: PositiveInt = 1
    tol: PositiveFloat = 1e-3


class PhaseConfig(_Strict):
    catapult_rise: NonNegFloat = 0.01
    diverge_factor: Annotated[float, Field(gt=1)] = 1.0e6


class TraceConfig(_Strict):
    probes: PositiveInt = 10
    density: bool = False
    iters: Annotated[int, Field(ge=2)] = 30


class MetricsConfig(_Strict):
    every: PositiveInt = 10
    at: list[NonNegInt] = Field(default_factory=list)
    sharpness: SharpnessConfig | None = Field(default_factory=SharpnessConfig)
    gn_sharpness: bool = False
    ntk: bool = False
    ntk_gram_at: list[NonNegInt] = Field(default_factory=list)
    stable_rank: bool = False
    rank_tol: PositiveFloat = 1e-3
    margins: bool = False
    kkt: bool = False
    trace: TraceConfig | None = None
    phase: PhaseConfig = Field(default_factory=PhaseConfig)

    @field_validator("sharpness", "trace", mode="before")
    @classmethod
    def _switch(cls, v: Any) -> Any:
        """``false`` turns a measurement off, ``true`` turns it on with defaults."""
        if v is False or v is None:
            return None
        if v is True:
            return {}
        return v


# -------------------------------------------------------------------------- store
class StoreConfig(_Strict):
    chunk_runs: PositiveInt | None = None
    weights: list[Literal["init", "final"]] = Field(default_factory=lambda: ["init", "final"])  # type: ignore[arg-type]


# ----------------------------------------------------------------------- top level
class ExperimentConfig(_Strict):
    """A whole experiment: one set of runs, maybe a sweep."""

    name: str = "experiment"
    seed: int = 0
    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    sweep: dict[str, list[Any]] = Field(default_factory=dict)

    @field_validator("sweep")
    @classmethod
    def _sweep_lists(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in v.items():
            if not values:
                raise ValueError(f"sweep.{key} must be a non-empty list")
            if key == "sweep" or key.startswith("sweep."):
                raise ValueError(f"sweep.{key}: cannot sweep over the sweep itself")
        return v

    def config_hash(self) -> str:
        """A short hash of the resolved config (what identifies a results folder)."""
        raw = self.model_dump(mode="json")
        # keys added with a default that reproduces the old behaviour do not change
        # the identity of folders made before them
        if raw["train"].get("matmul_precision") == "highest":
            del raw["train"]["matmul_precision"]
        # the sweep's key order fixes the run order, so it is part of the identity
        raw["sweep_order"] = list(self.sweep)
        blob = json.dumps(raw, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ------------------------------------------------------------------- error text
def _format_validation_error(err: ValidationError, prefix: str = "") -> str:
    e = err.errors()[0]
    loc = [str(p) for p in e["loc"] if not (isinstance(p, str) and p in _UNION_TAGS)]
    key = ".".join(loc)
    if prefix:
        key = f"{prefix}.{key}" if key else prefix
    kind = e["type"]
    if kind == "extra_forbidden":
        return f"config error: unknown key '{key}'"
    if kind == "missing":
        return f"config error: missing required key '{key}'"
    msg = e["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
        return f"config error: {msg}"
    got = e.get("input")
    got_s = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"config error: {key}: {msg}{got_s}" if key else f"config error: {msg}{got_s}"


_UNION_TAGS = {"constant", "step", "cosine", "warmup", "SharpnessConfig", "TraceConfig"}


def _validate(raw: Mapping[str, Any], prefix: str = "") -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(dict(raw))
    except ValidationError as err:
        raise UserInputError(_format_validation_error(err, prefix)) from None


# ------------------------------------------------------------------ dotted keys
def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for p in parts[:-1]:
        nxt = node.get(p)
        if nxt is None or nxt is False or nxt is True:
            nxt = {} if not isinstance(nxt, dict) else nxt
            node[p] = nxt
        elif not isinstance(nxt, dict):
            raise UserInputError(f"config error: cannot set '{key}': '{p}' is not a section")
        node = nxt
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """Parse one ``--set key=value``; the value is read as YAML (so ``1e-3`` is a float)."""
    if "=" not in text:
        raise UserInputError(f"--set '{text}': expected key=value")
    key, _, value = text.partition("=")
    key = key.strip()
    if not key:
        raise UserInputError(f"--set '{text}': empty key")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return key, parsed


def apply_overrides(
    raw: dict[str, Any], overrides: Iterable[str] | Mapping[str, Any] | None
) -> dict[str, Any]:
    raw = copy.deepcopy(raw)
    if not overrides:
        return raw
    items = (
        overrides.items()
        if isinstance(overrides, Mapping)
        else (parse_override(o) for o in overrides)
    )
    for key, value in items:
        if key.startswith("sweep."):
            sub = key[len("sweep.") :]
            raw.setdefault("sweep", {})
            if not isinstance(raw["sweep"], dict):
                raise UserInputError("config error: sweep must be a mapping")
            raw["sweep"][sub] = value if isinstance(value, list) else [value]
        else:
            _set_dotted(raw, key, value)
    return raw


# --------------------------------------------------------------------- loading
def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.exists():
        raise UserInputError(f"config file not found: {p}")
    if p.is_dir():
        raise UserInputError(f"config file is a directory: {p}")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise UserInputError(f"malformed YAML in {p}{where}") from None
    except UnicodeDecodeError:
        raise UserInputError(f"config file is not text: {p}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserInputError(f"config file {p} must hold a mapping at the top level")
    raw.setdefault("name", p.stem)
    return raw


def load_config(
    source: str | Path | Mapping[str, Any] | ExperimentConfig,
    overrides: Iterable[str] | Mapping[str, Any] | None = None,
) -> ExperimentConfig:
    """Read, override and validate an experiment config.

    Args:
        source: a YAML path, a mapping, or an :class:`ExperimentConfig`.
        overrides: ``["train.lr=0.5", ...]`` or ``{"train.lr": 0.5}``; a key
            ``sweep.X`` sets a sweep axis.

    Returns:
        The validated config; every run of its sweep is validated too.

    Raises:
        UserInputError: naming the key or file that is wrong.
    """
    if isinstance(source, ExperimentConfig):
        raw = source.model_dump(mode="json")
    elif isinstance(source, Mapping):
        raw = copy.deepcopy(dict(source))
    else:
        raw = read_yaml(source)
    raw = apply_overrides(raw, overrides)
    cfg = _validate(raw)
    # Every point of the sweep must itself be a valid config.
    expand_runs(cfg)
    return cfg


# ---------------------------------------------------------------------- sweeps
def expand_runs(cfg: ExperimentConfig) -> list[tuple[dict[str, Any], ExperimentConfig]]:
    """The runs of a config: cartesian product of ``sweep`` axes (× ``seed``).

    Returns:
        A list of ``(coords, run_config)``: ``coords`` maps each swept dotted key
        to this run's value; ``run_config`` has ``sweep`` emptied and the values
        set (``seed`` set from ``sweep.seed`` when swept).
    """
    base = cfg.model_dump(mode="json")
    base.pop("sweep", None)
    keys = list(cfg.sweep)
    runs: list[tuple[dict[str, Any], ExperimentConfig]] = []
    cache: dict[str, ExperimentConfig] = {}
    for values in itertools.product(*(cfg.sweep[k] for k in keys)):
        raw = copy.deepcopy(base)
        coords = dict(zip(keys, values, strict=True))
        for key, value in coords.items():
            _set_dotted(raw, key, value)
        blob = json.dumps(raw, sort_keys=True, default=str)
        if blob not in cache:
            cache[blob] = _validate(raw, prefix="")
        runs.append((coords, cache[blob]))
    return runs


def to_yaml(cfg: ExperimentConfig, extra: Mapping[str, Any] | None = None) -> str:
    data = cfg.model_dump(mode="json")
    if extra:
        data = {**dict(extra), **data}
    return yaml.safe_dump(data, sort_keys=False)
