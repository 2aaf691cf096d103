"""Sweeps: the runs of a config, counted and checked without building every one.

A sweep maps dotted keys to lists; its runs are their cartesian product
(:class:`SweepSpace`), each a fully resolved
:class:`~implicit_bias.config.ExperimentConfig`.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from ._errors import UserInputError
from .config import ExperimentConfig, _field_checker, _validate, config_warnings

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


#: most runs one sweep (one results folder) may hold
MAX_RUNS = 10**7
#: most combinations of swept keys that fix shapes (each a batch and a data set)
MAX_SHAPE_POINTS = 10_000


def _set_path_copied(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set dotted ``key`` in ``raw``, copying (shallowly) each section on its path
    instead of the whole config: ``raw`` is a shallow copy of a shared base."""
    parts = key.split(".")
    node = raw
    for p in parts[:-1]:
        nxt = node.get(p)
        nxt = dict(nxt) if isinstance(nxt, dict) else nxt
        if nxt is None or nxt is False or nxt is True:
            nxt = {}
        elif not isinstance(nxt, dict):
            raise UserInputError(f"config error: cannot set '{key}': '{p}' is not a section")
        node[p] = nxt
        node = nxt
    node[parts[-1]] = value


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
        raw = dict(self._base)  # copy only the sections on the path of each key
        for key, value in coords.items():
            _set_path_copied(raw, key, value)
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

    @property
    def n_dependent(self) -> int:
        """Number of combinations of the dependent axes (each validated, and at most
        one group of runs, at planning time)."""
        return math.prod(self.sizes[j] for j in self.dependent)

    def check_size(self) -> None:
        """Refuse a sweep too large to plan in seconds, from the counts alone.

        Raises:
            UserInputError: more than :data:`MAX_RUNS` runs, or more than
                :data:`MAX_SHAPE_POINTS` combinations of the keys that fix shapes.
        """
        if self.n_runs > MAX_RUNS:
            sizes = " × ".join(f"{k} {n}" for k, n in zip(self.keys, self.sizes, strict=True))
            raise UserInputError(
                f"sweep: {self.n_runs:.3g} runs ({sizes}) is more than the {MAX_RUNS:.0e} "
                "one results folder holds; split the sweep into several configs"
            )
        if self.n_dependent > MAX_SHAPE_POINTS:
            keys = ", ".join(f"{self.keys[j]} ({self.sizes[j]})" for j in self.dependent)
            raise UserInputError(
                f"sweep: {self.n_dependent} combinations of {keys} is more than "
                f"{MAX_SHAPE_POINTS}: each is its own batch of runs and data set; "
                "sweep fewer values of these keys"
            )

    def check(self) -> list[str]:
        """Validate every run without building each; return one-line warnings.

        The dependent combinations are validated as whole configs; each value of
        an independent key is validated once, by its field's type alone (no
        validator relates it to another key), so 10⁶ seeds cost microseconds each.

        Raises:
            UserInputError: the sweep is too large (:meth:`check_size`), or the
                first invalid point, naming its key.
        """
        self.check_size()
        found: list[str] = []
        checked = [cfg for _, cfg in self.dependent_points()]
        for j in self.independent:
            check_values = _field_checker(self.keys[j])
            if check_values is not None:
                check_values(self.values[j][1:])
                continue
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


def expand_runs(cfg: ExperimentConfig) -> list[tuple[dict[str, Any], ExperimentConfig]]:
    """The runs of a config: cartesian product of ``sweep`` axes (× ``seed``).

    This materialises every run; for large sweeps use :class:`SweepSpace`.

    Returns:
        A list of ``(coords, run_config)``: ``coords`` maps each swept dotted key
        to this run's value; ``run_config`` has ``sweep`` emptied and the values
        set (``seed`` set from ``sweep.seed`` when swept).
    """
    return list(SweepSpace(cfg))
