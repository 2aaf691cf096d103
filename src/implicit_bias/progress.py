"""Progress bars (rich): one sweep's bar over run-steps, and a board over a series of sweeps."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _rich_progress():
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=False,
    )


class ProgressBoard:
    """One progress display shared by a series of sweeps (``reproduce``).

    A bar over experiments, and under it each sweep's bar over run-steps as
    :func:`run_sweep` draws it. Pass the board as ``progress=`` to
    :func:`run_sweep` and call :meth:`start` before each experiment (or pass
    :meth:`start` where a ``echo("paper/experiment …")`` callback is taken)::

        with ProgressBoard(len(experiments), "liu2023") as board:
            for name, cfg in experiments:
                board.start(name)
                run_sweep(cfg, out / name, progress=board)

    Disabled (``enabled=False``), it draws nothing and costs nothing.
    """

    def __init__(self, total: int | None = None, label: str = "experiments", enabled: bool = True):
        self.total, self.label, self.enabled = total, label, enabled
        self.bar: Any = None
        self._task: Any = None
        self._started = 0

    def __bool__(self) -> bool:
        return self.enabled

    def __enter__(self) -> ProgressBoard:
        if self.enabled:
            self.bar = _rich_progress()
            self.bar.__enter__()
            self._task = self.bar.add_task(self.label, total=self.total)
        return self

    def start(self, name: str) -> None:
        """Mark the previous experiment done and show ``name`` as the current one."""
        name = name.rstrip(" …").strip()
        if self.bar is not None:
            if self._started:
                self.bar.advance(self._task, 1)
            self.bar.update(self._task, description=f"{self.label}: {name}")
        self._started += 1

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            if self._started and exc[0] is None:
                self.bar.advance(self._task, 1)
                self.bar.update(self._task, description=f"{self.label}: done")
            self.bar.__exit__(*exc)
            self.bar = None


class _progress:
    """A rich progress bar over run-steps (no-op when disabled).

    ``enabled`` may be a :class:`ProgressBoard`: the bar is then a task of the
    board's display, removed when the sweep ends.
    """

    def __init__(self, enabled: bool | ProgressBoard, total: int, label: str):
        self.enabled, self.total, self.label = enabled, total, label
        self.own = not isinstance(enabled, ProgressBoard)

    def __enter__(self) -> Callable[[int], None]:
        if not self.enabled:
            return lambda k: None
        if isinstance(self.enabled, ProgressBoard):
            self.bar = self.enabled.bar
            if self.bar is None:
                return lambda k: None
        else:
            self.bar = _rich_progress()
            self.bar.__enter__()
        self.task = self.bar.add_task(self.label, total=self.total)
        return lambda k: self.bar.advance(self.task, k)

    def __exit__(self, *exc: Any) -> None:
        if not self.enabled or getattr(self, "bar", None) is None:
            return
        if self.own:
            self.bar.__exit__(*exc)
        else:
            self.bar.remove_task(self.task)
