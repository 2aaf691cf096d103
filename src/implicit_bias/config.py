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
import math
import re
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    field_validator,
    model_validator,
)

from ._errors import UserInputError

# Strict numbers: ``true`` is not 1 and ``"3"`` is not 3 (an int is still a float).
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict()]
PositiveInt = Annotated[int, Strict(), Field(gt=0)]
NonNegInt = Annotated[int, Strict(), Field(ge=0)]
PositiveFloat = Annotated[float, Strict(), Field(gt=0, allow_inf_nan=False)]
NonNegFloat = Annotated[float, Strict(), Field(ge=0, allow_inf_nan=False)]
Probability = Annotated[float, Strict(), Field(ge=0, le=1, allow_inf_nan=False)]
#: seeds must fit a signed 64-bit integer (numpy, torch and netCDF store them so)
MAX_SEED = 2**63 - 1
Seed = Annotated[int, Strict(), Field(ge=0, le=MAX_SEED)]


class ConfigWarning(UserWarning):
    """A config that runs but probably does not mean what it says (one line)."""


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
    label_noise: Annotated[float, Strict(), Field(ge=0, lt=0.5, allow_inf_nan=False)] | None = None
    margin: NonNegFloat | None = None
    shift: NonNegFloat | None = None
    p_positive: Annotated[float, Strict(), Field(gt=0, lt=1, allow_inf_nan=False)] | None = None
    separable: Annotated[bool, Strict()] | None = None
    name: str | None = None
    classes: list[list[Int]] | list[Int] | None = None
    test_fraction: Annotated[float, Strict(), Field(ge=0, lt=1)] | None = None
    seed: Seed = 0
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

    depth: Annotated[int, Strict(), Field(ge=1)] = 2
    width: PositiveInt = 256
    activation: Literal["linear", "relu", "leaky_relu", "smooth_leaky_relu"] = "linear"
    leak: Annotated[float, Strict(), Field(ge=0, lt=1, allow_inf_nan=False)] = 0.1
    smoothing: PositiveFloat = 1.0
    parametrization: Literal["ntk", "standard", "direct"] = "ntk"
    last_layer: Literal["trained", "fixed_sign"] = "trained"
    init_scale: PositiveFloat = 1.0

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
    iters: Annotated[int, Strict(), Field(ge=2)] = 20
    top_k: PositiveInt = 1
    tol: PositiveFloat = 1e-3

    @model_validator(mode="after")
    def _top_k_within_iters(self) -> SharpnessConfig:
        if self.top_k > self.iters:
            raise ValueError(
                f"metrics.sharpness.top_k={self.top_k} exceeds metrics.sharpness.iters="
                f"{self.iters} (Lanczos finds at most iters eigenvalues)"
            )
        return self


class PhaseConfig(_Strict):
    """Thresholds of the phase rule v2 (SPEC §3; :mod:`implicit_bias.phases`).

    Attributes:
        catapult_rise: a catapult needs the loss to rise above (1 + this)·L₀ before the
            curvature first falls below the stability threshold (Lewkowycz et al. 2020,
            arXiv 2003.02218); 1 % of L₀ is well above float noise and below every
            catapult the recipes show.
        diverge_factor: a loss above this × L₀ (or non-finite) is divergence.
        eos_tolerance: the tolerance of "at the threshold": the curvature ratio
            λ·η/c (c = 2 for GD) is at the edge when |ratio − 1| ≤ this; a run ending
            with ratio > 1 + this is ``not_converged`` (Cohen et al. 2021, arXiv
            2103.00065: at the edge of stability the sharpness hovers at 2/η). 0.1:
            measured every 5 steps, a ReLU net at the edge has ρ between 0.92 and 1.09.
        eos_rise: the edge of stability needs the loss to rise above its running
            minimum by more than this × L₀ while the curvature hovers.
        eos_hover: the edge of stability needs the curvature within ``eos_tolerance``
            of the threshold at this many consecutive eval steps (3: it stayed there
            over at least two eval intervals, rather than passing through once).
        converged_margin: converged needs final loss ≤ (1 − this)·L₀: a net that has not
            removed a tenth of its initial loss has not learned yet.
        oscillation_tol: converged needs the loss over the last 10 % of the steps to
            rise above its running minimum there by at most this × L₀ (the same 1 %
            as ``catapult_rise``: a bump that would count as a spike is not settled).
        lazy_low, lazy_high: lazy needs the curvature at every eval step within
            [lazy_low, lazy_high]·λ₀. A factor 2 either side: the logistic curvature
            falls by 20–40 % with the loss alone (σ(yf)σ(−yf) from 1/4), while
            separable data takes it to 1e-3…1e-7 λ₀, and sharpening to 2/η from
            below half the critical rate more than doubles it.
        dead_spread: outputs whose standard deviation over the training points is ≤
            this × rms(y) are constant (the net is ``dead``).
    """

    catapult_rise: NonNegFloat = 0.01
    diverge_factor: Annotated[float, Field(gt=1)] = 1.0e6
    eos_tolerance: Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)] = 0.1
    eos_rise: NonNegFloat = 1.0e-3
    eos_hover: PositiveInt = 3
    converged_margin: Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)] = 0.1
    oscillation_tol: NonNegFloat = 0.01
    lazy_low: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] = 0.5
    lazy_high: Annotated[float, Field(ge=1, allow_inf_nan=False)] = 2.0
    dead_spread: NonNegFloat = 1.0e-6


class TraceConfig(_Strict):
    probes: PositiveInt = 10
    density: Annotated[bool, Strict()] = False
    iters: Annotated[int, Strict(), Field(ge=2)] = 30


class MetricsConfig(_Strict):
    every: PositiveInt = 10
    at: list[NonNegInt] = Field(default_factory=list)
    #: eval steps 1…10 and log-spaced ones until the multiples of ``every`` are as dense
    #: (the catapult's spike happens within the first few steps); see engine.eval_steps_of
    dense_early: Annotated[bool, Strict()] = True
    sharpness: SharpnessConfig | None = Field(default_factory=SharpnessConfig)
    gn_sharpness: Annotated[bool, Strict()] = False
    ntk: Annotated[bool, Strict()] = False
    ntk_gram_at: list[NonNegInt] = Field(default_factory=list)
    stable_rank: Annotated[bool, Strict()] = False
    rank_tol: PositiveFloat = 1e-3
    margins: Annotated[bool, Strict()] = False
    kkt: Annotated[bool, Strict()] = False
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
    seed: Seed = 0
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
            seen: set[str] = set()
            for value in values:
                blob = json.dumps(value, sort_keys=True, default=str)
                if blob in seen:
                    raise ValueError(
                        f"sweep.{key} lists {value!r} twice; each value must appear once"
                    )
                seen.add(blob)
        return v

    @model_validator(mode="after")
    def _batch_within_data(self) -> ExperimentConfig:
        bs, n = self.train.batch_size, self.data.n_train
        if bs is not None and n is not None and bs > n:
            raise ValueError(f"train.batch_size={bs} exceeds data.n_train={n}")
        return self

    def config_hash(self) -> str:
        """A short hash of the resolved config (what identifies a results folder)."""
        raw = self.model_dump(mode="json")
        # keys added with a default that reproduces the old behaviour do not change
        # the identity of folders made before them
        if raw["train"].get("matmul_precision") == "highest":
            del raw["train"]["matmul_precision"]
        # dense early eval steps became the default later: a config that turns them off
        # has the eval steps (and the identity) of folders made before them
        if raw["metrics"].get("dense_early") is False:
            del raw["metrics"]["dense_early"]
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
        near = suggest_key(key)
        hint = f" (did you mean '{near}'?)" if near else ""
        return f"config error: unknown key '{key}'{hint}"
    if kind == "missing":
        return f"config error: missing required key '{key}'"
    msg = e["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
        return f"config error: {msg}"
    got = e.get("input")
    got_s = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"config error: {key}: {msg}{got_s}" if key else f"config error: {msg}{got_s}"


def _sections_of(annotation: Any) -> list[type[BaseModel]]:
    """The config classes a field may hold (through Optional, unions and Annotated)."""
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    out: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        out += [c for c in _sections_of(arg) if c not in out]
    return out


def suggest_key(key: str) -> str | None:
    """The valid dotted key nearest to a misspelled one (``model.widht`` → ``model.width``).

    Only the last part is matched, among the keys of the section the others name;
    None when nothing is close.
    """
    import difflib

    parts = key.split(".")
    sections: list[type[BaseModel]] = [ExperimentConfig]
    for p in parts[:-1]:
        nxt: list[type[BaseModel]] = []
        for sec in sections:
            field = sec.model_fields.get(p)
            if field is not None:
                nxt += _sections_of(field.annotation)
        if not nxt:
            return None
        sections = nxt
    names = sorted({n for sec in sections for n in sec.model_fields})
    near = difflib.get_close_matches(parts[-1], names, n=1, cutoff=0.6)
    return ".".join([*parts[:-1], near[0]]) if near else None


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
        parsed = yaml.load(value, Loader=_UniqueKeyLoader) if value.strip() else None
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
    plain: list[tuple[str, Any]] = []
    for key, value in items:
        if key.startswith("sweep."):
            sub = key[len("sweep.") :]
            raw.setdefault("sweep", {})
            if not isinstance(raw["sweep"], dict):
                raise UserInputError("config error: sweep must be a mapping")
            raw["sweep"][sub] = value if isinstance(value, list) else [value]
        else:
            _set_dotted(raw, key, value)
            plain.append((key, value))
    sweep = raw.get("sweep")
    sweep = sweep if isinstance(sweep, dict) else {}
    for key, value in plain:
        for swept in sweep:
            if _overlaps(key, str(swept)):
                example = value if isinstance(value, list) else [value]
                raise UserInputError(
                    f"config error: override {key}={json.dumps(value, default=str)} would be "
                    f"ignored: {swept} is swept (sweep.{swept}: "
                    f"{json.dumps(sweep[swept], default=str)}); change the sweep instead, "
                    f"e.g. --set 'sweep.{swept}={json.dumps(example, default=str)}'"
                    if key == swept
                    else f"config error: override {key}=... would be ignored where it "
                    f"overlaps the swept key {swept}; set sweep.{swept} instead"
                )
    return raw


def _overlaps(a: str, b: str) -> bool:
    """Whether dotted keys ``a`` and ``b`` are equal or one lies inside the other."""
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


# --------------------------------------------------------------------- loading
class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses a key given twice in one mapping."""


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, line: int) -> None:
        super().__init__(f"{key}")
        self.key, self.line = key, line


def _unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False):
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            dup = key in seen
        except TypeError:  # an unhashable key: let the normal constructor refuse it
            dup = False
        if dup:
            raise _DuplicateKey(key, key_node.start_mark.line + 1)
        try:
            seen.add(key)
        except TypeError:
            pass
    return loader.construct_mapping(node, deep=deep)


# YAML 1.2 floats: PyYAML (YAML 1.1) reads ``1e-3`` as a string
_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)
_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _unique_mapping,  # type: ignore[arg-type]
)


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.exists():
        raise UserInputError(f"config file not found: {p}")
    if p.is_dir():
        raise UserInputError(f"config file is a directory: {p}")
    try:
        raw = yaml.load(p.read_text(), Loader=_UniqueKeyLoader)
    except _DuplicateKey as err:
        raise UserInputError(
            f"config error: key '{err.key}' appears twice in one mapping of {p} (line {err.line})"
        ) from None
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


#: the key a results folder's ``config.yaml`` carries besides the config itself
SAVED_HASH_KEY = "config_hash"


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
    # a results folder's config.yaml records the hash it was made for: a record of
    # identity, not a setting, so that file is a valid input (the hash is recomputed)
    raw.pop(SAVED_HASH_KEY, None)
    raw = apply_overrides(raw, overrides)
    cfg = _validate(raw)
    # Every point of the sweep must itself be a valid config (checked without
    # building every run: see SweepSpace.check).
    for msg in SweepSpace(cfg).check():
        warnings.warn(msg, ConfigWarning, stacklevel=2)
    return cfg


# ---------------------------------------------------------------------- sweeps
#: Swept keys whose values are checked one at a time: no validator relates
#: them to another key, so a value valid against the base config is valid
#: against every combination. Every other swept key is checked in the product
#: of all such "dependent" keys (in practice a few shapes and sizes).
INDEPENDENT_KEYS = (
    "name",
    "seed",
    "data.seed",
    "train.lr",
    "train.lr_units",
    "train.schedule",
    "model.init_scale",
    "metrics.phase",
    "store",
)


def _under(key: str, prefixes: Iterable[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


class SweepSpace:
    """The runs of a config's sweep, addressed by index without materialising them.

    Runs are the cartesian product of the ``sweep`` axes in their order (the
    last axis varies fastest), so run ``i`` is a mixed-radix number whose
    digits index each axis's list.
    """

    def __init__(self, cfg: ExperimentConfig) -> None:
        self.cfg = cfg
        self.keys = list(cfg.sweep)
        self.values = [cfg.sweep[k] for k in self.keys]
        self.sizes = [len(v) for v in self.values]
        self.n_runs = math.prod(self.sizes)
        self.strides = [math.prod(self.sizes[j + 1 :]) for j in range(len(self.keys))]
        base = cfg.model_dump(mode="json")
        base.pop("sweep", None)
        self._base = base
        self._cache: dict[str, ExperimentConfig] = {}
        self.independent = [j for j, k in enumerate(self.keys) if _under(k, INDEPENDENT_KEYS)]
        self.dependent = [j for j in range(len(self.keys)) if j not in self.independent]

    def __len__(self) -> int:
        return self.n_runs

    def digits(self, index: int) -> list[int]:
        """Each axis's position for run ``index``."""
        if not 0 <= index < self.n_runs:
            raise IndexError(index)
        return [(index // st) % n for st, n in zip(self.strides, self.sizes, strict=True)]

    def index(self, digits: Iterable[int]) -> int:
        return sum(d * st for d, st in zip(digits, self.strides, strict=True))

    def coords(self, digits: Iterable[int]) -> dict[str, Any]:
        return {
            k: self.values[j][d] for j, (k, d) in enumerate(zip(self.keys, digits, strict=True))
        }

    def config(self, coords: Mapping[str, Any]) -> ExperimentConfig:
        """The validated config of one point (``sweep`` emptied, the values set)."""
        raw = copy.deepcopy(self._base)
        for key, value in coords.items():
            _set_dotted(raw, key, value)
        blob = json.dumps(raw, sort_keys=True, default=str)
        cfg = self._cache.get(blob)
        if cfg is None:
            if len(self._cache) > 4096:
                self._cache.clear()
            cfg = self._cache[blob] = _validate(raw)
        return cfg

    def run(self, index: int) -> tuple[dict[str, Any], ExperimentConfig]:
        """``(coords, run_config)`` of run ``index``."""
        coords = self.coords(self.digits(index))
        return coords, self.config(coords)

    def dependent_points(self) -> Iterator[tuple[tuple[int, ...], ExperimentConfig]]:
        """Each combination of the dependent axes (independent axes at their first value).

        Yields ``(digits over the dependent axes, config)`` in run order.
        """
        for combo in itertools.product(*(range(self.sizes[j]) for j in self.dependent)):
            digits = [0] * len(self.keys)
            for j, d in zip(self.dependent, combo, strict=True):
                digits[j] = d
            yield combo, self.config(self.coords(digits))

    def check(self) -> list[str]:
        """Validate every run without building each; return one-line warnings.

        Raises:
            UserInputError: the first invalid point, naming its key.
        """
        found: list[str] = []
        checked = [cfg for _, cfg in self.dependent_points()]
        for j in self.independent:
            for d in range(1, self.sizes[j]):
                digits = [0] * len(self.keys)
                digits[j] = d
                checked.append(self.config(self.coords(digits)))
        for cfg in checked:
            for msg in config_warnings(cfg):
                if msg not in found:
                    found.append(msg)
        return found

    def __iter__(self) -> Iterator[tuple[dict[str, Any], ExperimentConfig]]:
        for index in range(self.n_runs):
            yield self.run(index)


def config_warnings(cfg: ExperimentConfig) -> list[str]:
    """One-line warnings about a valid config that probably says more than it does."""
    steps = cfg.train.steps
    out: list[str] = []
    late = [s for s in cfg.metrics.at if s > steps]
    if late:
        out.append(f"metrics.at: steps {late} are beyond train.steps={steps} and never measured")
    late = [s for s in cfg.metrics.ntk_gram_at if s > steps]
    if late:
        out.append(
            f"metrics.ntk_gram_at: steps {late} are beyond train.steps={steps} and never measured"
        )
    sched = cfg.train.schedule
    if isinstance(sched, StepSchedule):
        late = [s for s in sched.at if s >= steps]
        if late:
            out.append(
                f"train.schedule.at: steps {late} are not before train.steps={steps}; "
                "the rate never changes there"
            )
    if isinstance(sched, WarmupSchedule) and sched.steps > steps:
        out.append(
            f"train.schedule.steps={sched.steps} is beyond train.steps={steps}; "
            "the warmup never ends"
        )
    return out


def expand_runs(cfg: ExperimentConfig) -> list[tuple[dict[str, Any], ExperimentConfig]]:
    """The runs of a config: cartesian product of ``sweep`` axes (× ``seed``).

    This materialises every run; for large sweeps use :class:`SweepSpace`.

    Returns:
        A list of ``(coords, run_config)``: ``coords`` maps each swept dotted key
        to this run's value; ``run_config`` has ``sweep`` emptied and the values
        set (``seed`` set from ``sweep.seed`` when swept).
    """
    return list(SweepSpace(cfg))


def to_yaml(cfg: ExperimentConfig, extra: Mapping[str, Any] | None = None) -> str:
    data = cfg.model_dump(mode="json")
    if extra:
        data = {**dict(extra), **data}
    return yaml.safe_dump(data, sort_keys=False)
