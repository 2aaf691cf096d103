"""How long a sweep will take, measured on its own model shapes.

A FLOP count turned into seconds by one benchmark rate misses what dominates
small and mid-sized runs (per-step overhead, the Lanczos solves at eval steps,
the matrix-chain shortcut of linear nets), so :func:`estimate_seconds` times
the real thing instead: the first chunk of every group (its runs, data and
model shape) trained for :data:`PROBE_STEPS` steps with an eval every
:data:`PROBE_EVERY`. The probe times each eval step and the steps between
them, which separates the cost of a training step, of an eval step and of the
fixed part of a chunk (set-up, the sharpness at initialisation, the final
measurements). A group's chunks cost the same, so the sweep's time is their
sum, plus the start-up of the ``run`` process.

The estimate is as good as the machine is steady: a machine shared with other
work gives other numbers a minute later, which :class:`Estimate` reports as a
range (the probe run twice; within a probe, the fastest interval is taken).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any

__all__ = ["Estimate", "estimate_seconds"]

#: steps of a probe and its eval interval (evals at 0, 4, 8, 12: three gaps of 4 steps)
PROBE_STEPS, PROBE_EVERY = 12, 4
#: probes per group (their spread is the estimate's range)
PROBES = 2
#: seconds of ``run`` outside the chunks (imports, planning, writing the folder)
STARTUP_S = 3.0


@dataclass
class Estimate:
    """A sweep's expected run time on this machine.

    Attributes:
        seconds: the estimate (the faster of two timings of each probe).
        low, high: the estimate from the faster and from the slower timings; a
            wide range means the machine was busy while measuring.
        probe_s: seconds the measurement itself took.
        per_group: ``(step_s, eval_s, fixed_s, chunks)`` per group: seconds per
            training step, per eval step and once per chunk, and its chunks.
    """

    seconds: float
    low: float
    high: float
    probe_s: float
    per_group: list[tuple[float, float, float, float]]

    def text(self) -> str:
        from .sweep import _fmt_seconds

        spread = self.high / self.low if self.low > 0 else math.inf
        sure = (
            "steady machine"
            if spread < 1.25
            else "busy machine: expect anything in that range or more"
        )
        return (
            f"time: about {_fmt_seconds(self.seconds)} "
            f"(between {_fmt_seconds(self.low)} and {_fmt_seconds(self.high)}; {sure}), "
            f"measured on this machine by training the first chunk of each group for "
            f"{PROBE_STEPS} steps, {PROBES} times ({self.probe_s:.2g} s)"
        )


def _probe_runs(runs: list[Any], steps: int, every: int) -> list[Any]:
    cfg = runs[0].config
    metrics = cfg.metrics.model_copy(update={"every": every, "at": [], "dense_early": False})
    if hasattr(metrics, "ntk_gram_at"):
        metrics = metrics.model_copy(update={"ntk_gram_at": []})
    out = []
    for r in runs:
        train = r.config.train.model_copy(update={"steps": steps})
        c = r.config.model_copy(update={"train": train, "metrics": metrics})
        out.append(dataclasses.replace(r, config=c))
    return out


def _probe(runs: list[Any]) -> tuple[float, float, float]:
    """``(step_s, eval_s, fixed_s)`` of one chunk, from one timed probe.

    The engine's eval hook (``metrics.step_metrics``) is wrapped for the probe's
    duration to time each eval; the gaps between evals are PROBE_EVERY steps.
    """
    from . import metrics
    from .engine import Trainer

    marks: list[tuple[float, float]] = []
    original = metrics.step_metrics

    def timed(ctx):
        t0 = time.perf_counter()
        out = original(ctx)
        marks.append((t0, time.perf_counter()))
        return out

    metrics.step_metrics = timed
    try:
        t0 = time.perf_counter()
        Trainer(_probe_runs(runs, PROBE_STEPS, PROBE_EVERY)).train()
        total = time.perf_counter() - t0
    finally:
        metrics.step_metrics = original
    evals = [e - s for s, e in marks]
    gaps = [marks[i + 1][0] - marks[i][1] for i in range(len(marks) - 1)]
    if not gaps:  # no eval hook called (cannot happen with evals at 0 and the end)
        return total / PROBE_STEPS, 0.0, 0.0
    # the fastest interval: delays from other work on the machine only add
    step = min(gaps) / PROBE_EVERY
    ev = min(evals[1:]) if len(evals) > 1 else evals[0]
    fixed = max(total - sum(evals) - sum(gaps), 0.0)
    return step, ev, fixed


def estimate_seconds(plan: Any) -> Estimate:
    """Time the first chunk of every group of ``plan`` on a few steps; extrapolate.

    Args:
        plan: a :class:`implicit_bias.sweep.Plan`.

    Returns:
        The estimate for running every chunk of the plan in this process's
        device and threads (a Dask cluster divides it by its workers, roughly).
    """
    from .engine import eval_steps_of

    t_start = time.perf_counter()
    chunks = plan.chunks
    per_group = []
    fast = slow = 0.0
    for g in range(len(plan.groups)):
        first = chunks.get(g, 0)
        runs = [plan.runs[i] for i in first.runs]
        cfg = runs[0].config
        n_eval = len(eval_steps_of(cfg))
        timings = [_probe(runs) for _ in range(PROBES)]
        # a group's chunks: the full ones and the last, shorter one (time ∝ its runs)
        n_chunks = chunks.group_runs[g] / chunks.sizes[g]
        costs = [
            n_chunks * (fixed + cfg.train.steps * step + n_eval * ev) for step, ev, fixed in timings
        ]
        fast += min(costs)
        slow += max(costs)
        best = min(timings, key=lambda t: t[0] * cfg.train.steps + t[1] * n_eval + t[2])
        per_group.append((*best, n_chunks))
    probe = time.perf_counter() - t_start
    return Estimate(
        seconds=fast + STARTUP_S,
        low=fast + STARTUP_S,
        high=slow + STARTUP_S,
        probe_s=probe,
        per_group=per_group,
    )
