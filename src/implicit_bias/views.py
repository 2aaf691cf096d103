"""Group views of a results tree: the labels that tables (:mod:`.report`) and
figures (:mod:`.plots`) both need, in a module of their own so that neither
imports the other for them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .phases import PHASES  # re-exported for report and plots

__all__ = ["PHASES", "REPLICATE_KEYS", "GroupView", "fmt", "group_views"]

#: swept keys that are replicates: runs differing only in them are aggregated
REPLICATE_KEYS = ("seed", "data.seed")


# --------------------------------------------------------------- group views
@dataclass
class GroupView:
    """One group of runs with the labels the tables and figures need.

    Attributes:
        name: node name (``group_000``).
        ds: the group's Dataset (dim ``run``).
        critical: rates are in critical units (η·λ₀/2) rather than absolute η.
        rate: ``(R,)`` each run's learning rate in those units (rounded so that
            runs of one swept value compare equal).
        facet_keys: swept keys other than the rate and the replicates
            (e.g. ``model.init_scale``), the conditions shown side by side.
        fixed: swept keys constant within the group (they tell groups apart).
        info: the group's non-swept config (``group_config`` attribute).
    """

    name: str
    ds: Any
    critical: bool
    rate: np.ndarray
    facet_keys: list[str]
    fixed: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_runs(self) -> int:
        return int(self.ds.sizes["run"])

    @property
    def rate_label(self) -> str:
        if self.critical:
            return r"learning rate $\eta$ [critical units $2/\lambda_0$]"
        return r"learning rate $\eta$ [absolute]"

    @property
    def rate_name(self) -> str:
        return "lr (critical units)" if self.critical else "lr"

    def coord(self, key: str) -> np.ndarray:
        return np.asarray(self.ds[key].values)

    def phases(self) -> np.ndarray:
        if "phase" in self.ds:
            return np.asarray(self.ds["phase"].values).astype(str)
        return np.full(self.n_runs, "unknown")

    def facet_labels(self, keys: list[str] | None = None) -> tuple[np.ndarray, list[str]]:
        """Per-run label of the facet keys (``model.init_scale=0.5``) and the sorted unique labels."""
        keys = self.facet_keys if keys is None else keys
        if not keys:
            return np.full(self.n_runs, ""), [""]
        cols = [self.coord(k) for k in keys]
        labels = np.array(
            [
                ", ".join(f"{k}={fmt(c[i])}" for k, c in zip(keys, cols, strict=True))
                for i in range(self.n_runs)
            ]
        )
        order = sorted(range(self.n_runs), key=lambda i: tuple(_sort_key(c[i]) for c in cols))
        uniq: list[str] = []
        for i in order:
            if labels[i] not in uniq:
                uniq.append(str(labels[i]))
        return labels, uniq

    def title(self) -> str:
        """One line naming the group: data, model, loss and its fixed swept keys."""
        parts = []
        data = self.info.get("data_kind")
        model = self.info.get("model", {})
        train = self.info.get("train", {})
        if data:
            parts.append(f"{data} data")
        if model:
            act = model.get("activation", "")
            depth = model.get("depth", "")
            width = self.fixed.get("model.width", model.get("width", ""))
            par = model.get("parametrization", "")
            last = ", fixed-sign last layer" if model.get("last_layer") == "fixed_sign" else ""
            kind = model.get("kind", "mlp")
            if kind == "cnn":
                chans = "-".join(str(c) for c in model.get("channels", []))
                parts.append(f"{act} convnet, channels {chans}, {model.get('pool', 'max')} pool")
            elif kind == "module":
                parts.append(f"module {model.get('module', '')}")
            else:
                bias = ", biases" if model.get("bias") else ""
                parts.append(f"depth-{depth} {act} net, width {width}, {par}{last}{bias}")
        if train.get("loss"):
            parts.append(f"{train['loss']} loss")
        fixed = [f"{k}={fmt(v)}" for k, v in self.fixed.items() if k != "model.width"]
        return "; ".join(parts + fixed)


def _sort_key(v: Any) -> tuple:
    try:
        return (0, float(v), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(v))


def fmt(v: Any, digits: int = 4) -> str:
    """Short text of a coordinate or value: ``0.5``, ``1e-03``, ``nan``, ``lazy``."""
    if isinstance(v, bytes):
        v = v.decode()
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.{digits}g}"
    return str(v)


def _round_sig(x: np.ndarray, sig: int = 10) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = np.where((x != 0) & np.isfinite(x), np.floor(np.log10(np.abs(x))), 0.0)
        scale = 10.0 ** (sig - 1 - mag)
        return np.where(np.isfinite(x), np.round(x * scale) / scale, x)


def _root_config(tree) -> dict[str, Any]:
    text = tree.attrs.get("config") if hasattr(tree, "attrs") else None
    if not text:
        return {}
    try:
        import yaml

        cfg = yaml.safe_load(text)
    except Exception:  # a damaged config must not stop a report
        return {}
    return cfg if isinstance(cfg, dict) else {}


def group_views(tree) -> list[GroupView]:
    """One :class:`GroupView` per child node of ``tree`` that holds runs."""
    cfg = _root_config(tree)
    train = cfg.get("train") or {}
    data_kind = (cfg.get("data") or {}).get("kind")
    views = []
    for name, node in tree.children.items():
        ds = node.to_dataset()
        if "run" not in ds.dims:
            continue
        critical = train.get("lr_units") == "critical" and "train.lr_units" not in ds.coords
        if critical:
            if "train.lr" in ds.coords:
                rate = np.asarray(ds["train.lr"].values, dtype=np.float64)
            elif isinstance(train.get("lr"), int | float):
                rate = np.full(ds.sizes["run"], float(train["lr"]))
            else:
                rate = np.asarray(ds["lr"].values * ds["sharpness_init"].values / 2.0)
        else:
            rate = np.asarray(ds["lr"].values, dtype=np.float64)
        rate = _round_sig(rate)
        swept = [
            str(k)
            for k in ds.coords
            if k not in ("run", "lr", "train.lr", *REPLICATE_KEYS) and ds[k].dims == ("run",)
        ]
        facets, fixed = [], {}
        for k in sorted(swept):
            vals = np.asarray(ds[k].values)
            if len(np.unique(vals)) > 1:
                facets.append(k)
            else:
                fixed[k] = vals[0]
        try:
            info = json.loads(ds.attrs.get("group_config", "{}"))
        except (TypeError, ValueError):
            info = {}
        if data_kind:
            info["data_kind"] = data_kind
        views.append(GroupView(name, ds, critical, rate, facets, fixed, info))
    return views


# ------------------------------------------------------------ phase counts
