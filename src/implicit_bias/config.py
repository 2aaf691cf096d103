"""Experiment configuration: pydantic models for SPEC §5, overrides, loading.

A config file has the sections ``data``, ``model``, ``train``, ``metrics``,
``store`` and ``sweep`` plus ``name`` and ``seed``. Every model forbids unknown
keys. A sweep maps dotted keys to lists; runs are their cartesian product
(times ``sweep.seed``), each a fully resolved :class:`ExperimentConfig`
(:mod:`implicit_bias.config_sweep`). YAML is read by
:mod:`implicit_bias.config_yaml`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import warnings
from collections.abc import Iterable, Mapping
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
from .config_yaml import _load_yaml, _YamlTooBig, read_yaml

# Strict numbers: ``true`` is not 1 and ``"3"`` is not 3 (an int is still a float).
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict()]
PositiveInt = Annotated[int, Strict(), Field(gt=0)]
NonNegInt = Annotated[int, Strict(), Field(ge=0)]
PositiveFloat = Annotated[float, Strict(), Field(gt=0, allow_inf_nan=False)]
NonNegFloat = Annotated[float, Strict(), Field(ge=0, allow_inf_nan=False)]
Probability = Annotated[float, Strict(), Field(ge=0, le=1, allow_inf_nan=False)]
#: a decay rate / momentum coefficient β ∈ [0, 1): β ≥ 1 never forgets (and diverges)
Beta = Annotated[float, Strict(), Field(ge=0, lt=1, allow_inf_nan=False)]
#: seeds must fit a signed 64-bit integer (numpy, torch and netCDF store them so)
MAX_SEED = 2**63 - 1
#: bounds of the central flow's keys (train.flow_substeps, train.flow_eigs)
MAX_FLOW_SUBSTEPS = 1000
MAX_FLOW_EIGS = 32
Seed = Annotated[int, Strict(), Field(ge=0, le=MAX_SEED)]


class ConfigWarning(UserWarning):
    """A config that runs but probably does not mean what it says (one line)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


# --------------------------------------------------------------------------- data
class DataConfig(_Strict):
    """Where the training data comes from (SPEC §4)."""

    kind: Literal[
        "file", "overlap", "separable", "degenerate", "gaussian_mixture", "sklearn", "torchvision"
    ]
    path: str | None = None
    #: torchvision: the folder holding the files in torchvision's layout
    root: str | None = None
    #: torchvision: fetch missing files with torchvision (the optional extra)
    download: Annotated[bool, Strict()] = False
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
    classes: list[list[Int]] | list[Int] | Literal["all"] | None = None
    test_fraction: Annotated[float, Strict(), Field(ge=0, lt=1)] | None = None
    seed: Seed = 0
    normalize: Literal["none", "unit", "standardize"] = "none"

    @model_validator(mode="after")
    def _kind_requirements(self) -> DataConfig:
        if self.kind == "file" and not self.path:
            raise ValueError("data.path is required when data.kind is 'file'")
        if self.kind == "sklearn" and not self.name:
            raise ValueError("data.name is required when data.kind is 'sklearn'")
        if self.kind == "torchvision":
            if not self.name:
                raise ValueError(
                    "data.name is required when data.kind is 'torchvision' "
                    "(MNIST, FashionMNIST or CIFAR10)"
                )
            if not self.root:
                raise ValueError(
                    "data.root is required when data.kind is 'torchvision': the folder "
                    "holding (or to receive, with data.download: true) the files"
                )
            if self.test_fraction is not None:
                raise ValueError(
                    "data.test_fraction: a torchvision set has its own test split; "
                    "take a subset of it with data.n_test"
                )
            if self.classes is None:
                # ten-class sets: all classes is the papers' setting (said in the saved config)
                self.classes = "all"
        if self.n_train is not None and self.n_train < 2:
            # one point holds one class: no margin, no accuracy against a boundary
            raise ValueError(
                f"data.n_train must be >= 2 (got {self.n_train}): one training point holds "
                "a single class, so the margin and the phase measures are undefined"
            )
        return self


# -------------------------------------------------------------------------- model
class ModelConfig(_Strict):
    """The model (SPEC §2, §2.1): the MLP family, Cohen et al.'s convnet, or a user module."""

    #: ``mlp`` the fully connected family; ``cnn`` conv3×3 → φ → pool per entry of
    #: ``channels``, then a linear head (biases on); ``module`` a user factory
    kind: Literal["mlp", "cnn", "module"] = "mlp"
    channels: list[PositiveInt] = Field(default_factory=lambda: [32, 32])
    pool: Literal["max", "avg"] = "max"
    #: ``"package.module:factory"``, called as ``factory(**kwargs)`` (``kind: module``)
    module: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    #: how cnn/module runs are batched: ``vmap``, a ``loop`` over runs, or ``auto``
    #: (vmap, measured faster than the loop for small convnets on the CPU too)
    batching: Literal["auto", "vmap", "loop"] = "auto"
    depth: Annotated[int, Strict(), Field(ge=1)] = 2
    width: PositiveInt = 256
    activation: Literal[
        "linear", "relu", "leaky_relu", "smooth_leaky_relu", "tanh", "elu", "gelu", "softplus"
    ] = "linear"
    leak: Annotated[float, Strict(), Field(ge=0, lt=1, allow_inf_nan=False)] = 0.1
    smoothing: PositiveFloat = 1.0
    parametrization: Literal["ntk", "standard", "direct"] = "ntk"
    last_layer: Literal["trained", "fixed_sign"] = "trained"
    init_scale: PositiveFloat = 1.0
    #: a bias on every trained layer (zero at init; the generic path runs it)
    bias: Annotated[bool, Strict()] = False
    #: ``auto``: the hand-written MLP path where it covers the model; ``generic``:
    #: the torch.func path (same numbers)
    backend: Literal["auto", "generic"] = "auto"

    @model_validator(mode="after")
    def _module_needs_a_factory(self) -> ModelConfig:
        if self.kind == "module" and not self.module:
            raise ValueError("model.module ('package.module:factory') is required for kind module")
        if self.kind != "module" and (self.module or self.kwargs):
            raise ValueError("model.module and model.kwargs apply to kind module only")
        if self.kind != "mlp" and self.last_layer == "fixed_sign":
            raise ValueError("model.last_layer: fixed_sign applies to kind mlp only")
        return self

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
    loss: Literal["logistic", "exponential", "mse", "cross_entropy"] = "logistic"
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
    #: the update rule (:mod:`implicit_bias.optimizers`, PyTorch's conventions); its
    #: hyperparameters below, unset = the rule's default (β 0.9, β₁ 0.9, β₂ 0.999 for
    #: Adam and 0.99 for RMSProp — PyTorch's ``alpha`` —, ε 1e-8, bias correction on)
    optimizer: Literal["gd", "momentum", "nesterov", "rmsprop", "adam"] = "gd"
    momentum: Beta | None = None
    beta1: Beta | None = None
    beta2: Beta | None = None
    eps: PositiveFloat | None = None
    bias_correction: Annotated[bool, Strict()] | None = None
    #: integrate each run's central flow and gradient flow beside GD (:mod:`implicit_bias.flows`;
    #: Cohen, Damian et al. 2024, arXiv 2410.24206): ``central`` needs full-batch plain GD
    flow: Literal["none", "central"] = "none"
    #: Euler substeps of the flows per GD step (each costs an eigen-solve: bounded, so an
    #: absurd value ends in one line instead of a run that never finishes)
    flow_substeps: Annotated[int, Strict(), Field(gt=0, le=MAX_FLOW_SUBSTEPS)] = 4
    #: unstable directions k the central flow tracks (k ≥ 2: a PSD-constrained solve by
    #: cvxpy over k(k+1)/2 unknowns per run and substep)
    flow_eigs: Annotated[int, Strict(), Field(gt=0, le=MAX_FLOW_EIGS)] = 1

    @model_validator(mode="after")
    def _optimizer_keys(self) -> TrainConfig:
        if self.flow == "central" and self.optimizer != "gd":
            raise ValueError(
                f"train.flow: central follows full-batch plain GD (train.optimizer: gd), "
                f"not '{self.optimizer}'"
            )
        if self.flow == "central" and self.flow_eigs >= 2:
            import importlib.util

            if importlib.util.find_spec("cvxpy") is None:
                raise ValueError(
                    f"train.flow_eigs={self.flow_eigs} needs cvxpy for the PSD-constrained "
                    "solve: pip install 'implicit-bias[central]' (or use flow_eigs: 1)"
                )
        uses = _OPTIMIZER_KEYS[self.optimizer]
        for key in ("momentum", "beta1", "beta2", "eps", "bias_correction"):
            if getattr(self, key) is not None and key not in uses:
                takes = [o for o, ks in _OPTIMIZER_KEYS.items() if key in ks]
                raise ValueError(
                    f"train.{key} applies only to train.optimizer {' | '.join(takes)}, "
                    f"not '{self.optimizer}'"
                )
        if self.optimizer == "nesterov" and self.momentum == 0:
            raise ValueError(
                "train.momentum=0 with train.optimizer 'nesterov' is plain GD; use "
                "optimizer 'gd' (PyTorch refuses it too)"
            )
        return self

    def optimizer_hyper(self) -> dict[str, Any]:
        """The rule's hyperparameters with defaults filled in (keys of
        :class:`implicit_bias.optimizers.Hyper`)."""
        beta2 = 0.99 if self.optimizer == "rmsprop" else 0.999
        return {
            "momentum": 0.9 if self.momentum is None else self.momentum,
            "beta1": 0.9 if self.beta1 is None else self.beta1,
            "beta2": beta2 if self.beta2 is None else self.beta2,
            "eps": 1e-8 if self.eps is None else self.eps,
            "bias_correction": True if self.bias_correction is None else self.bias_correction,
        }

    @field_validator("schedule", mode="before")
    @classmethod
    def _schedule_shorthand(cls, v: Any) -> Any:
        if isinstance(v, str):
            return {"kind": v}
        return v


#: the hyperparameter keys each optimizer reads
_OPTIMIZER_KEYS: dict[str, tuple[str, ...]] = {
    "gd": (),
    "momentum": ("momentum",),
    "nesterov": ("momentum",),
    "rmsprop": ("beta2", "eps"),
    "adam": ("beta1", "beta2", "eps", "bias_correction"),
}


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


#: most Hutchinson probes per eval step: each probe is a Hessian-vector product per
#: run, so 10⁸ (a typo for 10 or 100) would never finish
MAX_TRACE_PROBES = 10_000


class TraceConfig(_Strict):
    probes: Annotated[int, Strict(), Field(gt=0, le=MAX_TRACE_PROBES)] = 10
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
_ANY = object()
#: model keys added with the generic path, at the MLP's old behaviour
_MLP_OLD: tuple[tuple[str, Any], ...] = (
    ("kind", "mlp"), ("backend", "auto"), ("bias", False), ("channels", [32, 32]),
    ("pool", "max"), ("module", None), ("kwargs", {}), ("batching", "auto"),
)  # fmt: skip
#: keys added after results folders existed, left out of :meth:`ExperimentConfig.config_hash`
#: so that those folders keep their identity: (section, key, the value that reproduces
#: the old behaviour — ``_ANY``: whatever it is —, and the condition ``(section, key,
#: value)`` on the config under which the key is left out, or None). A new key with a
#: default is one more row; ``tests/test_config.py`` pins two configs' hashes.
_LATER_KEYS: tuple[tuple[str, str, Any, tuple[str, str, Any] | None], ...] = (
    ("train", "matmul_precision", "highest", None),
    # the flows: without them a config has the identity it had before
    ("train", "flow", "none", None),
    ("train", "flow_substeps", _ANY, ("train", "flow", "none")),
    ("train", "flow_eigs", _ANY, ("train", "flow", "none")),
    # torchvision's keys
    ("data", "root", None, None),
    ("data", "download", False, None),
    # the generic model path: keys at the MLP's old behaviour
    *(("model", key, default, ("model", "kind", "mlp")) for key, default in _MLP_OLD),
    # dense early eval steps became the default later: a config that turns them off
    # has the eval steps (and the identity) of folders made before them
    ("metrics", "dense_early", False, None),
)


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
        keys = list(v)
        for i, a in enumerate(keys):
            for b in keys[i + 1 :]:
                if _overlaps(a, b):
                    # one axis would overwrite the other's value in every run, while
                    # the coordinates still name both (issue 20, case 1)
                    outer, inner = (a, b) if b.startswith(a + ".") else (b, a)
                    raise ValueError(
                        f"sweep.{inner} and sweep.{outer} overlap ({inner} lies inside "
                        f"{outer}); sweep each key once: put {inner} inside sweep.{outer}'s "
                        f"values, or sweep {outer}'s keys one by one"
                    )
        for key, values in v.items():
            if not values:
                raise ValueError(f"sweep.{key} must be a non-empty list")
            if key == "sweep" or key.startswith("sweep."):
                raise ValueError(f"sweep.{key}: cannot sweep over the sweep itself")
            kinds = set(map(type, values))
            if len(kinds) == 1 and kinds <= {int, float, str} and len(set(values)) == len(values):
                continue  # one plain type, no repeats: checked at C speed (10⁶ seeds)
            seen: set[Any] = set()
            for value in values:
                # plain numbers and strings by value and type (1, 1.0 and true differ, as
                # in JSON); anything else by its JSON text
                plain = type(value) in (int, float, str, bool)
                mark = (
                    (type(value), value)
                    if plain
                    else json.dumps(value, sort_keys=True, default=str)
                )
                if mark in seen:
                    raise ValueError(
                        f"sweep.{key} lists {_short_repr(value)} twice; each value must appear once"
                    )
                seen.add(mark)
        return v

    @model_validator(mode="after")
    def _batch_within_data(self) -> ExperimentConfig:
        bs, n = self.train.batch_size, self.data.n_train
        if bs is not None and n is not None and bs > n:
            raise ValueError(f"train.batch_size={bs} exceeds data.n_train={n}")
        if self.train.flow == "central" and bs is not None and bs != n:
            raise ValueError(
                f"train.flow: central follows full-batch GD; train.batch_size={bs} is SGD "
                "(set it to null)"
            )
        return self

    def config_hash(self) -> str:
        """A short hash of the resolved config (what identifies a results folder)."""
        dump = self.model_dump(mode="json")
        raw = copy.deepcopy(dump)
        # keys added after folders existed leave those folders' identity alone where
        # they reproduce the old behaviour (_LATER_KEYS)
        for section, key, old, when in _LATER_KEYS:
            if when is not None and dump[when[0]].get(when[1]) != when[2]:
                continue
            if key in raw[section] and (old is _ANY or raw[section][key] == old):
                del raw[section][key]
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
    got_s = "" if isinstance(got, dict) else f" (got {_short_repr(got)})"
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


def _short_repr(value: Any) -> str:
    """``repr`` cut short: the value may be a 10⁶-element list or an alias bomb."""
    import reprlib

    r = reprlib.Repr()
    r.maxlist = r.maxtuple = r.maxdict = r.maxset = 8
    r.maxstring = r.maxother = 120
    r.maxlevel = 3
    return r.repr(value)


_UNION_TAGS = {"constant", "step", "cosine", "warmup", "SharpnessConfig", "TraceConfig"}


def _validate(raw: Mapping[str, Any], prefix: str = "") -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(dict(raw))
    except ValidationError as err:
        raise UserInputError(_format_validation_error(err, prefix)) from None


# ------------------------------------------------------------------ dotted keys
def _field_checker(key: str) -> Any:
    """A function validating one value of swept ``key`` by its field's type, or None
    where the key's field cannot be found through plain sections."""
    from pydantic import TypeAdapter

    model: Any = ExperimentConfig
    parts = key.split(".")
    for p in parts[:-1]:
        section = model.model_fields.get(p)
        inner = section.annotation if section is not None else None
        if not (isinstance(inner, type) and issubclass(inner, BaseModel)):
            return None
        model = inner
    field = model.model_fields.get(parts[-1])
    if field is None:
        return None
    decorators = model.__pydantic_decorators__.field_validators.values()
    if any(parts[-1] in d.info.fields for d in decorators):
        return None  # a field validator (a shorthand) runs only with its model
    ann: Any = field.annotation
    if field.metadata:
        ann = Annotated.__class_getitem__((ann, *field.metadata))  # type: ignore[attr-defined]
    adapter: Any = TypeAdapter(list[ann])  # type: ignore[valid-type]

    def check(values: list[Any]) -> None:
        try:
            adapter.validate_python(values)  # the whole list in one call
        except ValidationError as err:
            first = err.errors()[0]
            where = first["loc"][0] if first["loc"] else 0
            got = values[where] if isinstance(where, int) and where < len(values) else values
            raise UserInputError(
                f"config error: sweep.{key}: {first['msg']} (got {_short_repr(got)})"
            ) from None

    return check


_SCALARS = (int, float, str, bool, type(None))


def _copy_tree(node: Any) -> Any:
    """A copy of a JSON-like tree (dicts, lists, scalars); lists of scalars are copied
    in one step (a deep copy walks 10⁶ listed seeds one object at a time)."""
    if isinstance(node, dict):
        return {k: _copy_tree(v) for k, v in node.items()}
    if isinstance(node, list | tuple):
        if all(type(v) in _SCALARS for v in node):
            return list(node)
        return [_copy_tree(v) for v in node]
    return copy.deepcopy(node)


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
        parsed = _load_yaml(value) if value.strip() else None
    except _YamlTooBig as err:
        raise UserInputError(f"--set {key}: the value {err}") from None
    except yaml.YAMLError:
        parsed = value
    return key, parsed


def apply_overrides(
    raw: dict[str, Any], overrides: Iterable[str] | Mapping[str, Any] | None
) -> dict[str, Any]:
    raw = _copy_tree(raw)
    if not overrides:
        return raw
    if isinstance(overrides, str):  # one "key=value", not its characters
        overrides = [overrides]
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
                    f"{json.dumps(sweep[swept], default=str)}); change the sweep instead"
                    + _example_or_why(swept, example)
                    if key == swept
                    else f"config error: override {key}=... would be ignored where it "
                    f"overlaps the swept key {swept}; set sweep.{swept} instead"
                )
    return raw


def _example_or_why(key: str, values: list[Any]) -> str:
    """``, e.g. --set 'sweep.KEY=[...]'`` when ``values`` are valid for ``key``, else
    why they are not (a hint must never suggest a list that is refused in turn)."""
    try:
        check = _field_checker(key)
        if check is not None:
            check(values)
    except UserInputError as err:
        why = str(err).removeprefix("config error: ").removeprefix(f"sweep.{key}: ")
        shown = _short_repr(values[0] if len(values) == 1 else values)
        return f"; and {shown} is not a valid {key}: {why}"
    return f", e.g. --set 'sweep.{key}={json.dumps(values, default=str)}'"


def _overlaps(a: str, b: str) -> bool:
    """Whether dotted keys ``a`` and ``b`` are equal or one lies inside the other."""
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


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
        raw = dict(source)  # apply_overrides copies it
    else:
        raw = read_yaml(source)
    # a results folder's config.yaml records the hash it was made for: a record of
    # identity, not a setting, so that file is a valid input (the hash is recomputed)
    raw.pop(SAVED_HASH_KEY, None)
    raw = apply_overrides(raw, overrides)
    cfg = _validate(raw)
    from .config_sweep import SweepSpace  # it builds on this module

    # Every point of the sweep must itself be a valid config (checked without
    # building every run: see SweepSpace.check).
    for msg in SweepSpace(cfg).check():
        warnings.warn(msg, ConfigWarning, stacklevel=2)
    return cfg


#: activations whose nets have no homogenization (the KKT residuals are not defined)
_NOT_HOMOGENIZABLE = ("tanh", "elu", "gelu", "softplus")


def config_warnings(cfg: ExperimentConfig) -> list[str]:
    """One-line warnings about a valid config that probably says more than it does."""
    steps = cfg.train.steps
    out: list[str] = []
    m = cfg.model
    multi = cfg.data.classes == "all"
    if multi and cfg.metrics.kkt:
        out.append("metrics.kkt: skipped: the KKT residuals are those of a binary margin problem")
    elif cfg.metrics.kkt and (m.bias or m.activation in _NOT_HOMOGENIZABLE):
        why = "biases" if m.bias else f"activation {m.activation}"
        out.append(f"metrics.kkt: skipped: a net with {why} is not (near-)homogeneous")
    if multi and cfg.metrics.margins:
        out.append(
            "metrics.margins: the linear predictor, SVM cosine and boundary agreement are "
            "binary-only and skipped; the multiclass margin is reported"
        )
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


def to_yaml(cfg: ExperimentConfig, extra: Mapping[str, Any] | None = None) -> str:
    data = cfg.model_dump(mode="json")
    if extra:
        data = {**dict(extra), **data}
    return yaml.safe_dump(data, sort_keys=False)
