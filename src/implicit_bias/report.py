"""Summaries, tables and figures of a results folder (SPEC §5).

:func:`summary_table` is the plain-text phase table the CLI prints after a
run; it needs only numpy (and PyYAML to read the saved config), so it stays
fast. :func:`write_report` writes ``<DIR>/report/``: the figures of
:mod:`implicit_bias.plots` and two tables of one row per run,
``summary.md`` and ``summary.csv``.

Learning rates are shown in the units the config asked for: with
``train.lr_units: critical`` a run's rate is read as η·λ₀/2 (η the absolute
rate, λ₀ the run's sharpness at initialisation), so 1 is the critical rate
2/λ₀ and every run of one swept value shares it; otherwise η itself.
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .phases import PHASES

#: swept keys that are replicates: runs differing only in them are aggregated
REPLICATE_KEYS = ("seed", "data.seed")
#: per-run columns shown first in the tables, in this order, when present
CORE_COLUMNS = (
    "lr",
    "lr_critical",
    "phase",
    "divergence_step",
    "sharpness_init",
    "final_sharpness",
    "final_loss",
    "final_test_loss",
    "final_test_acc",
)


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
            parts.append(f"depth-{depth} {act} net, width {width}, {par}{last}")
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
def _nanmedian(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(np.median(x)) if x.size else float("nan")


def phase_count_rows(view: GroupView) -> tuple[list[str], list[list[Any]]]:
    """Header and rows of phase counts per (rate, facet) condition, with median finals."""
    ds = view.ds
    ph = view.phases()
    cols = [view.coord(k) for k in view.facet_keys]
    keys = sorted(
        {(float(view.rate[i]), *(c[i] for c in cols)) for i in range(view.n_runs)},
        key=lambda t: tuple(_sort_key(v) for v in t),
    )
    header = [
        view.rate_name,
        *view.facet_keys,
        *PHASES,
        "median final_loss",
        "median final_sharpness",
    ]
    rows = []
    for key in keys:
        sel = view.rate == key[0]
        for c, v in zip(cols, key[1:], strict=True):
            sel &= c == v
        counts = [int((ph[sel] == p).sum()) for p in PHASES]
        med = [
            _nanmedian(ds[v].values[sel]) if v in ds else float("nan")
            for v in ("final_loss", "final_sharpness")
        ]
        rows.append([*key, *counts, *med])
    return header, rows


def _text_table(header: list[str], rows: list[list[Any]], indent: str = "  ") -> list[str]:
    cells = [[fmt(v) for v in r] for r in rows]
    widths = [max([len(h)] + [len(r[j]) for r in cells]) for j, h in enumerate(header)]
    out = [indent + "  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    out += [indent + "  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return out


def summary_table(tree) -> str:
    """Phase counts per learning rate (and per other swept key), one plain-text table per group.

    Medians of ``final_loss`` and ``final_sharpness`` are over the runs that
    did not diverge (``nan`` when all did).
    """
    lines = []
    for view in group_views(tree):
        ph = view.phases()
        tally = ", ".join(f"{int((ph == p).sum())} {p}" for p in PHASES)
        head = f"{view.name}: {view.n_runs} runs ({tally})"
        if view.fixed:
            head += "  [" + ", ".join(f"{k}={fmt(v)}" for k, v in view.fixed.items()) + "]"
        lines.append(head)
        lines += _text_table(*phase_count_rows(view))
    return "\n".join(lines)


# ------------------------------------------------------------- run tables
def run_table(views: list[GroupView]) -> tuple[list[str], list[list[Any]]]:
    """One row per run: group, run, swept coordinates, rates, phase, finals, diagnostics.

    Columns are the union over groups; a value a group lacks is ``None``.
    ``lr`` is the absolute rate η, ``lr_critical`` is η·λ₀/2 (1 = the critical
    rate 2/λ₀ at initialisation).
    """
    coord_keys: list[str] = []
    scalar_vars: list[str] = []
    for v in views:
        ds = v.ds
        for k in ds.coords:
            if k not in ("run", "lr") and ds[k].dims == ("run",) and k not in coord_keys:
                coord_keys.append(str(k))
        for name in ds.data_vars:
            da = ds[name]
            if da.dims == ("run",) and da.dtype.kind in "fiub" and name not in scalar_vars:
                scalar_vars.append(str(name))
    coord_keys = sorted(coord_keys, key=lambda k: (k in REPLICATE_KEYS, k))
    extra = sorted(c for c in scalar_vars if c not in CORE_COLUMNS)
    header = ["group", "run", *coord_keys, *CORE_COLUMNS, *extra]
    rows: list[list[Any]] = []
    for v in views:
        ds = v.ds
        cols: dict[str, np.ndarray] = {
            k: np.asarray(ds[k].values) for k in coord_keys if k in ds.coords
        }
        for name in (*CORE_COLUMNS, *extra):
            if name in ds:
                cols[name] = np.asarray(ds[name].values)
        if "lr" in ds.coords:
            cols["lr"] = np.asarray(ds["lr"].values)
            if "sharpness_init" in ds:
                cols["lr_critical"] = cols["lr"] * np.asarray(ds["sharpness_init"].values) / 2.0
        runs = np.asarray(ds["run"].values)
        for i in range(v.n_runs):
            row: list[Any] = [v.name, int(runs[i])]
            for h in header[2:]:
                c = cols.get(h)
                row.append(None if c is None else _py(c[i]))
            rows.append(row)
    # drop columns no group has
    keep = [j for j, _ in enumerate(header) if j < 2 or any(r[j] is not None for r in rows)]
    return [header[j] for j in keep], [[r[j] for j in keep] for r in rows]


def _py(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.generic):
        return v.item()
    return v


def _csv_cell(v: Any) -> str:
    """Floats that are exact float32 values (the default dtype) in their shortest float32
    form (0.66, not 0.6600000262260437); other floats in full."""
    if v is None:
        return ""
    if isinstance(v, float):
        if math.isfinite(v) and float(np.float32(v)) == v:
            return str(np.float32(v))
        return repr(v)
    return str(v)


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for r in rows:
            w.writerow([_csv_cell(v) for v in r])
    return path


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        return "" if v is None else fmt(v).replace("|", r"\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def summary_markdown(
    tree, views: list[GroupView], figures: list[Path], path: Path | None = None
) -> str:
    cfg = _root_config(tree)
    name = cfg.get("name", "results")
    n = sum(v.n_runs for v in views)
    critical = (cfg.get("train") or {}).get("lr_units") == "critical"
    units = (
        "learning rates in critical units (η = lr × 2/λ₀, λ₀ the run's sharpness at init)"
        if critical
        else "absolute learning rates η"
    )
    out = [f"# Report: {name}", ""]
    if path is not None:
        out.append(f"Results folder: `{path}`  ")
    out += [f"{n} runs in {len(views)} group(s); {units}.", ""]
    if not views:
        out += ["No finished chunks yet: run the same command again to finish the sweep.", ""]
    out += ["## Phase counts", ""]
    for v in views:
        out += [f"### {v.name}", "", v.title() + ".", ""]
        out += [markdown_table(*phase_count_rows(v)), ""]
    if figures:
        out += ["## Figures", ""]
        out += [f"- [{p.name}]({p.name})" for p in figures]
        out.append("")
    out += [
        "## Runs",
        "",
        "`lr` is the absolute rate η; `lr_critical` = η·λ₀/2 (1 = the critical rate 2/λ₀); "
        "`divergence_step` is −1 for runs that did not diverge; final values of diverged "
        "runs are NaN.",
        "",
        markdown_table(*run_table(views)),
        "",
    ]
    return "\n".join(out)


# ------------------------------------------------------------------ report
def write_report(path: str | Path, tree=None) -> list[Path]:
    """Figures and tables for a results folder, in ``<path>/report/``; returns the files written.

    ``tree`` is the folder's results when the caller has them open already
    (:func:`implicit_bias.run` returns them); otherwise they are read from ``path``.

    Raises:
        UserInputError: ``path`` is not a results folder.
    """
    path = Path(path)
    if not (path / "config.yaml").is_file():
        # checked before the heavy imports so that a wrong path fails at once
        from ._errors import UserInputError

        raise UserInputError(f"not a results folder (no config.yaml): {path}")
    from . import plots
    from .store import open_results

    if tree is None:
        tree = open_results(path)
    out = path / "report"
    out.mkdir(parents=True, exist_ok=True)
    views = group_views(tree)
    with warnings.catch_warnings():
        # the figures are best-effort; numerical noise must not fail a report
        warnings.simplefilter("ignore", RuntimeWarning)
        figures = plots.write_all(tree, out, views=views)
    header, rows = run_table(views)
    csv_path = write_csv(out / "summary.csv", header, rows)
    md_path = out / "summary.md"
    md_path.write_text(summary_markdown(tree, views, figures, path))
    return [*figures, md_path, csv_path]
