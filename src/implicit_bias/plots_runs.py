"""Per-run figures over any two swept keys, across groups of runs.

A sweep over a shape key (``model.width``) splits its runs into groups, one
per shape; the figures here read the flat runs table
(:func:`implicit_bias.tables.runs_table`) instead, so one figure covers all
groups:

- ``phase_diagram``: the phase of every run over (x, y) — by default the
  learning rate and the first other swept key (``model.init_scale`` first,
  then e.g. ``model.width``; the seed when nothing else is swept) — one panel
  per value of the ``facet`` keys; a cell holding several runs (seeds) is
  split into one stripe per run. Its data is written beside it as
  ``phase_diagram.csv`` (one row per cell: the cell's keys, its number of
  runs, the count of each phase and the phases in seed order).
- ``final_sharpness_vs_lr`` and ``test_acc_vs_lr``: a final value of every
  run against x, coloured by phase; one line per value of y (the median over
  seeds, or each run when a condition has few runs).

Replicates (``seed``, ``data.seed``) are never an axis unless asked for (or
nothing else is swept): runs differing only in them share a cell or a line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from .plots import draw_phase_grid
from .plots_base import PHASE_COLORS, PHASE_MARKERS, _figure, _legend, _plain_log_ticks
from .tables import swept_keys
from .views import PHASES, REPLICATE_KEYS, _sort_key, fmt

__all__ = [
    "FEW_RUNS",
    "Axes",
    "choose_axes",
    "final_vs_x",
    "phase_cells",
    "phase_diagram",
]

#: a condition with at most this many runs is drawn run by run, not as a median
FEW_RUNS = 3
#: the swept key shown on the y axis by default, when it is swept
PREFERRED_Y = ("model.init_scale",)
MAX_FACETS = 12


@dataclass
class Axes:
    """Which keys of the runs table a cross-group figure uses.

    Attributes:
        x: the column on the x axis (the learning rate by default).
        y: the column on the y axis of the phase diagram (the line key of the
            scatter figures), or None when only x varies.
        facet: columns with one panel per combination of their values.
        critical: the rate column is in critical units (``lr_units: critical``).
    """

    x: str
    y: str | None
    facet: list[str]
    critical: bool = False

    def label(self, key: str | None) -> str:
        if key is None:
            return ""
        if key in ("train.lr", "lr_critical") and (self.critical or key == "lr_critical"):
            return r"learning rate $\eta$ [critical units $2/\lambda_0$]"
        if key in ("lr", "train.lr"):
            return r"learning rate $\eta$ [absolute]"
        if key == "model.init_scale":
            return r"init scale $\omega$ (model.init_scale)"
        return key


def _varies(df, key: str) -> bool:
    return key in df.columns and df[key].astype(str).nunique() > 1


def rate_key(df, critical: bool) -> str:
    """The column holding each run's learning rate in the config's units."""
    if "train.lr" in df.columns:
        return "train.lr"
    if critical and "lr_critical" in df.columns:
        return "lr_critical"
    return "lr"


def choose_axes(
    df,
    x: str | None = None,
    y: str | None = None,
    facet: list[str] | None = None,
    critical: bool = False,
) -> Axes:
    """The axes of the cross-group figures: the given ones, the rest chosen.

    Defaults: x is the learning rate (if it varies, else the first varying swept
    key); y is ``model.init_scale`` when swept, else the first other varying
    swept key (``model.width``, …), else the seed; the facets are the remaining
    varying swept keys that are not replicates.

    Raises:
        UserInputError: a key that is not a column of the runs table, or one
            given twice.
    """
    from ._errors import UserInputError

    columns = [str(c) for c in df.columns]
    given = [("--x", x), ("--y", y), *(("--facet", f) for f in facet or [])]
    for opt, key in given:
        if key is not None and key not in columns:
            valid = ", ".join(
                [*swept_keys(df), "lr", *(["lr_critical"] if "lr_critical" in columns else [])]
            )
            raise UserInputError(f"{opt} {key!r} is not a swept key of these runs (valid: {valid})")
    named = [k for _, k in given if k is not None]
    if len(set(named)) < len(named):
        raise UserInputError(f"--x, --y and --facet must be different keys (got {named})")
    rate = rate_key(df, critical)
    keys = [k for k in swept_keys(df) if k != rate and _varies(df, k)]
    main = [k for k in keys if k not in REPLICATE_KEYS]
    if x is None:
        candidates = [rate, *main] if _varies(df, rate) or not main else main
        x = next((k for k in candidates if k not in named), rate)
    if y is None:
        pool = [k for k in main if k != x and k not in named]
        pool.sort(key=lambda k: (k not in PREFERRED_Y, k))
        if pool:
            y = pool[0]
        else:
            reps = [k for k in keys if k in REPLICATE_KEYS and k != x and k not in named]
            y = reps[0] if reps else None
    if facet is None:
        facet = [k for k in main if k not in (x, y)]
    return Axes(x=x, y=y, facet=list(facet), critical=critical)


def _values(df, key: str | None) -> list[Any]:
    if key is None:
        return [None]
    return sorted(set(df[key].tolist()), key=_sort_key)


def _facet_groups(df, keys: list[str]) -> list[tuple[str, Any]]:
    """(panel title, row mask) per combination of the facet keys present in the data."""
    if not keys:
        return [("", np.ones(len(df), dtype=bool))]
    combos = sorted(
        {tuple(r) for r in df[keys].itertuples(index=False, name=None)},
        key=lambda t: tuple(_sort_key(v) for v in t),
    )
    out = []
    for combo in combos:
        m = np.ones(len(df), dtype=bool)
        for k, v in zip(keys, combo, strict=True):
            m &= (df[k] == v).to_numpy()
        out.append((", ".join(f"{k}={fmt(v)}" for k, v in zip(keys, combo, strict=True)), m))
    return out


def _replicate_order(df) -> list[str]:
    return [k for k in REPLICATE_KEYS if k in df.columns]


def phase_cells(df, axes: Axes):
    """The phase diagram's data: one row per (facets…, y, x) cell that holds runs.

    Returns:
        A DataFrame with the facet columns, ``y`` and ``x`` keys (by their names),
        ``n_runs``, one count column per phase and ``phases`` (the runs' phases
        in replicate order, joined by ``;``).
    """
    import pandas as pd

    keys = [*axes.facet, *([axes.y] if axes.y else []), axes.x]
    order = [*keys, *(k for k in _replicate_order(df) if k not in keys), "run"]
    sorted_df = df.sort_values(order, key=lambda s: s.map(_sort_key), kind="stable")
    rows = []
    for combo, sub in sorted_df.groupby(keys, sort=False, dropna=False):
        combo = combo if isinstance(combo, tuple) else (combo,)
        ph = sub["phase"].astype(str).tolist() if "phase" in sub else ["unknown"] * len(sub)
        row = dict(zip(keys, combo, strict=True))
        row["n_runs"] = len(sub)
        row.update({p: ph.count(p) for p in PHASES})
        row["phases"] = ";".join(ph)
        rows.append(row)
    cells = pd.DataFrame(rows)
    return cells.sort_values(keys, key=lambda s: s.map(_sort_key), kind="stable").reset_index(
        drop=True
    )


def phase_diagram(df, axes: Axes, name: str) -> tuple[Figure, Any] | None:
    """The phase of every run over (x, y), one panel per facet; returns (figure, cells)."""
    if "phase" not in df.columns or not len(df):
        return None

    cells = phase_cells(df, axes)
    xs = _values(df, axes.x)
    ys = _values(df, axes.y)
    nx, ny = len(xs), len(ys)
    panels = _facet_groups(cells, axes.facet)
    note = ""
    if len(panels) > MAX_FACETS:
        note = f" — first {MAX_FACETS} of {len(panels)} panels"
        panels = panels[:MAX_FACETS]
    w = min(max(0.75 * nx + 1.6, 4.0), 10.0)
    h = min(max(0.5 * ny + 1.4, 2.8), 8.0)
    fig, axs = _figure(len(panels), ncols_max=3, size=(w, h), legend_w=2.0)
    stripes = max(int(cells["n_runs"].max()), 1)
    empty = False
    for ax, (title, mask) in zip(axs, panels, strict=True):
        sub = cells[mask]
        S = max(int(sub["n_runs"].max()), 1)
        M = np.full((ny, nx * S), np.nan)
        marks = []
        for _, row in sub.iterrows():
            ix = xs.index(row[axes.x])
            iy = ys.index(row[axes.y]) if axes.y else 0
            for j, p in enumerate(str(row["phases"]).split(";")):
                if p in PHASES:
                    M[iy, ix * S + j] = PHASES.index(p)
                    marks.append((ix - 0.5 + (j + 0.5) / S, iy, p))
        empty |= len(sub) < nx * ny
        draw_phase_grid(
            ax,
            M,
            marks,
            S,
            [fmt(v, 3) for v in xs],
            [fmt(v, 3) if v is not None else "" for v in ys],
        )
        ax.set_xlabel(axes.label(axes.x) + " (categorical axis)")
        ax.set_ylabel(axes.label(axes.y))
        ax.set_title(title, fontsize=9)
        critical_x = axes.critical and axes.x in ("train.lr", "lr_critical")
        numeric = all(isinstance(v, int | float) for v in xs)
        if critical_x and numeric and nx > 1 and xs[0] < 1.0 < xs[-1]:
            # the nominal critical rate 2/λ₀: through the cell of rate 1 if it was run,
            # else on the border between the rates around it (cells are categorical)
            k = int(np.searchsorted(np.asarray(xs, dtype=float), 1.0))
            ax.axvline(k if xs[k] == 1.0 else k - 0.5, color="k", ls="--", lw=1.4)
    hs: list[Any] = [
        Line2D([], [], ls="", marker=PHASE_MARKERS[p], markersize=8, color=PHASE_COLORS[p], label=p)
        for p in PHASES
    ]
    if empty:
        hs.append(Patch(color="#eeeeee", label="no run"))
    if axes.critical and axes.x in ("train.lr", "lr_critical"):
        hs.append(Line2D([], [], color="k", ls="--", label=r"$\eta = 2/\lambda_0$"))
    what = "phase diagram"
    if stripes > 1:
        reps = ", ".join(k for k in _replicate_order(df) if k not in (axes.x, axes.y)) or "run"
        what += f" (each cell: up to {stripes} runs side by side, by {reps})"
    _legend(fig, hs, "phase")
    fig.suptitle(f"{name}: {what}{note}", fontsize=10, x=0.01, ha="left")
    return fig, cells


def _numeric(df, key: str) -> bool:
    return df[key].dtype.kind in "fiu"


def final_vs_x(df, axes: Axes, name: str, value: str) -> tuple[Figure, Any] | None:
    """A final per-run value against x, one line per y value, every run coloured by phase.

    ``value`` is ``final_test_acc`` or ``final_sharpness`` (shown relative to
    ``sharpness_init`` in critical units, with the stability threshold 2/η when
    x is the learning rate). A line is the median over the replicates of a
    condition; a condition with at most :data:`FEW_RUNS` runs is drawn run by
    run instead (a median of two different runs matches neither).

    Returns:
        (figure, data): ``data`` holds the plotted value of every run.
    """
    if value not in df.columns or not _numeric(df, axes.x):
        return None
    yv = np.asarray(df[value], dtype=np.float64)
    is_sharp = value == "final_sharpness"
    relative = is_sharp and axes.critical and "sharpness_init" in df.columns
    if relative:
        with np.errstate(divide="ignore", invalid="ignore"):
            yv = yv / np.asarray(df["sharpness_init"], dtype=np.float64)
    if not np.isfinite(yv).any() and "phase" not in df.columns:
        return None
    xv = np.asarray(df[axes.x], dtype=np.float64)
    ph = (
        df["phase"].astype(str).to_numpy() if "phase" in df.columns else np.full(len(df), "unknown")
    )
    panels = _facet_groups(df, axes.facet)[:MAX_FACETS]
    fig, axs = _figure(len(panels), ncols_max=3, size=(5.6, 4.0), legend_w=2.6)
    # replicates are what a line aggregates, never a line of their own
    line_key = None if axes.y in REPLICATE_KEYS else axes.y
    lines = _values(df, line_key)
    colors = ["k"] if len(lines) == 1 else [f"C{i % 10}" for i in range(len(lines))]
    hs: list[Any] = []
    seen: set[str] = set()

    def add(h: Any) -> None:
        if h.get_label() not in seen:
            seen.add(h.get_label())
            hs.append(h)

    for ax, (title, mask) in zip(axs, panels, strict=True):
        for p in (*PHASES, "unknown"):
            m = mask & (ph == p) & np.isfinite(yv)
            if m.any():
                ax.scatter(
                    xv[m],
                    yv[m],
                    color=PHASE_COLORS.get(p, "0.6"),
                    marker=PHASE_MARKERS.get(p, "o"),
                    s=30,
                    alpha=0.85,
                    edgecolors="white",
                    linewidths=0.4,
                    zorder=3,
                )
                add(
                    Line2D(
                        [],
                        [],
                        ls="",
                        marker=PHASE_MARKERS.get(p, "o"),
                        color=PHASE_COLORS.get(p, "0.6"),
                        label=p,
                    )
                )
        for lv, color in zip(lines, colors, strict=True):
            lm = mask if line_key is None else mask & (df[line_key] == lv).to_numpy()
            label = "" if line_key is None else f"{line_key}={fmt(lv)}"
            xs = sorted({float(v) for v in xv[lm]})
            per_x = [lm & (xv == x_) for x_ in xs]
            few = max((int(m.sum()) for m in per_x), default=0) <= FEW_RUNS
            if few:
                # each run its own thin line, joined along x in replicate order
                reps = _replicate_order(df)
                keyed = df[lm].sort_values([*reps, axes.x], kind="stable") if reps else df[lm]
                groups = keyed.groupby(reps, sort=True) if reps else [(None, keyed)]
                for _, g in groups:
                    gy = yv[g.index.to_numpy()]
                    gx = xv[g.index.to_numpy()]
                    order = np.argsort(gx, kind="stable")
                    ax.plot(gx[order], gy[order], color=color, lw=0.9, alpha=0.7, zorder=2)
                add(
                    Line2D(
                        [],
                        [],
                        color=color,
                        lw=0.9,
                        label=(label + "\n" if label else "") + "each run (few runs: no median)",
                    )
                )
            else:
                med, lo, hi, xr = [], [], [], []
                for x_, m in zip(xs, per_x, strict=True):
                    a = yv[m]
                    a = a[np.isfinite(a)]
                    if a.size:
                        xr.append(x_)
                        med.append(float(np.median(a)))
                        lo.append(med[-1] - float(a.min()))
                        hi.append(float(a.max()) - med[-1])
                if xr:
                    ax.errorbar(xr, med, yerr=[lo, hi], color=color, lw=1.3, capsize=3, zorder=2)
                    add(
                        Line2D(
                            [],
                            [],
                            color=color,
                            lw=1.3,
                            label=(label + "\n" if label else "") + "median, range over seeds",
                        )
                    )
        x_is_rate = axes.x in ("train.lr", "lr", "lr_critical")
        if x_is_rate and axes.critical and axes.x != "lr":
            ax.axvline(1.0, color="0.55", ls=":", lw=1.0)
            add(Line2D([], [], color="0.55", ls=":", label=r"$\eta = 2/\lambda_0$ (critical)"))
        if is_sharp and x_is_rate:
            fx = xv[mask & np.isfinite(xv) & (xv > 0)]
            if fx.size and (axes.critical or axes.x == "lr"):
                grid = np.geomspace(fx.min() / 1.3, fx.max() * 1.3, 200)
                ax.plot(grid, (1.0 if relative else 2.0) / grid, color="k", ls="--", lw=1.2)
                add(Line2D([], [], color="k", ls="--", label=r"$2/\eta$ (stability threshold)"))
        fin = xv[mask & np.isfinite(xv)]
        xlabel = axes.label(axes.x)
        if fin.size and (fin > 0).all() and fin.max() / fin.min() > 4:
            ax.set_xscale("log")
            if fin.max() / fin.min() < 300:
                _plain_log_ticks(ax, "x")
            xlabel += " (log scale)"
        ax.set_xlabel(xlabel)
        ylab = {
            "final_test_acc": "final test accuracy [fraction correct]",
            "final_sharpness": (
                r"final sharpness $\lambda/\lambda_0$" if relative else "final sharpness λ"
            ),
        }.get(value, value)
        fy = yv[mask & np.isfinite(yv)]
        if is_sharp and fy.size and (fy > 0).all():
            ax.set_yscale("log")
            if fy.max() / fy.min() < 300:
                _plain_log_ticks(ax)
            ylab += " (log scale)"
        ax.set_ylabel(ylab)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3, which="both")
        n_missing = int((mask & ~np.isfinite(yv)).sum())
        if n_missing:
            ax.text(
                0.99,
                0.01,
                f"{n_missing} run(s) without a final value (diverged) not shown",
                transform=ax.transAxes,
                ha="right",
                va="bottom",
                fontsize=7,
                color="0.35",
            )
    _legend(fig, hs, "phase / condition")
    what = {"final_test_acc": "test accuracy", "final_sharpness": "final sharpness"}[value]
    fig.suptitle(f"{name}: {what} vs {axes.x}", fontsize=10, x=0.01, ha="left")
    import pandas as pd

    data = pd.DataFrame(
        {
            "run": df["run"].to_numpy(),
            axes.x: xv,
            **({axes.y: df[axes.y].to_numpy()} if axes.y else {}),
            **{k: df[k].to_numpy() for k in axes.facet},
            "phase": ph,
            value + ("_relative" if relative else ""): yv,
        }
    )
    return fig, data


def write_all(df, axes: Axes, out, name: str) -> list:
    """Draw the cross-group figures into ``out``; each PNG has its data beside it as CSV.

    Returns:
        The paths written: ``phase_diagram.png``, ``phase_diagram.csv``,
        ``final_sharpness_vs_lr.png``/``.csv``, ``test_acc_vs_lr.png``/``.csv``
        (a figure whose values are absent is skipped).
    """
    from pathlib import Path

    from .plots_base import _save

    out = Path(out)
    made = [("phase_diagram", phase_diagram(df, axes, name))]
    for fig_name, value in (
        ("final_sharpness_vs_lr", "final_sharpness"),
        ("test_acc_vs_lr", "final_test_acc"),
    ):
        made.append((fig_name, final_vs_x(df, axes, name, value)))
    paths = []
    for fig_name, got in made:
        if got is None:
            continue
        fig, data = got
        paths.append(_save(fig, out / f"{fig_name}.png"))
        data.to_csv(out / f"{fig_name}.csv", index=False)
        paths.append(out / f"{fig_name}.csv")
    return paths
