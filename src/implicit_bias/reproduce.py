"""Paper reproductions: ``implicit-bias reproduce <paper>|all [--quick]``.

Each paper is a module of :mod:`implicit_bias.papers` (experiments and claims
side by side). Here they are run: every experiment is an ordinary config run
by the ordinary sweep engine into ``<out>/<paper>/<experiment>/`` with its
report, then the paper's claims are judged on the stored results and written
as claims tables (``claims.md``, ``.csv``, ``.json``) per paper and at the top.
A rerun resumes: finished chunks are kept and the tables are recomputed.

Every experiment sweeps the data seed as well as the init seed (2 draws quick,
5 full, from ``data_seed``), and each claim is judged draw by draw (see
:meth:`implicit_bias.papers.ClaimSpec.evaluate`). ``claim="L3"`` runs only the
experiments claim L3 uses and judges only it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

from ._errors import UserInputError
from .papers import EVERY_DRAW, FULL_DRAWS, PAPERS, QUICK_DRAWS, STATISTICAL, STATUSES, Claim

__all__ = [
    "EVERY_DRAW",
    "FULL_DRAWS",
    "PAPERS",
    "QUICK_DRAWS",
    "STATISTICAL",
    "STATUSES",
    "Claim",
    "reproduce",
    "run_recipe",
]


#: the full reproduction's claims (``results/reproduce/claims.json`` of a full run,
#: committed by whoever runs it); the quick table quotes its status beside its own
FULL_CLAIMS = Path(__file__).resolve().parents[2] / "docs" / "claims-full.json"


# ------------------------------------------------------------------ running
def papers_for(paper: str) -> list[str]:
    if paper == "all":
        return list(PAPERS)
    if paper not in PAPERS:
        raise UserInputError(
            f"reproduce: unknown paper '{paper}' (choose from {', '.join((*PAPERS, 'all'))})"
        )
    return [paper]


def find_claim(paper: str, key: str) -> str:
    """The paper holding claim ``key`` (``paper`` may be ``all``).

    Raises:
        UserInputError: no such claim in ``paper``.
    """
    for k in papers_for(paper):
        if any(c.key == key for c in PAPERS[k].claims):
            return k
    known = [c.key for k in papers_for(paper) for c in PAPERS[k].judge({})]  # table order
    raise UserInputError(f"--claim: no claim '{key}' in {paper} (choose from {', '.join(known)})")


def default_out(
    quick: bool, data_seed: int = 0, draws: int | None = None, seeds: int | None = None
) -> Path:
    """``results/reproduce[-quick]``, with a suffix for a non-default draw or seed count."""
    name = "reproduce-quick" if quick else "reproduce"
    if data_seed:
        name += f"-data{data_seed}"
    if draws is not None:
        name += f"-draws{draws}"
    if seeds is not None:
        name += f"-seeds{seeds}"
    return Path("results") / name


def full_status(claims: list[Claim], path: Path | None = None) -> list[Claim]:
    """The claims with ``full`` set from the full reproduction's table at ``path``.

    A row absent there, or judged there by another criterion, reads ``not run``.
    """
    path = FULL_CLAIMS if path is None else path
    rows: dict[tuple[str, str], dict] = {}
    if path.is_file():
        try:
            rows = {(r["paper"], r["key"]): r for r in json.loads(path.read_text())}
        except (ValueError, KeyError, TypeError):
            rows = {}
    out = []
    for c in claims:
        r = rows.get((c.paper, c.key))
        full = r["status"] if r and r.get("criterion") == c.criterion else "not run"
        out.append(replace(c, full=full))
    return out


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
    data_seed: int = 0,
    draws: int | None = None,
    seeds: int | None = None,
    claim: str | None = None,
) -> tuple[list[Claim], list[Path]]:
    """Run (or resume) every experiment of one recipe; return its claims and figures.

    Args:
        key, out, quick, progress, overwrite, echo: as in :func:`reproduce`.
        reports: False skips the per-experiment figures and tables (``report
            DIR`` makes them later).
        data_seed, draws, seeds: the data draws ``data_seed + 0 … draws−1`` and
            the number of init seeds (see :meth:`~implicit_bias.papers.Paper.configs`).
        claim: only the experiments this claim uses, and only its row.
    """
    from .report import write_report
    from .sweep import run_sweep

    paper = PAPERS[key]
    only = paper.spec(claim).uses if claim is not None else None
    results, figures = {}, []
    configs = paper.configs(quick, data_seed=data_seed, draws=draws, seeds=seeds, only=only)
    for name, cfg in configs.items():
        folder = out / key / name
        if echo:
            echo(f"{key}/{name} …")
        tree = run_sweep(cfg, folder, overwrite=overwrite, progress=progress)
        results[name] = _first_group(tree)
        if reports:
            figures += [p for p in write_report(folder, tree) if p.suffix == ".png"]
    claims = paper.judge(results, keys=None if claim is None else [claim])
    if reports:  # the paper's own figures (papers/<key>.py), beside the generic reports
        figures += paper.draw_figures(results, out / key / "figures")
    return claims, figures


def claims_markdown(claims: list[Claim], title: str) -> str:
    """Claims first, then the sanity checks (which cannot fail), each as a table."""
    from .report import markdown_table

    with_full = any(c.full for c in claims)
    header = ["paper", "key", "claim", "source", "setting", "criterion", "measured", "rule"]
    header += ["draws", "status"] + (["full run"] if with_full else [])

    def table(rows: list[Claim]) -> str:
        return markdown_table(
            header,
            [[c.paper, c.key, c.claim, c.source, c.setting, c.criterion, c.measured, c.rule,
              draws_text(c), c.status] + ([f"full {c.full}"] if with_full else [])
             for c in rows],
        )  # fmt: skip

    real = [c for c in claims if c.kind == "claim"]
    sanity = [c for c in claims if c.kind != "claim"]
    text = (
        f"# {title}\n\n{headline(claims)} (each judged draw by draw on numbers measured "
        "in this folder, by a criterion whose negative control FAILs on its substance in "
        "the test suite; FAIL and n/a rows are results too). A row PASSes if its criterion "
        f"holds on every data draw, or, marked '{STATISTICAL}', if the effect pooled over "
        "draws × init seeds exceeds 2 standard errors.\n\n" + table(real) + "\n"
    )
    if sanity:
        text += (
            "\n## Sanity checks\n\nConsistency checks that have no failing control; "
            "they are not claims.\n\n" + table(sanity) + "\n"
        )
    return text


def draws_text(c: Claim) -> str:
    """``0 PASS, 1 FAIL``: the outcome on each data draw."""
    return ", ".join(f"{k} {v}" for k, v in c.draws.items()) or "-"


def headline(claims: list[Claim]) -> str:
    """``27 of 30 claims PASS`` (and the full run's count when the rows carry it)."""
    real = [c for c in claims if c.kind == "claim"]
    n_pass = sum(c.status == "PASS" for c in real)
    text = f"{n_pass} of {len(real)} claims PASS"
    if any(c.full for c in real):
        ran = [c for c in real if c.full not in ("", "not run")]
        if ran:
            text += f"; full run: {sum(c.full == 'PASS' for c in ran)} of {len(ran)} PASS"
            if len(ran) < len(real):
                text += f" ({len(real) - len(ran)} not run)"
        else:
            text += "; full run: not run"
    return text


def claims_text(claims: list[Claim], width: int = 100) -> str:
    """The claims as plain text for a terminal: status, id, claim, source, then the numbers."""
    import textwrap

    lines = []
    for c in claims:
        tag = c.status if c.kind == "claim" else f"({c.status.lower()})"
        lines += textwrap.wrap(f"{tag:6s} {c.key:4s} {c.claim}", width, subsequent_indent=" " * 12)
        extra = [("draws", draws_text(c) + (f" ({c.rule})" if c.rule else ""))]
        if c.full:
            extra.append(("full run", c.full))
        for label, text in (("source", c.source), ("measured", c.measured), *extra):
            lines += textwrap.wrap(
                f"{label}: {text}", width, initial_indent=" " * 12, subsequent_indent=" " * 12
            )
    n_sanity = sum(c.kind != "claim" for c in claims)
    lines.append(
        headline(claims) + (f" ({n_sanity} sanity checks listed apart)" if n_sanity else "")
    )
    return "\n".join(lines)


def write_claims(claims: list[Claim], out: Path, title: str, stem: str = "claims") -> list[Path]:
    """``<stem>.md``, ``.json`` and ``.csv`` in ``out``."""
    from .report import write_csv

    out.mkdir(parents=True, exist_ok=True)
    md = out / f"{stem}.md"
    md.write_text(claims_markdown(claims, title))
    js = out / f"{stem}.json"
    js.write_text(json.dumps([asdict(c) for c in claims], indent=1, ensure_ascii=False) + "\n")
    cs = write_csv(
        out / f"{stem}.csv",
        list(Claim.__dataclass_fields__),
        [[draws_text(c) if k == "draws" else v for k, v in asdict(c).items()] for c in claims],
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
    data_seed: int = 0,
    draws: int | None = None,
    seeds: int | None = None,
    claim: str | None = None,
) -> tuple[list[Claim], list[Path]]:
    """Run the recipes of ``paper`` (or ``all``) into ``out``; write the claims table.

    Args:
        paper: a paper key or ``all``.
        quick: the quick recipes (2 data draws; the full ones have 5).
        out: the reproduction folder (default ``results/reproduce[-quick]…``).
        progress, overwrite, echo: as in :func:`~implicit_bias.sweep.run_sweep`.
        reports: draw every experiment's report.
        data_seed: the first data seed: every experiment's data (and data-set
            subsets) is drawn from ``data_seed``, ``data_seed + 1``, ….
        draws: the number of data draws (the recipe's when None).
        seeds: the number of init seeds (the recipe's when None).
        claim: re-run only this claim (its experiments and its row), written
            as ``<paper>/claims-<KEY>.md`` (and .csv, .json).

    Returns:
        (claims, files): every claim row, and the claims tables and figures written.

    Raises:
        UserInputError: an unknown paper or claim, a bad count, or a folder not ours.
    """
    if data_seed < 0:
        raise UserInputError(f"--data-seed must be >= 0 (got {data_seed})")
    for name, n in (("--draws", draws), ("--seeds", seeds)):
        if n is not None and n < 1:
            raise UserInputError(f"{name} must be >= 1 (got {n})")
    keys = papers_for(paper) if claim is None else [find_claim(paper, claim)]
    out = Path(out) if out is not None else default_out(quick, data_seed, draws, seeds)
    claim_root(out)
    claims: list[Claim] = []
    figures: list[Path] = []
    for key in keys:
        c, f = run_recipe(
            key,
            out,
            quick,
            progress=progress,
            overwrite=overwrite,
            echo=echo,
            reports=reports,
            data_seed=data_seed,
            draws=draws,
            seeds=seeds,
            claim=claim,
        )
        if quick:
            c = full_status(c)
        if claim is not None:
            title = f"Claim {claim} of {PAPERS[key].title}" + (" (quick)" if quick else "")
            return c, [*write_claims(c, out / key, title, stem=f"claims-{claim}"), *f]
        write_claims(c, out / key, PAPERS[key].title)
        claims += c
        figures += f
    title = "Claims: " + ", ".join(keys) + (" (quick)" if quick else "")
    return claims, [*write_claims(claims, out, title), *figures]
