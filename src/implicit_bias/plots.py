"""Figures of a results folder (SPEC §5), one PNG per figure and group.

Every figure is drawn on a :class:`matplotlib.figure.Figure` with its own Agg
canvas; pyplot is never imported, so no global backend is switched, nothing
is left open and a notebook's backend is untouched.

Files (``<name>.png``, or ``<name>_group_000.png`` … when the results hold
several groups of runs, e.g. a sweep over widths):

- ``loss_curves``: training loss against iteration, one line per learning
  rate (median over seeds, shaded range; each run when a line has at most
  :data:`FEW_RUNS`), log scale (the axis says so), one panel per other
  swept condition (e.g. init scale).
- ``sharpness``: top Hessian eigenvalue against eval step, with the stability
  threshold 2/η of each rate dashed in the same colour (edge of stability,
  Cohen et al. 2021; catapult, Lewkowycz et al. 2020). In critical units the
  sharpness is shown as λ_t/λ₀ and 2/η becomes 1/η_crit.
- ``final_sharpness_vs_lr``: final sharpness of every run against η, coloured
  by phase, with the 2/η curve (catapult runs land below it).
- ``phase_diagram``: phase (:data:`PHASES`, SPEC §3 rule v2: one colour and
  one marker each) over (η, init scale) when
  ``model.init_scale`` is swept, else over (η, seed); a cell holding several
  runs is split into one stripe per run.
- ``stable_rank``: stable rank ‖W‖²_F/‖W‖²₂ of each weight matrix (except
  vectors) against eval step, one line per init scale.
- ``margins``: normalized margin (and KKT stationarity) against eval step, and
  final SVM cosine / margin ratio against η when present.
- ``test_acc_vs_lr``: final test accuracy against η, median and range over
  seeds, every run as a dot coloured by phase.

A figure whose variables are absent is skipped. Learning-rate axes are in
critical units (η·λ₀/2) when the config uses ``lr_units: critical``.
"""

from __future__ import annotations

import math
import textwrap
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import LogFormatter
from matplotlib.transforms import blended_transform_factory

from .views import PHASES, GroupView, _root_config, fmt, group_views

#: one colour and one marker per phase (SPEC §3), distinct in grey scale too
PHASE_COLORS = {
    "lazy": "#4C72B0",
    "progressive_sharpening": "#8172B3",
    "edge_of_stability": "#55A868",
    "sharpness_reduction": "#64B5CD",
    "catapult": "#DD8452",
    "not_converged": "#CCB974",
    "dead": "#C44E52",
    "diverged": "#3B3B3B",
}
PHASE_MARKERS = {
    "lazy": "o",
    "progressive_sharpening": "v",
    "edge_of_stability": "s",
    "sharpness_reduction": "P",
    "catapult": "^",
    "not_converged": "h",
    "dead": "X",
    "diverged": "D",
}
MARKERS = "osD^vP*Xp<>h"
MAX_PANELS = 12
#: a line of at most this many runs is drawn run by run, not as a median and range
FEW_RUNS = 3
DPI = 110
INIT_KEY = "model.init_scale"


# ------------------------------------------------------------------ helpers
@dataclass
class Split:
    """A partition of a group's runs: one key per run, keys in order, their names and colours."""

    of_run: np.ndarray
    order: list[Any]
    names: dict[Any, str]
    colors: dict[Any, Any]
    title: str = ""

    def mask(self, key: Any) -> np.ndarray:
        return self.of_run == key


#: lines stay distinguishable where they overlap: line style and marker cycle with the colour
LINESTYLES: tuple[Any, ...] = ("-", "--", "-.", ":", (0, (5, 1, 1, 1, 1, 1)), (0, (3, 1)))
#: at most this many markers per line (eval steps thinned evenly beyond it)
MAX_MARKS = 24


def _style(lines: Split, key: Any) -> tuple[Any, str]:
    """(line style, marker) of one line of a split, cycling through both."""
    k = lines.order.index(key) if key in lines.order else 0
    return LINESTYLES[k % len(LINESTYLES)], MARKERS[k % len(MARKERS)]


def _markevery(x: np.ndarray, marks: np.ndarray | None) -> list[int]:
    """Indices of ``x`` at the eval steps ``marks`` (all of ``x`` if None), at most MAX_MARKS."""
    idx = np.arange(len(x)) if marks is None else np.flatnonzero(np.isin(x, marks))
    if len(idx) > MAX_MARKS:
        idx = idx[np.unique(np.linspace(0, len(idx) - 1, MAX_MARKS).round().astype(int))]
    return [int(i) for i in idx]


def _sequential(n: int, cmap: str) -> list[Any]:
    if n == 1:
        return ["C0"]
    return [colormaps[cmap](t) for t in np.linspace(0.0, 0.88, n)]


def _rate_split(view: GroupView) -> Split:
    order = sorted({float(r) for r in view.rate})
    eta = r"$\eta$"
    # in critical units a rate r means eta = r x 2/lambda_0 (lambda_0: the run's initial sharpness)
    unit = r" $\times$ 2/$\lambda_0$" if view.critical else ""
    names = {r: f"{eta} = {fmt(r)}{unit}" for r in order}
    colors = dict(zip(order, _sequential(len(order), "viridis"), strict=True))
    return Split(view.rate, order, names, colors, "learning rate")


def _facet_split(view: GroupView, keys: list[str], cmap: str = "plasma") -> Split:
    labels, order = view.facet_labels(keys)
    names = {k: (k or "all runs") for k in order}
    if keys == [INIT_KEY]:
        names = {k: k.replace(INIT_KEY, r"init scale $\omega$") for k in order}
    colors = dict(zip(order, _sequential(len(order), cmap), strict=True))
    return Split(labels, order, names, colors, ", ".join(keys))


def _combine(a: Split, b: Split) -> Split:
    """Panels over the product of two splits (keys present in the data only)."""
    pairs = np.array([f"{x}\x00{y}" for x, y in zip(a.of_run, b.of_run, strict=True)])
    order, names = [], {}
    for x in a.order:
        for y in b.order:
            k = f"{x}\x00{y}"
            if (pairs == k).any():
                order.append(k)
                names[k] = ", ".join(s for s in (a.names[x], b.names[y]) if s and s != "all runs")
    return Split(pairs, order, names, {k: "C0" for k in order})


def _single(view: GroupView) -> Split:
    return Split(np.full(view.n_runs, ""), [""], {"": ""}, {"": "C0"})


def _splits(view: GroupView, primary: str = "rate") -> tuple[Split, Split]:
    """(lines, panels) for a trace figure.

    ``primary='rate'``: one line per learning rate, one panel per other swept
    condition; with a single rate the conditions become the lines.
    ``primary='init'``: one line per init scale when it is swept, panels over
    the rest (rates and other keys).
    """
    rates = _rate_split(view)
    if primary == "init" and INIT_KEY in view.facet_keys:
        lines = _facet_split(view, [INIT_KEY])
        others = [k for k in view.facet_keys if k != INIT_KEY]
        panels = _facet_split(view, others) if others else _single(view)
        if len(rates.order) > 1:
            panels = _combine(rates, panels)
        return lines, panels
    if len(rates.order) > 1 or not view.facet_keys:
        panels = _facet_split(view, view.facet_keys) if view.facet_keys else _single(view)
        return rates, panels
    return _facet_split(view, view.facet_keys), _single(view)


def _stats(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Median, min and max over axis 0, ignoring NaN (NaN where a column has none)."""
    a = np.asarray(a, dtype=np.float64)
    a = np.where(np.isfinite(a), a, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(a, axis=0), np.nanmin(a, axis=0), np.nanmax(a, axis=0)


def _positive(a: np.ndarray) -> bool:
    a = np.asarray(a, dtype=np.float64)
    finite = a[np.isfinite(a)]
    return finite.size > 0 and bool((finite > 0).all())


def _logspan(a: np.ndarray, ratio: float = 4.0) -> bool:
    """All finite values positive and spanning more than ``ratio``."""
    a = np.asarray(a, dtype=np.float64)
    a = a[np.isfinite(a)]
    return a.size > 0 and bool((a > 0).all()) and a.max() / a.min() > ratio


def _figure(
    n: int, ncols_max: int = 4, size: tuple[float, float] = (4.4, 3.4), legend_w: float = 2.2
) -> tuple[Figure, list[Any]]:
    nrows = max(1, math.ceil(n / ncols_max))
    ncols = max(1, math.ceil(n / nrows))
    fig = Figure(figsize=(size[0] * ncols + legend_w, size[1] * nrows + 0.7), layout="constrained")
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(nrows, ncols, squeeze=False).ravel())
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _suptitle(fig: Figure, what: str, name: str, view: GroupView, several: bool) -> None:
    """Left-aligned title, wrapped to stay clear of the legend on the right."""
    head = f"{name}: {what}" + (f" ({view.name})" if several else "")
    sub = view.title()
    width = max(40, int((fig.get_figwidth() - 2.4) * 14))
    lines = textwrap.wrap(head, width, break_on_hyphens=False)
    lines += textwrap.wrap(sub, width, break_on_hyphens=False) if sub else []
    fig.suptitle("\n".join(lines), fontsize=10, x=0.01, ha="left")


def _legend(fig: Figure, handles: list[Any], title: str | None = None) -> None:
    if handles:
        fig.legend(
            handles=handles,
            loc="outside right upper",
            fontsize=8,
            title=title,
            title_fontsize=8,
            frameon=False,
        )


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI)
    fig.clear()
    return path


def _diverged_note(ph: np.ndarray, sel: np.ndarray) -> str:
    n, k = int(sel.sum()), int((ph[sel] == "diverged").sum())
    return f" ({k}/{n} diverged)" if k else ""


def _panels_capped(panels: Split) -> tuple[list[Any], str]:
    if len(panels.order) > MAX_PANELS:
        return panels.order[:MAX_PANELS], f" — first {MAX_PANELS} of {len(panels.order)} panels"
    return panels.order, ""


def _draw_traces(
    ax,
    x: np.ndarray,
    Y: np.ndarray,
    sel: np.ndarray,
    lines: Split,
    ph: np.ndarray,
    log: bool = False,
    marks: np.ndarray | None = None,
) -> tuple[tuple[float, float] | None, int]:
    """Median and range of each line over its runs that did not diverge; diverged runs dotted.

    A line of at most :data:`FEW_RUNS` runs is drawn run by run instead (its legend
    says so): a median of a catapult and a dead run matches neither.

    Each median line has its own line style and a marker at the eval steps
    ``marks`` (every point of ``x`` when None), so overlapping lines stay apart.

    Returns the (min, max) of the drawn non-diverged values (None if none) and
    the number of diverged runs drawn.
    """
    n_div = 0
    lo_all, hi_all = math.inf, -math.inf
    div = ph == "diverged"
    for key in lines.order:
        m = sel & lines.mask(key)
        ok = m & ~div
        color = lines.colors[key]
        for i in np.flatnonzero(m & div):
            y = np.where(np.isfinite(Y[i]), Y[i], np.nan)
            if log:
                y = np.where(y > 0, y, np.nan)
            n_fin = int(np.isfinite(y).sum())
            if n_fin:
                # a run that diverged before the second eval step is a lone point: mark it
                ax.plot(
                    x,
                    y,
                    color=color,
                    lw=0.9,
                    ls=":",
                    alpha=0.9,
                    marker="x" if n_fin < 3 else None,
                    ms=4,
                )
                n_div += 1
        if not ok.any():
            continue
        ls, mk = _style(lines, key)
        if 1 < ok.sum() <= FEW_RUNS:
            # a median of two or three runs (one catapult, one dead) matches none of them
            for i in np.flatnonzero(ok):
                y = np.where(np.isfinite(Y[i]), Y[i], np.nan)
                if log:
                    y = np.where(y > 0, y, np.nan)
                if np.isfinite(y).any():
                    ax.plot(
                        x,
                        y,
                        color=color,
                        lw=1.1,
                        ls=ls,
                        marker=mk,
                        ms=3,
                        markevery=_markevery(x, marks),
                        alpha=0.85,
                    )
                    lo_all = min(lo_all, float(np.nanmin(y)))
                    hi_all = max(hi_all, float(np.nanmax(y)))
            continue
        med, lo, hi = _stats(Y[ok])
        if log:
            med, lo, hi = (np.where(v > 0, v, np.nan) for v in (med, lo, hi))
        if not np.isfinite(med).any():
            continue
        ax.plot(
            x, med, color=color, lw=1.6, ls=ls, marker=mk, ms=3.5, markevery=_markevery(x, marks)
        )
        if ok.sum() > 1:
            ax.fill_between(
                x,
                np.where(np.isfinite(lo), lo, med),
                np.where(np.isfinite(hi), hi, med),
                color=color,
                alpha=0.15,
                lw=0,
            )
        lo_all = min(lo_all, float(np.nanmin(lo)))
        hi_all = max(hi_all, float(np.nanmax(hi)))
    return ((lo_all, hi_all) if hi_all >= lo_all else None), n_div


def _clip_top(
    ax, rng: tuple[float, float] | None, sel_diverged: bool, log: bool, floor: float | None = None
) -> None:
    """Keep the non-diverged runs readable: diverged runs leave through the top."""
    if rng is None or not sel_diverged:
        return
    top = max(rng[1], floor if floor is not None else rng[1])
    if log:
        ax.set_ylim(top=top * 3.0)
    else:
        span = top - rng[0]
        ax.set_ylim(top=top + (0.5 * span if span > 0 else abs(top) * 0.5 + 1.0))


def _empty_note(ax, x: np.ndarray, text: str) -> None:
    ax.text(
        0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="0.4", fontsize=9
    )
    if len(x):
        ax.set_xlim(float(x[0]), float(x[-1]) if x[-1] > x[0] else float(x[0]) + 1.0)


class _PlainLogFormatter(LogFormatter):
    """Labels the ticks :class:`LogFormatter` would label, as plain numbers (0.3, 2, 1e-05)."""

    def __call__(self, x, pos=None):
        return f"{x:.3g}" if super().__call__(x, pos) else ""


def _plain_log_ticks(ax, axis: str = "y") -> None:
    """Plain numbers on a log axis spanning few decades, instead of 3×10⁻¹."""
    ax_ = ax.yaxis if axis == "y" else ax.xaxis
    ax_.set_major_formatter(_PlainLogFormatter())
    ax_.set_minor_formatter(_PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(1.2, 0.5)))


def _line_handles(view: GroupView, lines: Split, with_band: bool) -> list[Any]:
    ph = view.phases()
    hs: list[Any] = [
        Line2D(
            [],
            [],
            color=lines.colors[k],
            lw=1.6,
            ls=_style(lines, k)[0],
            marker=_style(lines, k)[1],
            ms=3.5,
            label=lines.names[k] + _diverged_note(ph, lines.mask(k)),
        )
        for k in lines.order
    ]
    alive = ph != "diverged"
    counts = [int((lines.mask(k) & alive).sum()) for k in lines.order]
    if with_band and any(n > FEW_RUNS for n in counts):
        hs.append(Patch(color="0.5", alpha=0.25, label="range over seeds\n(line: median)"))
    if any(1 < n <= FEW_RUNS for n in counts):
        hs.append(
            Line2D(
                [], [], color="0.4", lw=0.9, label=f"each run drawn\n(≤ {FEW_RUNS} runs: no median)"
            )
        )
    if (ph == "diverged").any():
        hs.append(
            Line2D([], [], color="0.4", lw=0.9, ls=":", label="diverged run\n(each; not in median)")
        )
    return hs


# ------------------------------------------------------------------ figures
def _trace_panel(
    ax,
    view: GroupView,
    x: np.ndarray,
    Y: np.ndarray,
    sel: np.ndarray,
    lines: Split,
    *,
    log: bool,
    xlabel: str,
    ylabel: str,
    title: str,
    refs: tuple[float, ...] = (),
    marks: np.ndarray | None = None,
) -> None:
    """One panel of median traces; log axes, the long-run x axis and diverged runs handled."""
    ph = view.phases()
    rng, n_div = _draw_traces(ax, x, Y, sel, lines, ph, log=log, marks=marks)
    if rng is None:
        _empty_note(ax, x, "all runs diverged" if n_div else "no finite values")
    if log and (rng is not None or n_div):
        ax.set_yscale("log")
        lo, hi = rng if rng is not None else (math.nan, math.nan)
        if rng is not None and hi / lo < 300:
            _plain_log_ticks(ax)
    _clip_top(ax, rng, bool((sel & (ph == "diverged")).any()), log, max(refs) if refs else None)
    unit = "GD updates"
    if len(x) and x[-1] > 100:
        # early transients (the catapult spike) and late power laws are both visible
        ax.set_xscale("symlog", linthresh=1.0, linscale=0.3)
        ax.set_xlim(0, float(x[-1]) * 1.05)
        unit += ", symlog scale"
    ax.set_xlabel(f"{xlabel} [{unit}]")
    ax.set_ylabel(ylabel + (" (log scale)" if ax.get_yscale() == "log" else ""))
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)


def loss_curves(view: GroupView, name: str, several: bool) -> Figure | None:
    ds = view.ds
    if "loss" not in ds or "iteration" not in ds.dims:
        return None
    lines, panels = _splits(view, "rate")
    order, note = _panels_capped(panels)
    fig, axes = _figure(len(order))
    Y = np.asarray(ds["loss"].values, dtype=np.float64)
    x = np.asarray(ds["iteration"].values)
    log = bool((Y[np.isfinite(Y)] > 0).any())
    for ax, pk in zip(axes, order, strict=True):
        _trace_panel(
            ax,
            view,
            x,
            Y,
            panels.mask(pk),
            lines,
            log=log,
            xlabel="iteration t",
            ylabel="training loss",
            title=panels.names[pk],
            marks=np.asarray(ds["step"].values) if "step" in ds.dims else None,
        )
    several_seeds = any(lines.mask(k).sum() > 1 for k in lines.order)
    _legend(fig, _line_handles(view, lines, several_seeds), lines.title)
    _suptitle(fig, "training loss" + note, name, view, several)
    return fig


def _sharpness_scaled(view: GroupView, values: np.ndarray) -> np.ndarray:
    """Sharpness in plotting units: λ/λ₀ in critical units, λ otherwise."""
    if not view.critical:
        return values
    ds = view.ds
    lam0 = (
        np.asarray(ds["sharpness_init"].values)
        if "sharpness_init" in ds
        else np.asarray(ds["sharpness"].values)[:, 0]
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        return values / lam0.reshape((-1,) + (1,) * (values.ndim - 1))


def _threshold(view: GroupView, rate: float) -> float:
    """The stability threshold 2/η in the sharpness plotting units."""
    return (1.0 if view.critical else 2.0) / rate


def _numerators(view: GroupView) -> np.ndarray:
    """Each run's threshold numerator c (2 for GD, 2 + 2β for heavy ball, …; issue 18)."""
    ds = view.ds
    if "stability_numerator" in ds:
        return np.asarray(ds["stability_numerator"].values, dtype=np.float64)
    return np.full(view.n_runs, 2.0)


def _raw_thresholds(view: GroupView, sel: np.ndarray) -> list[tuple[float, float]]:
    """(rate, threshold c/η in plotting units) of the selected runs, distinct, by rate.

    In critical units (η in units of c/λ₀) every threshold is 1/η whatever c.
    Empty for adaptive optimizers: their threshold bounds the *preconditioned*
    sharpness, not the raw one this figure shows.
    """
    if "preconditioned_sharpness" in view.ds:
        return []
    c = _numerators(view)
    pairs = {
        (float(r), (1.0 if view.critical else float(k)) / float(r))
        for r, k in zip(view.rate[sel], c[sel], strict=True)
    }
    return sorted(pairs)


def _sharpness_label(view: GroupView) -> str:
    if view.critical:
        return r"sharpness $\lambda_t/\lambda_0$ (relative to init)"
    return r"sharpness $\lambda_t$ [Hessian top eigenvalue]"


def sharpness(view: GroupView, name: str, several: bool) -> Figure | None:
    ds = view.ds
    if "sharpness" not in ds or "step" not in ds.dims:
        return None
    lines, panels = _splits(view, "rate")
    order, note = _panels_capped(panels)
    fig, axes = _figure(len(order))
    Y = _sharpness_scaled(view, np.asarray(ds["sharpness"].values, dtype=np.float64))
    x = np.asarray(ds["step"].values)
    log = _positive(Y)
    rates_are_lines = lines.order and isinstance(lines.order[0], float)
    for ax, pk in zip(axes, order, strict=True):
        sel = panels.mask(pk)
        pairs = _raw_thresholds(view, sel)
        refs = tuple(v for _, v in pairs)
        for r, v in pairs:
            color = lines.colors[r] if rates_are_lines else "0.35"
            ax.axhline(v, color=color, ls="--", lw=1.0)
        _trace_panel(
            ax,
            view,
            x,
            Y,
            sel,
            lines,
            log=log,
            xlabel="eval step t",
            ylabel=_sharpness_label(view),
            title=panels.names[pk],
            refs=refs,
        )
    several_seeds = any(lines.mask(k).sum() > 1 for k in lines.order)
    hs = _line_handles(view, lines, several_seeds)
    momentum = bool((_numerators(view) != 2.0).any())
    opt = (view.info.get("train") or {}).get("optimizer", "gd")
    c_of = {"momentum": r"2+2\beta", "nesterov": r"(2+2\beta)/(1+2\beta)"}
    thr = (
        rf"stability threshold $c/\eta$, $c = {c_of.get(opt, 'c')}$"
        if momentum
        else r"stability threshold $2/\eta$"
    )
    if view.critical:
        thr += "\n" + r"($= 1/\eta$ in these units)"
    if "preconditioned_sharpness" not in ds:
        hs.append(Line2D([], [], color="0.35", ls="--", lw=1.0, label=thr))
    _legend(fig, hs, lines.title)
    edge = "c/η" if momentum else "2/η"
    _suptitle(fig, f"sharpness against the edge of stability {edge}" + note, name, view, several)
    return fig


def _run_markers(view: GroupView) -> Split:
    if view.facet_keys:
        s = _facet_split(view, view.facet_keys)
    else:
        s = _single(view)
    s.colors = {k: MARKERS[i % len(MARKERS)] for i, k in enumerate(s.order)}
    return s


def _scatter_runs(
    ax, view: GroupView, y: np.ndarray, markers: Split
) -> tuple[list[Any], list[Any]]:
    """Every run at (rate, y), coloured by phase; NaN runs as × on top.

    The marker tells conditions apart when there are several, else the phase.
    """
    ph = view.phases()
    x = view.rate
    top = blended_transform_factory(ax.transData, ax.transAxes)
    missing = False
    by_phase = len(markers.order) == 1
    for key in markers.order:
        mk = markers.mask(key)
        for p in (*PHASES, "unknown"):
            m = mk & (ph == p) & np.isfinite(y)
            if m.any():
                ax.scatter(
                    x[m],
                    y[m],
                    color=PHASE_COLORS.get(p, "0.6"),
                    marker=PHASE_MARKERS.get(p, "o") if by_phase else markers.colors[key],
                    s=28,
                    alpha=0.85,
                    edgecolors="white",
                    linewidths=0.4,
                    zorder=3,
                )
        m = mk & ~np.isfinite(y)
        if m.any():
            missing = True
            ax.scatter(
                x[m],
                np.full(int(m.sum()), 0.97),
                transform=top,
                marker="x",
                color=PHASE_COLORS["diverged"],
                s=24,
                zorder=3,
                clip_on=False,
            )
    hs: list[Any] = [
        Line2D(
            [],
            [],
            ls="",
            marker=PHASE_MARKERS[p] if by_phase else "o",
            color=PHASE_COLORS[p],
            label=p,
        )
        for p in PHASES
        if (ph == p).any()
    ]
    if missing:
        hs.append(
            Line2D(
                [],
                [],
                ls="",
                marker="x",
                color=PHASE_COLORS["diverged"],
                label="no final value\n(diverged), at top",
            )
        )
    mhs: list[Any] = []
    if len(markers.order) > 1:
        mhs = [
            Line2D([], [], ls="", marker=markers.colors[k], color="0.45", label=markers.names[k])
            for k in markers.order
        ]
    return hs, mhs


def _rate_xaxis(ax, view: GroupView) -> None:
    """Learning-rate x axis: log when the rates span a factor > 4, every rate inside."""
    r = view.rate[np.isfinite(view.rate)]
    if _logspan(r):
        ax.set_xscale("log")
        ax.set_xlim(r.min() / 1.25, r.max() * 1.25)
        if r.max() / r.min() < 300:
            _plain_log_ticks(ax, "x")
    elif r.size:
        pad = 0.08 * (r.max() - r.min()) or 0.1 * abs(r.max()) or 1.0
        ax.set_xlim(r.min() - pad, r.max() + pad)
    ax.set_xlabel(view.rate_label + (" (log scale)" if ax.get_xscale() == "log" else ""))


def _top_room(ax, y: np.ndarray) -> None:
    """Free the top 15% of the axes for the × of runs without a final value."""
    if np.isfinite(y).all() or not np.isfinite(y).any():
        return
    ax.autoscale_view()
    lo, hi = ax.get_ylim()
    if ax.get_yscale() == "log":
        ax.set_ylim(lo, hi * (hi / lo) ** 0.18)
    else:
        ax.set_ylim(lo, hi + 0.18 * (hi - lo))


def _critical_line(ax, view: GroupView) -> list[Any]:
    if not view.critical:
        return []
    ax.axvline(1.0, color="0.55", ls=":", lw=1.0)
    return [Line2D([], [], color="0.55", ls=":", label=r"$\eta = 2/\lambda_0$ (critical)")]


def final_sharpness_vs_lr(view: GroupView, name: str, several: bool) -> Figure | None:
    ds = view.ds
    if "final_sharpness" not in ds:
        return None
    y = _sharpness_scaled(view, np.asarray(ds["final_sharpness"].values, dtype=np.float64))
    fig, (ax,) = _figure(1, size=(5.6, 4.0), legend_w=2.4)
    hs, mhs = _scatter_runs(ax, view, y, _run_markers(view))
    hs += mhs
    x = view.rate[np.isfinite(view.rate) & (view.rate > 0)]
    if x.size:
        xs = np.geomspace(x.min() / 1.3, x.max() * 1.3, 200)
        ax.plot(xs, _threshold(view, 1.0) / xs, color="k", ls="--", lw=1.2)
        hs.append(Line2D([], [], color="k", ls="--", label=r"$2/\eta$ (stability threshold)"))
    if view.critical:
        ax.axhline(1.0, color="0.6", ls="-.", lw=1.0)
        hs.append(Line2D([], [], color="0.6", ls="-.", label=r"initial sharpness $\lambda_0$"))
    elif "sharpness_init" in ds:
        s0 = np.asarray(ds["sharpness_init"].values, dtype=np.float64)
        ax.scatter(view.rate, s0, facecolors="none", edgecolors="0.6", s=22, zorder=2)
        hs.append(
            Line2D(
                [],
                [],
                ls="",
                marker="o",
                mfc="none",
                color="0.6",
                label=r"initial sharpness $\lambda_0$",
            )
        )
    hs += _critical_line(ax, view)
    _rate_xaxis(ax, view)
    if _positive(y):
        ax.set_yscale("log")
        _plain_log_ticks(ax)
    _top_room(ax, y)
    log_note = " (log scale)" if ax.get_yscale() == "log" else ""
    ax.set_ylabel("final " + _sharpness_label(view) + log_note)
    ax.grid(alpha=0.3, which="both")
    _legend(fig, hs, "phase")
    _suptitle(fig, "final sharpness vs learning rate", name, view, several)
    return fig


def draw_phase_grid(
    ax: Any,
    M: np.ndarray,
    marks: Sequence[tuple[float, float, str]],
    S: int,
    xticks: list[str],
    yticks: list[str],
) -> None:
    """A phase diagram's cells: ``M`` ``(ny, nx·S)`` holds the phase index of each
    run's stripe (S stripes a cell, NaN = no run), ``marks`` each stripe's centre and
    phase (its marker, so the labels survive grey-scale printing); cell borders and
    category ticks."""
    ny, nx = M.shape[0], M.shape[1] // S
    cmap = ListedColormap([PHASE_COLORS[p] for p in PHASES]).with_extremes(bad="#eeeeee")
    ax.imshow(
        np.ma.masked_invalid(M),
        cmap=cmap,
        vmin=-0.5,
        vmax=len(PHASES) - 0.5,
        aspect="auto",
        origin="lower",
        extent=(-0.5, nx - 0.5, -0.5, ny - 0.5),
        interpolation="nearest",
    )
    for px, py, p in marks:
        ax.scatter(
            px, py, marker=PHASE_MARKERS[p], color="white", s=min(40.0, 240.0 / S),
            linewidths=0, zorder=3,
        )  # fmt: skip
    if S > 1:
        for b in np.arange(nx * S + 1) / S - 0.5:
            ax.axvline(b, color="white", lw=0.6, alpha=0.8)
    for b in np.arange(nx + 1) - 0.5:
        ax.axvline(b, color="white", lw=2.5)
    for b in np.arange(ny + 1) - 0.5:
        ax.axhline(b, color="white", lw=2.5)
    ax.set_xticks(range(nx), xticks, fontsize=8, rotation=45 if nx > 8 else 0)
    ax.set_yticks(range(ny), yticks, fontsize=8)


def phase_diagram(view: GroupView, name: str, several: bool) -> Figure | None:
    ds = view.ds
    if "phase" not in ds:
        return None
    ph = view.phases()
    if INIT_KEY in view.facet_keys:
        ykey, ylabel = INIT_KEY, r"init scale $\omega$ (model.init_scale)"
    else:
        ykey, ylabel = "seed", "seed"
    yv = view.coord(ykey) if ykey in ds.coords else np.zeros(view.n_runs, dtype=np.int64)
    others = [k for k in view.facet_keys if k != ykey]
    panels = _facet_split(view, others) if others else _single(view)
    order, note = _panels_capped(panels)
    xs = sorted({float(r) for r in view.rate})
    ys = sorted(set(yv.tolist()), key=lambda v: (str(type(v)), v))
    nx, ny = len(xs), len(ys)
    w = min(max(0.75 * nx + 1.6, 4.0), 10.0)
    h = min(max(0.5 * ny + 1.4, 2.8), 8.0)
    fig, axes = _figure(len(order), ncols_max=3, size=(w, h), legend_w=2.0)
    seeds = view.coord("seed") if "seed" in ds.coords else np.zeros(view.n_runs)
    stripes = 1
    empty = False
    for ax, pk in zip(axes, order, strict=True):
        sel = panels.mask(pk)
        cells: dict[tuple[int, int], list[int]] = {}
        for i in np.flatnonzero(sel):
            cells.setdefault((xs.index(float(view.rate[i])), ys.index(yv[i])), []).append(int(i))
        S = max(len(v) for v in cells.values())
        stripes = max(stripes, S)
        M = np.full((ny, nx * S), np.nan)
        for (ix, iy), idx in cells.items():
            idx.sort(key=lambda i: (seeds[i], i))
            for j, r in enumerate(idx):
                if ph[r] in PHASES:
                    M[iy, ix * S + j] = PHASES.index(ph[r])
        empty |= len(cells) < nx * ny
        marks = [
            (ix - 0.5 + (j + 0.5) / S, iy, ph[r])
            for (ix, iy), idx in cells.items()
            for j, r in enumerate(idx)
            if ph[r] in PHASES
        ]
        draw_phase_grid(ax, M, marks, S, [fmt(v, 3) for v in xs], [fmt(v, 3) for v in ys])
        ax.set_xlabel(view.rate_label)
        ax.set_ylabel(ylabel)
        ax.set_title(panels.names[pk], fontsize=9)
        if view.critical and nx > 1 and xs[0] < 1.0 < xs[-1]:
            # the nominal critical rate 2/λ₀: through the cell of rate 1 if it was run,
            # else on the border between the rates around it (cells are categorical)
            k = int(np.searchsorted(xs, 1.0))
            ax.axvline(k if xs[k] == 1.0 else k - 0.5, color="k", ls="--", lw=1.4)
    hs: list[Any] = [
        Line2D(
            [],
            [],
            ls="",
            marker=PHASE_MARKERS[p],
            markersize=8,
            color=PHASE_COLORS[p],
            label=p,
        )
        for p in PHASES
    ]
    if empty:
        hs.append(Patch(color="#eeeeee", label="no run"))
    if view.critical:
        hs.append(Line2D([], [], color="k", ls="--", label=r"$\eta = 2/\lambda_0$"))
    what = "phase diagram"
    if stripes > 1:
        what += f" (each cell: {stripes} runs side by side, by seed)"
    _legend(fig, hs, "phase")
    _suptitle(fig, what + note, name, view, several)
    return fig


def _layer_vars(ds, prefix: str) -> list[str]:
    found = []
    for v in ds.data_vars:
        if str(v).startswith(prefix) and ds[v].dims == ("run", "step"):
            tail = str(v)[len(prefix) :]
            if tail.isdigit():
                found.append((int(tail), str(v)))
    return [v for _, v in sorted(found)]


def _informative_rank(ds, var: str) -> bool:
    """False for a vector layer (stable rank identically 1)."""
    layer = var.rsplit("_", 1)[-1]
    for wname in (f"final_{layer}", f"init_{layer}"):
        if wname in ds and ds[wname].ndim == 3:
            return min(ds[wname].shape[1:]) > 1
    a = np.asarray(ds[var].values, dtype=np.float64)
    a = a[np.isfinite(a)]
    return a.size > 0 and not np.allclose(a, 1.0, atol=1e-6)


def stable_rank(view: GroupView, name: str, several: bool) -> Figure | None:
    ds = view.ds
    layers = [v for v in _layer_vars(ds, "stable_rank_W") if _informative_rank(ds, v)]
    if not layers:
        return None
    lines, panels = _splits(view, "init")
    porder, note = _panels_capped(panels)
    items = [(v, pk) for v in layers for pk in porder][:MAX_PANELS]
    fig, axes = _figure(len(items), ncols_max=min(4, max(len(porder), 1)))
    x = np.asarray(ds["step"].values)
    for ax, (var, pk) in zip(axes, items, strict=True):
        Y = np.asarray(ds[var].values, dtype=np.float64)
        layer = var.rsplit("_", 1)[-1]
        lw = layer.replace("W", "W_{") + "}"
        _trace_panel(
            ax,
            view,
            x,
            Y,
            panels.mask(pk),
            lines,
            log=False,
            xlabel="eval step t",
            ylabel=rf"stable rank ${{\|{lw}\|_F^2/\|{lw}\|_2^2}}$",
            title=", ".join(s for s in (layer, panels.names[pk]) if s),
        )
        ax.set_ylim(bottom=0)
    several_seeds = any(lines.mask(k).sum() > 1 for k in lines.order)
    _legend(fig, _line_handles(view, lines, several_seeds), lines.title)
    _suptitle(fig, "stable rank of the weights over training" + note, name, view, several)
    return fig


def margins(view: GroupView, name: str, several: bool) -> Figure | None:
    ds = view.ds
    traces = [
        (v, label, log)
        for v, label, log in (
            ("normalized_margin", r"normalized margin $\min_i y_i f(x_i)/\|\theta\|^L$", False),
            ("kkt_stationarity", "KKT stationarity residual\n(relative, log scale)", True),
        )
        if v in ds and ds[v].dims == ("run", "step")
    ]
    finals = [
        (v, label)
        for v, label in (
            ("svm_cosine", "cosine to the hard-margin SVM direction"),
            ("margin_ratio", "geometric margin / SVM margin"),
        )
        if v in ds and np.isfinite(np.asarray(ds[v].values, dtype=np.float64)).any()
    ]
    if not traces and not finals:
        return None
    lines, panels = _splits(view, "rate")
    porder, note = _panels_capped(panels)
    items: list[tuple[str, Any]] = [("trace", (t, pk)) for t in traces for pk in porder]
    items += [("final", f) for f in finals]
    items = items[:MAX_PANELS]
    fig, axes = _figure(len(items), ncols_max=3)
    x = np.asarray(ds["step"].values)
    hs: list[Any] = []
    markers = _run_markers(view)
    for ax, (kind, spec) in zip(axes, items, strict=True):
        if kind == "trace":
            (var, label, log), pk = spec
            Y = np.asarray(ds[var].values, dtype=np.float64)
            log = log and bool((Y[np.isfinite(Y)] > 0).any())
            if not log:
                ax.axhline(0.0, color="0.6", lw=0.8)
            _trace_panel(
                ax,
                view,
                x,
                Y,
                panels.mask(pk),
                lines,
                log=log,
                xlabel="eval step t",
                ylabel=label,
                title=panels.names[pk],
            )
        else:
            var, label = spec
            y = np.asarray(ds[var].values, dtype=np.float64)
            got, got_m = _scatter_runs(ax, view, y, markers)
            hs += [h for h in got + got_m if h.get_label() not in {g.get_label() for g in hs}]
            ax.axhline(1.0, color="k", ls="--", lw=1.0)
            _rate_xaxis(ax, view)
            _top_room(ax, y)
            ax.set_ylabel("final " + label)
            ax.set_title(f"{var} (1 = SVM)", fontsize=9)
            ax.grid(alpha=0.3)
    if traces:
        several_seeds = any(lines.mask(k).sum() > 1 for k in lines.order)
        hs = _line_handles(view, lines, several_seeds) + hs
    _legend(fig, hs, lines.title if traces else "phase")
    _suptitle(fig, "margins" + note, name, view, several)
    return fig


def accuracy_vs_lr(view: GroupView, name: str, several: bool) -> Figure | None:
    ds = view.ds
    if "final_test_acc" in ds:
        acc = np.asarray(ds["final_test_acc"].values, dtype=np.float64)
    elif "test_acc" in ds and ds["test_acc"].dims == ("run", "step"):
        acc = np.asarray(ds["test_acc"].values, dtype=np.float64)[:, -1]
    else:
        return None
    if not np.isfinite(acc).any() and "phase" not in ds:
        return None
    fig, (ax,) = _figure(1, size=(5.6, 4.0), legend_w=2.4)
    markers = _run_markers(view)
    hs, _ = _scatter_runs(ax, view, acc, markers)
    conds = _facet_split(view, view.facet_keys, cmap="tab10") if view.facet_keys else _single(view)
    colors = ["k"] if len(conds.order) == 1 else [f"C{i % 10}" for i in range(len(conds.order))]
    rates = sorted({float(r) for r in view.rate})
    for key, color in zip(conds.order, colors, strict=False):
        med, lo, hi, xr = [], [], [], []
        for r in rates:
            m = conds.mask(key) & (view.rate == r)
            a = acc[m]
            a = a[np.isfinite(a)]
            if a.size:
                xr.append(r)
                med.append(np.median(a))
                lo.append(np.median(a) - a.min())
                hi.append(a.max() - np.median(a))
        if xr:
            ax.errorbar(
                xr,
                med,
                yerr=[lo, hi],
                color=color,
                lw=1.3,
                capsize=3,
                zorder=2,
                marker=markers.colors[key],
                mfc="none",
                ms=7,
            )
            label = "median, range over seeds"
            if len(conds.order) > 1:
                label = conds.names[key] + "\n(median, range)"
            hs.append(
                Line2D([], [], color=color, marker=markers.colors[key], mfc="none", label=label)
            )
    hs += _critical_line(ax, view)
    _rate_xaxis(ax, view)
    _top_room(ax, acc)
    ax.set_ylabel("final test accuracy [fraction correct]")
    ax.grid(alpha=0.3, which="both")
    _legend(fig, hs, "phase / condition")
    _suptitle(fig, "test accuracy vs learning rate", name, view, several)
    return fig


#: figure name → function of (view, name, several) returning a Figure or None
FIGURES = {
    "loss_curves": loss_curves,
    "sharpness": sharpness,
    "final_sharpness_vs_lr": final_sharpness_vs_lr,
    "phase_diagram": phase_diagram,
    "stable_rank": stable_rank,
    "margins": margins,
    "test_acc_vs_lr": accuracy_vs_lr,
}


def write_all(
    tree,
    out: str | Path,
    views: list[GroupView] | None = None,
    names: tuple[str, ...] | None = None,
) -> list[Path]:
    """Write every figure that the data allows into ``out``; return the PNG paths.

    With one group the files are ``<figure>.png``; with several,
    ``<figure>_group_000.png`` and so on. ``names`` limits the figures to those
    of :data:`FIGURES` (all by default).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    views = group_views(tree) if views is None else views
    name = str(_root_config(tree).get("name", "results"))
    several = len(views) > 1
    paths = []
    for view in views:
        for fig_name, fn in FIGURES.items():
            if names is not None and fig_name not in names:
                continue
            fig = fn(view, name, several)
            if fig is None:
                continue
            suffix = f"_{view.name}" if several else ""
            paths.append(_save(fig, out / f"{fig_name}{suffix}.png"))
    return paths
