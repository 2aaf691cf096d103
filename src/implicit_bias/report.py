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
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .tables import runs_table
from .views import (  # the group views are shared with plots (no report <-> plots import)
    PHASES,
    GroupView,
    _root_config,
    _sort_key,
    fmt,
    group_views,
)


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
    note = missing_runs_note(tree)
    if note:
        lines.append(f"note: {note}")
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
def run_table(tree_or_df) -> tuple[list[str], list[list[Any]]]:
    """Header and rows of :func:`implicit_bias.tables.runs_table` (one row per run).

    ``tree_or_df`` is a results tree or the runs table made from it already.

    ``lr`` is the absolute rate η, ``lr_critical`` is η·λ₀/2 (1 = the critical
    rate 2/λ₀ at initialisation), left out when it repeats a swept ``train.lr``.
    """
    df = tree_or_df if hasattr(tree_or_df, "itertuples") else runs_table(tree_or_df)
    header = [str(c) for c in df.columns]
    rows = [[_py(v) for v in r] for r in df.itertuples(index=False, name=None)]
    return header, rows


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


def csv_text(header: list[str], rows: list[list[Any]]) -> str:
    """The rows as CSV text (see :func:`_csv_cell` for the numbers)."""
    import io

    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(header)
    for r in rows:
        w.writerow([_csv_cell(v) for v in r])
    return buf.getvalue()


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> Path:
    """Write the rows to ``path`` whole or not at all (a link there is replaced, not followed)."""
    from .store import atomic_write_bytes

    atomic_write_bytes(Path(path), csv_text(header, rows).encode("utf-8", "surrogateescape"))
    return Path(path)


def missing_runs_note(tree) -> str | None:
    """A sentence naming the planned runs a partial folder lacks (None when complete or unknown)."""
    planned, have = tree.attrs.get("n_runs_planned"), tree.attrs.get("n_runs")
    if planned is None or have is None or int(have) >= int(planned):
        return None
    return (
        f"{int(planned) - int(have)} of the {int(planned)} planned runs are missing (the run "
        "was interrupted, failed, or is still going): run the same command again to finish it"
    )


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        return "" if v is None else fmt(v).replace("|", r"\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def summary_markdown(
    tree, views: list[GroupView], figures: list[Path], path: Path | None = None, table=None
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
    note = missing_runs_note(tree)
    if note:
        out += [f"**Incomplete:** {note}.", ""]
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
        "`lr` is the absolute rate η; `lr_critical` = η·λ₀/2 (1 = the critical rate 2/λ₀; "
        "left out, like `critical_ratio`, where it repeats a swept `train.lr` in critical units); "
        "`divergence_step` is −1 for runs that did not diverge; final values of diverged "
        "runs are NaN.",
        "",
        markdown_table(*run_table(tree if table is None else table)),
        "",
    ]
    return "\n".join(out)


# ------------------------------------------------------------------ report
#: figures drawn per group of runs (traces share array shapes); the per-run
#: figures are drawn over all groups at once by :mod:`implicit_bias.plots_runs`
PER_GROUP_FIGURES = ("loss_curves", "sharpness", "stable_rank", "margins")


def _critical_units(tree) -> bool:
    train = _root_config(tree).get("train") or {}
    return train.get("lr_units") == "critical"


def write_report(
    path: str | Path,
    tree=None,
    *,
    x: str | None = None,
    y: str | None = None,
    facet: list[str] | None = None,
) -> list[Path]:
    """Figures and tables for a results folder, in ``<path>/report/``; returns the files written.

    ``tree`` is the folder's results when the caller has them open already
    (:func:`implicit_bias.run` returns them); otherwise they are read from ``path``.
    ``x``, ``y`` and ``facet`` choose the keys of the figures over all runs
    (phase diagram, final values against x; see :mod:`implicit_bias.plots_runs`);
    by default the learning rate, then ``model.init_scale`` or another swept key.

    Raises:
        UserInputError: ``path`` is not a results folder, or ``x``/``y``/``facet``
            is not a swept key of its runs.
    """
    path = Path(path)
    if not (path / "config.yaml").is_file() and not (path / ".implicit-bias").is_file():
        # checked before the heavy imports so that a wrong path fails at once (a folder
        # of ours that lost its config.yaml is told so by open_results)
        from ._errors import UserInputError

        raise UserInputError(f"not a results folder (no config.yaml): {path}")
    from . import plots_runs
    from .store import check_no_links, open_results

    check_no_links(path)
    if tree is None:
        tree = open_results(path)
    table = runs_table(tree)
    # a bad --x/--y/--facet is refused before anything is written
    axes = plots_runs.choose_axes(table, x, y, facet, critical=_critical_units(tree))
    try:
        return _write_report_files(tree, path, table, axes)
    except OSError as err:
        from ._errors import UserInputError, disk_full, is_disk_full

        if is_disk_full(err):
            raise disk_full(err, path / "report") from None
        raise UserInputError(
            f"cannot write the report in {path / 'report'}: "
            f"{err.strerror or type(err).__name__} ({err.filename or path})"
        ) from None


def _write_report_files(tree, path: Path, table, axes) -> list[Path]:
    """Write the report: figures drawn into a temporary folder inside ``report/`` and
    moved into place, tables written whole (``os.replace``: a link planted at a
    report file's name is replaced, never written through), then the manifest of
    the files written (what ``--overwrite`` may remove)."""
    import shutil

    from . import plots, plots_flow, plots_runs
    from ._atomic import tmp_tag
    from ._errors import UserInputError
    from .store import REPORT_MANIFEST, _atomic_write_text, report_manifest

    out = path / "report"
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise UserInputError(
            f"{out} is not a folder (a file or a link); move it away to write the report"
        )
    out.mkdir(exist_ok=True)
    old = report_manifest(out)
    views = group_views(tree)
    scratch = out / f".figures.{tmp_tag()}.tmp"
    scratch.mkdir()
    try:
        with warnings.catch_warnings():
            # the figures are best-effort; numerical noise must not fail a report
            warnings.simplefilter("ignore", RuntimeWarning)
            drawn = plots.write_all(tree, scratch, views=views, names=PER_GROUP_FIGURES)
            drawn += plots_runs.write_all(
                table, axes, scratch, _root_config(tree).get("name", "results")
            )
            # GD against its central flow, for groups run with train.flow: central
            drawn += plots_flow.write_all(
                views, scratch, str(_root_config(tree).get("name", "results"))
            )
        figures = []
        for f in drawn:
            final = out / f.name
            if final.is_dir() and not final.is_symlink():
                raise UserInputError(f"{final} is a folder; move it away to write the report")
            os.replace(f, final)
            figures.append(final)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    header, rows = run_table(table)
    csv_path = write_csv(out / "summary.csv", header, rows)
    md_path = out / "summary.md"
    _atomic_write_text(md_path, summary_markdown(tree, views, figures, path, table))
    written = [*figures, md_path, csv_path]
    names = [p.name for p in written]
    for name in old:  # figures of an earlier report that this one does not draw
        stale = out / name
        if name not in names and (stale.is_symlink() or stale.is_file()):
            stale.unlink()
    _atomic_write_text(out / REPORT_MANIFEST, json.dumps(names, indent=1) + "\n")
    return written
