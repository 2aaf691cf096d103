"""The papers' own figures, drawn from a reproduction's stored experiments.

A paper module declares its figures as functions ``(results, folder) -> [png]``
(``results``: ``{experiment: Dataset}``, as the claims read them) and lists them
in ``Paper.figures``; ``reproduce`` draws them into ``<out>/<paper>/figures/``.
Each figure shows one data draw (the first) and every init seed of it, so a
line is a run, never a median of runs that disagree. Like :mod:`..plots`, every
figure has its own Agg canvas (pyplot is never imported).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

#: a paper figure: ``(results, folder) -> files written``
FigureFn = Callable[[Mapping[str, Any], Path], list[Path]]


def first_draw(ds: Any) -> Any:
    """The runs of the first data draw (all runs when ``data.seed`` is not swept)."""
    if "data.seed" not in ds.coords:
        return ds
    seeds = np.asarray(ds["data.seed"].values)
    return ds.isel(run=np.flatnonzero(seeds == seeds.min()))


def figure(ncols: int = 1, nrows: int = 1) -> tuple[Figure, Any]:
    fig = Figure(figsize=(4.2 * ncols, 3.4 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def colors(n: int, cmap: str = "viridis") -> list[Any]:
    cm = colormaps[cmap]
    return [cm(x) for x in np.linspace(0.05, 0.85, max(n, 1))]


def runs_at(ds: Any, key: str, value: float) -> np.ndarray:
    """Indices of the runs whose coordinate ``key`` equals ``value``."""
    return np.flatnonzero(np.isclose(np.asarray(ds[key].values, dtype=float), value))


def nearest(values: Iterable[float], target: float) -> float:
    vals = np.asarray(sorted(set(values)), dtype=float)
    return float(vals[np.argmin(np.abs(vals - target))])


def loss_and_curvature(
    ax_loss: Any,
    ax_curv: Any,
    ds: Any,
    runs: np.ndarray,
    label: str,
    color: Any,
    style: str = "-",
) -> None:
    """Loss / L₀ against the iteration and λη/2 against the eval step, one line per run."""
    loss = np.asarray(ds["loss"].values, dtype=float)
    steps = np.asarray(ds["step"].values)
    sharp = np.asarray(ds["sharpness"].values, dtype=float) if "sharpness" in ds else None
    eta = np.asarray(ds["lr"].values, dtype=float)
    for k, i in enumerate(runs):
        lab = label if k == 0 else None
        ax_loss.plot(loss[i] / loss[i, 0], style, color=color, lw=1.2, label=lab)
        if sharp is not None:
            ax_curv.plot(steps, sharp[i] * eta[i] / 2, style, color=color, lw=1.2, label=lab)
    ax_loss.axhline(1.0, color="0.6", lw=0.8, ls=":")
    ax_curv.axhline(1.0, color="0.6", lw=0.8, ls=":")
    ax_loss.set(xlabel="iteration", ylabel="loss / L₀ (log scale)", yscale="log")
    ax_curv.set(xlabel="step", ylabel="sharpness · η / 2 (1 = the edge 2/η)")


def draw(figures: Iterable[FigureFn], results: Mapping[str, Any], folder: Path) -> list[Path]:
    """Every figure whose experiments are in ``results``, into ``folder``."""
    out: list[Path] = []
    for fn in figures:
        out += fn(results, folder)
    return out
