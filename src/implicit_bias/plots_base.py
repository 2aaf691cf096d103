"""The drawing kit of the report's figures (:mod:`.plots`, :mod:`.plots_runs`):
phase colours and markers, how runs split into lines and panels, and the
figure, legend and save helpers (Agg canvases; pyplot is never imported).
"""

from __future__ import annotations

import math
import textwrap
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import LogFormatter

from .views import GroupView, fmt

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
