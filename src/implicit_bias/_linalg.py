"""Batched linear algebra that fails per run, never per chunk.

``torch.linalg.eigh`` and friends raise for the whole batch when one matrix
does not converge (e.g. the tridiagonal matrix of a float32 run whose weights
reached 1e30). The wrappers here zero the non-finite matrices, try the batched
call, and when it raises fall back to one call per matrix; the matrices that
were not finite or did not converge get NaN results and are *recorded*.

The engine collects the records of one evaluation with :func:`recording` and
flags those runs ``measurement_failed`` with the step and name in
``measurement_cause`` (a failed measurement is neither a failed chunk nor a
diverged run: the run keeps training). Records are kept per thread/task (a
:class:`contextvars.ContextVar`), so chunks trained on Dask threads do not mix.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar

import torch
from torch import Tensor

#: (what failed, mask over the leading (run) dimension) for the open recording
_RECORDS: ContextVar[list[tuple[str, Tensor]] | None] = ContextVar(
    "implicit_bias_linalg_failures", default=None
)


@contextlib.contextmanager
def recording() -> Iterator[list[tuple[str, Tensor]]]:
    """Collect ``(what, failed)`` records of the calls below, ``failed`` a bool
    tensor over the batch's leading dimension (the runs)."""
    records: list[tuple[str, Tensor]] = []
    token = _RECORDS.set(records)
    try:
        yield records
    finally:
        _RECORDS.reset(token)


def note_failure(what: str, failed: Tensor) -> None:
    """Record that the runs in ``failed`` (bool, leading dim = runs) broke in ``what``."""
    records = _RECORDS.get()
    if records is not None and bool(failed.any()):
        records.append(
            (what, failed.reshape(failed.shape[0], -1).any(1) if failed.ndim else failed)
        )


def _robust(
    fn: Callable[[Tensor], tuple[Tensor, ...]], A: Tensor, what: str
) -> tuple[tuple[Tensor, ...], Tensor]:
    """``fn`` over the batch of matrices ``A (..., m, n)`` with per-matrix failure.

    Returns the outputs (NaN for failed matrices) and the ``failed`` mask over
    the batch dims.
    """
    batch = A.shape[:-2]
    finite = torch.isfinite(A).flatten(-2).all(-1)
    clean = torch.where(finite[..., None, None], A, torch.zeros((), dtype=A.dtype, device=A.device))
    try:
        outs = fn(clean)
        failed = ~finite
    except torch.linalg.LinAlgError:
        flat = clean.reshape(-1, *A.shape[-2:])
        fine = finite.reshape(-1).tolist()
        per: list[tuple[Tensor, ...] | None] = []
        for i, ok in enumerate(fine):
            try:
                per.append(fn(flat[i]) if ok else None)
            except torch.linalg.LinAlgError:
                per.append(None)
        template = next((p for p in per if p is not None), None)
        if template is None:  # nothing converged: shapes from a zero matrix
            template = fn(torch.zeros_like(flat[0]))
        nan = float("nan")
        outs = tuple(
            torch.stack(
                [p[j] if p is not None else torch.full_like(template[j], nan) for p in per]
            ).reshape(*batch, *template[j].shape)
            for j in range(len(template))
        )
        failed = torch.tensor([p is None for p in per], device=A.device).reshape(batch)
    if bool(failed.any()):
        mask = failed
        outs = tuple(
            torch.where(mask.reshape(*batch, *([1] * (o.dim() - len(batch)))), float("nan"), o)
            if o.is_floating_point()
            else o
            for o in outs
        )
        if len(batch):
            note_failure(what, mask)
    return outs, failed


def eigh(A: Tensor, what: str = "linalg.eigh") -> tuple[Tensor, Tensor, Tensor]:
    """``torch.linalg.eigh`` per matrix of the batch: ``(values, vectors, failed)``."""
    (vals, vecs), failed = _robust(lambda M: tuple(torch.linalg.eigh(M)), A, what)
    return vals, vecs, failed


def eigvalsh(A: Tensor, what: str = "linalg.eigvalsh") -> tuple[Tensor, Tensor]:
    """``torch.linalg.eigvalsh`` per matrix of the batch: ``(values, failed)``."""
    (vals,), failed = _robust(lambda M: (torch.linalg.eigvalsh(M),), A, what)
    return vals, failed


def svdvals(A: Tensor, what: str = "linalg.svdvals") -> tuple[Tensor, Tensor]:
    """``torch.linalg.svdvals`` per matrix of the batch: ``(values, failed)``."""
    (vals,), failed = _robust(lambda M: (torch.linalg.svdvals(M),), A, what)
    return vals, failed
