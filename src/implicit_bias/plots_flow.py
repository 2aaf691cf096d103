"""Figures of GD against its central flow and gradient flow (``train.flow: central``).

Cohen, Damian, Talwalkar, Kolter & Lee 2024 (arXiv 2410.24206) compare GD's
time-averaged loss with the central flow's predicted loss L(w_CF) + tr Σ/η and
the sharpness of both with 2/η. :func:`draw_flow_run` draws one run's two
panels; :func:`write_all` draws one figure per group of runs that carries the
``cf_*`` variables (the first run at each learning rate, a row each), for
``report``. Like :mod:`implicit_bias.plots`, every figure has its own Agg canvas.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .smoothing import centred_average

#: GD's time average in the report's figure: centred over 2·HALF iterations
HALF = 20
#: at most this many rates (rows) per figure
MAX_ROWS = 6
#: the variables a flow figure needs
NEEDS = ("cf_predicted_loss", "cf_loss", "gf_loss", "cf_sharpness", "gf_sharpness")


def has_flows(ds: Any) -> bool:
    """The group's runs carry the central-flow variables."""
    return all(v in ds for v in NEEDS)


def draw_flow_run(ax_loss: Any, ax_sharp: Any, ds: Any, i: int, half: int = HALF) -> None:
    """Run ``i`` of ``ds``: losses against the step (left), sharpness with 2/η (right).

    Left: GD's loss per iteration (thin), its centred average over 2·``half``
    iterations, the central flow's predicted loss L + tr Σ/η, its loss L(w_CF)
    (dotted) and the gradient flow's loss, log scale. Right: the sharpness of
    GD, the central flow and the gradient flow at the eval steps, and 2/η
    (the run's base rate η). A dotted vertical line marks ``cf_edge_step``.
    """
    loss = np.asarray(ds["loss"].values[i], dtype=float)
    steps = np.asarray(ds["step"].values)
    avg = centred_average(loss, half)

    def tr(v: str) -> np.ndarray:
        return np.asarray(ds[v].values[i], dtype=float)

    it = np.arange(loss.size)
    ax_loss.plot(it, loss, color="0.7", lw=0.6, label="GD loss")
    ax_loss.plot(it, avg, color="k", lw=1.2, label=f"GD, centred {2 * half}-step average")
    ax_loss.plot(steps, tr("cf_predicted_loss"), color="C3", lw=1.4, label="CF: L + tr Σ/η")
    ax_loss.plot(steps, tr("cf_loss"), color="C3", lw=1.0, ls=":", label="CF: L(w_CF)")
    ax_loss.plot(steps, tr("gf_loss"), color="C0", lw=1.2, ls="--", label="gradient flow")
    if np.all(loss[np.isfinite(loss)] > 0):
        ax_loss.set_yscale("log")
    ax_loss.set(xlabel="step", ylabel="training loss")
    ax_loss.legend(fontsize=6)

    eta = float(np.asarray(ds["lr"].values, dtype=float)[i])
    if "sharpness" in ds:
        ax_sharp.plot(steps, tr("sharpness"), color="k", lw=1.0, label="GD")
    ax_sharp.plot(steps, tr("cf_sharpness"), color="C3", lw=1.4, label="central flow")
    ax_sharp.plot(steps, tr("gf_sharpness"), color="C0", lw=1.2, ls="--", label="gradient flow")
    ax_sharp.axhline(2 / eta, color="0.5", lw=0.9, ls="--", label=f"2/η (η = {eta:.3g})")
    ax_sharp.set(xlabel="step", ylabel="sharpness (top Hessian eigenvalue)")
    if "cf_edge_step" in ds:
        edge = float(np.asarray(ds["cf_edge_step"].values, dtype=float)[i])
        if edge >= 0:
            for a in (ax_loss, ax_sharp):
                a.axvline(edge, color="C3", lw=0.7, ls=":")
    ax_sharp.legend(fontsize=6)


def flow_figure(ds: Any, title: str, half: int = HALF) -> Figure | None:
    """One group's figure: a row per learning rate (its first run), or None without flows."""
    if not has_flows(ds) or ds.sizes.get("run", 0) == 0:
        return None
    eta = np.asarray(ds["lr"].values, dtype=float)
    firsts: dict[float, int] = {}
    for i, e in enumerate(eta):
        firsts.setdefault(float(e), i)
    rows = sorted(firsts.items())[:MAX_ROWS]
    fig = Figure(figsize=(9.0, 3.2 * len(rows) + 0.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), 2, squeeze=False)
    for (e, i), (a, b) in zip(rows, axes, strict=True):
        draw_flow_run(a, b, ds, i, half)
        a.set_title(f"η = {e:.3g} (run {i})", fontsize=8)
    fig.suptitle(title, fontsize=9, x=0.01, ha="left")
    return fig


def write_all(views: list[Any], out: Path, name: str) -> list[Path]:
    """``central_flow.png`` (``central_flow_<group>.png`` with several groups) per group of
    runs that carries the flows; nothing for the others."""
    out = Path(out)
    several = len(views) > 1
    paths = []
    for view in views:
        what = f"{name}: GD against its central flow (CF) and gradient flow" + (
            f" ({view.name})" if several else ""
        )
        fig = flow_figure(view.ds, what)
        if fig is None:
            continue
        path = out / (f"central_flow_{view.name}.png" if several else "central_flow.png")
        fig.savefig(path, dpi=100)
        fig.clear()
        paths.append(path)
    return paths
