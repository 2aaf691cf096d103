"""Paper reproductions: one module per paper, each an experiment list and its claims.

A module ``papers/<key>.py`` defines ``PAPER`` (a :class:`Paper`); every
module in this package whose name does not start with ``_`` is registered,
so adding a paper is adding one file. ``implicit-bias reproduce <key>`` runs
its experiments through the ordinary sweep engine and judges its claims.
"""

from __future__ import annotations

import importlib
import pkgutil

from ._base import (
    EVERY_DRAW,
    FULL_DRAWS,
    KINDS,
    QUICK_DRAWS,
    STATISTICAL,
    STATUSES,
    Claim,
    ClaimSpec,
    Outcome,
    Paper,
    Runs,
)

ORDER = ("liu2023", "frei2023", "lewkowycz2020")  # table order; others follow by name


def _discover() -> dict[str, Paper]:
    found: dict[str, Paper] = {}
    for mod in pkgutil.iter_modules(__path__):
        if mod.name.startswith("_"):
            continue
        paper = importlib.import_module(f"{__name__}.{mod.name}").PAPER
        found[paper.key] = paper
    keys = [k for k in ORDER if k in found] + sorted(set(found) - set(ORDER))
    return {k: found[k] for k in keys}


#: every paper, by key
PAPERS: dict[str, Paper] = _discover()

__all__ = [
    "EVERY_DRAW",
    "FULL_DRAWS",
    "KINDS",
    "PAPERS",
    "QUICK_DRAWS",
    "STATISTICAL",
    "STATUSES",
    "Claim",
    "ClaimSpec",
    "Outcome",
    "Paper",
    "Runs",
]
