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

from .views import (  # the group views are shared with plots (no report <-> plots import)
    PHASES,
    REPLICATE_KEYS,
    GroupView,
    _root_config,
    _sort_key,
    fmt,
    group_views,
)

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
    if not (path / "config.yaml").is_file() and not (path / ".implicit-bias").is_file():
        # checked before the heavy imports so that a wrong path fails at once (a folder
        # of ours that lost its config.yaml is told so by open_results)
        from ._errors import UserInputError

        raise UserInputError(f"not a results folder (no config.yaml): {path}")
    from .store import check_no_links, open_results

    check_no_links(path)
    if tree is None:
        tree = open_results(path)
    try:
        return _write_report_files(tree, path)
    except OSError as err:
        from ._errors import UserInputError, disk_full, is_disk_full

        if is_disk_full(err):
            raise disk_full(err, path / "report") from None
        raise UserInputError(
            f"cannot write the report in {path / 'report'}: "
            f"{err.strerror or type(err).__name__} ({err.filename or path})"
        ) from None


def _write_report_files(tree, path: Path) -> list[Path]:
    """Write the report: figures drawn into a temporary folder inside ``report/`` and
    moved into place, tables written whole (``os.replace``: a link planted at a
    report file's name is replaced, never written through), then the manifest of
    the files written (what ``--overwrite`` may remove)."""
    import shutil

    from . import plots
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
            drawn = plots.write_all(tree, scratch, views=views)
        figures = []
        for f in drawn:
            final = out / f.name
            if final.is_dir() and not final.is_symlink():
                raise UserInputError(f"{final} is a folder; move it away to write the report")
            os.replace(f, final)
            figures.append(final)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    header, rows = run_table(views)
    csv_path = write_csv(out / "summary.csv", header, rows)
    md_path = out / "summary.md"
    _atomic_write_text(md_path, summary_markdown(tree, views, figures, path))
    written = [*figures, md_path, csv_path]
    names = [p.name for p in written]
    for name in old:  # figures of an earlier report that this one does not draw
        stale = out / name
        if name not in names and (stale.is_symlink() or stale.is_file()):
            stale.unlink()
    _atomic_write_text(out / REPORT_MANIFEST, json.dumps(names, indent=1) + "\n")
    return written
