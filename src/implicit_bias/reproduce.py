"""Paper reproductions (``implicit-bias reproduce``): not yet available.

The miniature versions of both papers run as tests
(``tests/test_paper1_miniature.py``, ``tests/test_paper2_miniature.py``) and
as example configs in ``configs/``.
"""

from __future__ import annotations

from pathlib import Path

PAPERS = ("liu2023", "frei2023", "lewkowycz2020", "all")


def reproduce(paper: str, quick: bool = False, out: Path | None = None) -> None:
    from ._errors import UserInputError

    if paper not in PAPERS:
        raise UserInputError(
            f"reproduce: unknown paper '{paper}' (choose from {', '.join(PAPERS)})"
        )
    raise NotImplementedError
