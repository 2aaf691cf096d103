"""Summaries, tables and figures of a results folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _groups(tree):
    return [(name, node.to_dataset()) for name, node in tree.children.items()]


def summary_table(tree) -> str:
    """Phase counts per learning rate, one table per group (plain text)."""
    lines = []
    for name, ds in _groups(tree):
        lines.append(f"{name}: {ds.sizes['run']} runs")
        key = "train.lr" if "train.lr" in ds.coords else "lr"
        vals = ds[key].values
        header = f"  {key:>10} " + " ".join(f"{p:>9}" for p in ("lazy", "catapult", "diverged")) + "  final_loss(median)"
        lines.append(header)
        for v in np.unique(vals):
            sel = vals == v
            ph = ds["phase"].values[sel]
            fl = ds["final_loss"].values[sel]
            med = np.nanmedian(fl) if np.isfinite(fl).any() else float("nan")
            counts = " ".join(f"{int((ph == p).sum()):>9d}" for p in ("lazy", "catapult", "diverged"))
            lines.append(f"  {float(v):>10.4g} {counts}  {med:.4g}")
    return "\n".join(lines)


def write_report(path: str | Path) -> list[Path]:
    """Figures and tables for a results folder; returns the files written."""
    from . import plots
    from .store import open_results

    tree = open_results(path)
    return plots.write_all(tree, Path(path) / "report")
