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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.transforms import blended_transform_factory

from .plots_base import (
    INIT_KEY,
    MARKERS,
    MAX_PANELS,
    PHASE_COLORS,
    PHASE_MARKERS,
    Split,
    _clip_top,
    _draw_traces,
    _empty_note,
    _facet_split,
    _figure,
    _legend,
    _line_handles,
    _logspan,
    _panels_capped,
    _plain_log_ticks,
    _positive,
    _save,
    _single,
    _splits,
    _suptitle,
)
from .views import PHASES, GroupView, _root_config, fmt, group_views


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
