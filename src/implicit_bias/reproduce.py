"""Paper reproductions: ``implicit-bias reproduce <paper>|all [--quick]``.

Each paper is a module of :mod:`implicit_bias.papers` (experiments and claims
side by side). Here they are run: every experiment is an ordinary config run
by the ordinary sweep engine into ``<out>/<paper>/<experiment>/`` with its
report, then the paper's claims are judged on the stored results and written
as claims tables (``claims.md``, ``.csv``, ``.json``) per paper and at the top.
A rerun resumes: finished chunks are kept and the tables are recomputed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from ._errors import UserInputError
from .papers import PAPERS, STATUSES, Claim

__all__ = ["PAPERS", "STATUSES", "Claim", "reproduce", "run_recipe"]


# ------------------------------------------------------------------ running
def papers_for(paper: str) -> list[str]:
    if paper == "all":
        return list(PAPERS)
    if paper not in PAPERS:
        raise UserInputError(
            f"reproduce: unknown paper '{paper}' (choose from {', '.join((*PAPERS, 'all'))})"
        )
    return [paper]


def default_out(quick: bool) -> Path:
    return Path("results") / ("reproduce-quick" if quick else "reproduce")


#: marks a folder as a reproduction (its experiment folders carry their own markers)
REPRODUCTION_MARKER = ".implicit-bias-reproduction"
_CLAIMS_FILES = ("claims.md", "claims.json", "claims.csv")


def claim_root(out: Path) -> None:
    """Make ``out`` a reproduction folder, refusing one with content of someone else's.

    A folder is accepted when it is new, empty, marked, or (made before the
    marker) holds nothing but claims tables and paper folders.

    Raises:
        UserInputError: ``out`` is a file, or a non-empty folder that is not a reproduction.
    """
    if out.exists() and not out.is_dir():
        raise UserInputError(f"--out {out} is a file, not a folder")
    if out.is_dir() and not (out / REPRODUCTION_MARKER).is_file():
        ours = {*_CLAIMS_FILES, *PAPERS}
        other = sorted(p.name for p in out.iterdir() if p.name not in ours)
        if other:
            raise UserInputError(
                f"{out} is not empty and is not a reproduction folder (it holds {other[0]}"
                f"{' and more' if len(other) > 1 else ''}); choose a new or empty --out"
            )
    out.mkdir(parents=True, exist_ok=True)
    (out / REPRODUCTION_MARKER).write_text('{"tool": "implicit-bias", "kind": "reproduction"}\n')


def _first_group(tree):
    # every recipe experiment sweeps only per-run keys: one group of runs
    return tree[next(iter(tree.children))].to_dataset()


def open_experiment(out: Path | str, paper: str, name: str):
    """The Dataset of one finished experiment of a reproduction folder."""
    from .store import open_results

    return _first_group(open_results(Path(out) / paper / name))


def run_recipe(
    key: str,
    out: Path,
    quick: bool,
    progress: bool = False,
    overwrite: bool = False,
    echo: Callable[[str], None] | None = None,
    reports: bool = True,
) -> tuple[list[Claim], list[Path]]:
    """Run (or resume) every experiment of one recipe; return its claims and figures.

    ``reports=False`` skips the per-experiment figures and tables (``report DIR``
    makes them later).
    """
    from .report import write_report
    from .sweep import run_sweep

    paper = PAPERS[key]
    results, figures = {}, []
    for name, cfg in paper.experiments(quick).items():
        folder = out / key / name
        if echo:
            echo(f"{key}/{name} …")
        tree = run_sweep(cfg, folder, overwrite=overwrite, progress=progress)
        results[name] = _first_group(tree)
        if reports:
            figures += [p for p in write_report(folder, tree) if p.suffix == ".png"]
    return paper.judge(results), figures


def claims_markdown(claims: list[Claim], title: str) -> str:
    """Claims first, then the sanity checks (which cannot fail), each as a table."""
    from .report import markdown_table

    header = ["paper", "key", "claim", "source", "setting", "criterion", "measured", "status"]

    def table(rows: list[Claim]) -> str:
        return markdown_table(
            header,
            [[c.paper, c.key, c.claim, c.source, c.setting, c.criterion, c.measured, c.status]
             for c in rows],
        )  # fmt: skip

    real = [c for c in claims if c.kind == "claim"]
    sanity = [c for c in claims if c.kind != "claim"]
    n_pass = sum(c.status == "PASS" for c in real)
    text = (
        f"# {title}\n\n{n_pass} of {len(real)} claims PASS (each judged on numbers measured "
        "in this folder, by a criterion whose negative control FAILs in the test suite; "
        "FAIL and n/a rows are results too).\n\n" + table(real) + "\n"
    )
    if sanity:
        text += (
            "\n## Sanity checks\n\nConsistency checks that have no failing control; "
            "they are not claims.\n\n" + table(sanity) + "\n"
        )
    return text


def claims_text(claims: list[Claim], width: int = 100) -> str:
    """The claims as plain text for a terminal: status, id, claim, source, then the numbers."""
    import textwrap

    lines = []
    for c in claims:
        tag = c.status if c.kind == "claim" else f"({c.status.lower()})"
        lines += textwrap.wrap(f"{tag:6s} {c.key:4s} {c.claim}", width, subsequent_indent=" " * 12)
        for label, text in (("source", c.source), ("measured", c.measured)):
            lines += textwrap.wrap(
                f"{label}: {text}", width, initial_indent=" " * 12, subsequent_indent=" " * 12
            )
    real = [c for c in claims if c.kind == "claim"]
    n_pass = sum(c.status == "PASS" for c in real)
    n_sanity = len(claims) - len(real)
    lines.append(
        f"{n_pass} of {len(real)} claims PASS"
        + (f" ({n_sanity} sanity checks listed apart)" if n_sanity else "")
    )
    return "\n".join(lines)


def write_claims(claims: list[Claim], out: Path, title: str) -> list[Path]:
    from .report import write_csv

    out.mkdir(parents=True, exist_ok=True)
    md = out / "claims.md"
    md.write_text(claims_markdown(claims, title))
    js = out / "claims.json"
    js.write_text(json.dumps([asdict(c) for c in claims], indent=1, ensure_ascii=False) + "\n")
    cs = write_csv(
        out / "claims.csv",
        list(Claim.__dataclass_fields__),
        [list(asdict(c).values()) for c in claims],
    )
    return [md, js, cs]


def reproduce(
    paper: str,
    quick: bool = False,
    out: Path | str | None = None,
    progress: bool = False,
    overwrite: bool = False,
    echo: Callable[[str], None] | None = None,
    reports: bool = True,
) -> tuple[list[Claim], list[Path]]:
    """Run the recipes of ``paper`` (or ``all``) into ``out``; write the claims table.

    Returns:
        (claims, files): every claim row, and the claims tables and figures written.
    """
    keys = papers_for(paper)
    out = Path(out) if out is not None else default_out(quick)
    claim_root(out)
    claims: list[Claim] = []
    figures: list[Path] = []
    for key in keys:
        c, f = run_recipe(
            key, out, quick, progress=progress, overwrite=overwrite, echo=echo, reports=reports
        )
        write_claims(c, out / key, PAPERS[key].title)
        claims += c
        figures += f
    title = "Claims: " + ", ".join(keys) + (" (quick)" if quick else "")
    return claims, [*write_claims(claims, out, title), *figures]
