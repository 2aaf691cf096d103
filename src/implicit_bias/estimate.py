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

The measurement itself is bounded whatever the sweep's size, so that
``validate`` on 10⁶ runs stays within seconds (issue 20): a probe trains at
most :data:`PROBE_MAX_RUNS` runs of the chunk and scales its time in
proportion to the chunk's runs (measured: a 512-run chunk of a tiny net
took 4.3 s where 64 runs scaled said 2.3–8.4 s, on a busy machine), and at most :data:`PROBE_MAX_GROUPS` groups,
spread over the sweep, are probed (each once before any twice), none started
after :data:`PROBE_BUDGET_S` seconds; the others are assumed to cost what the
probed ones cost per run.
The text says when either happened.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any

__all__ = ["Estimate", "estimate_seconds"]

#: steps of a probe and its eval interval (evals at 0, 12, 24, 36, 48: four gaps of 12 steps;
#: measured on the catapult demo, 2026-12-02: 12 steps with gaps of 4 timed the first, slower
#: evals and steps and predicted 15-17 s for a 9 s run, 48 steps predict 11 s)
PROBE_STEPS, PROBE_EVERY = 48, 12
#: probes per group (their spread is the estimate's range)
PROBES = 2
#: seconds of ``run`` outside the chunks (imports, planning, writing the folder)
STARTUP_S = 3.0
#: most runs one probe trains (a larger chunk's time is scaled from them)
PROBE_MAX_RUNS = 64
#: a probe's runs hold at most this many bytes (as the plan estimates them): a big
#: model's probe trains fewer runs
PROBE_MAX_BYTES = 64 * 2**20
#: most groups probed, and the seconds after which no further probe is started
PROBE_MAX_GROUPS, PROBE_BUDGET_S = 6, 2.0


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
        probed: the groups measured (the others are extrapolated per run).
        scaled: whether some probe trained fewer runs than its chunk holds.
        repeated: whether every probed group was timed :data:`PROBES` times (else
            the range says nothing about how busy the machine is).
    """

    seconds: float
    low: float
    high: float
    probe_s: float
    per_group: list[tuple[float, float, float, float]]
    probed: int = 0
    scaled: bool = False
    repeated: bool = True

    def text(self) -> str:
        from .planning import _fmt_seconds

        spread = self.high / self.low if self.low > 0 else math.inf
        sure = (
            "timed once within the time allowed: how steady the machine is, unknown"
            if not self.repeated
            else "steady machine"
            if spread < 1.25
            else "busy machine: expect anything in that range or more"
        )
        groups = len(self.per_group)
        which = (
            "the first chunk of each group"
            if self.probed >= groups
            else f"the first chunk of {self.probed} of {groups} groups (the others assumed "
            "to cost as much per run)"
        )
        scaled = (
            f"; at most {PROBE_MAX_RUNS} runs of a chunk, its time scaled in proportion "
            "to all its runs"
            if self.scaled
            else ""
        )
        return (
            f"time: about {_fmt_seconds(self.seconds)} "
            f"(between {_fmt_seconds(self.low)} and {_fmt_seconds(self.high)}; {sure}), "
            f"measured on this machine by training {which} for "
            f"{PROBE_STEPS} steps{f', {PROBES} times' if self.repeated else ''}{scaled} "
            f"({self.probe_s:.2g} s)"
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


def _probed_groups(n_groups: int) -> list[int]:
    """The groups to probe: all of a few, else :data:`PROBE_MAX_GROUPS` spread from
    the first to the last (sweeps order shapes, so both ends of each are seen)."""
    if n_groups <= PROBE_MAX_GROUPS:
        return list(range(n_groups))
    k = PROBE_MAX_GROUPS
    return sorted({round(i * (n_groups - 1) / (k - 1)) for i in range(k)})


def _probe_size(plan: Any, g: int, runs: int) -> int:
    """How many runs of group ``g``'s first chunk (of ``runs``) a probe trains: at
    most :data:`PROBE_MAX_RUNS`, and fewer of a big model (:data:`PROBE_MAX_BYTES`)."""
    per_run = plan.run_bytes[g] if g < len(plan.run_bytes) else 0
    by_memory = PROBE_MAX_BYTES // per_run if per_run > 0 else PROBE_MAX_RUNS
    return max(1, min(runs, PROBE_MAX_RUNS, by_memory))


def estimate_seconds(plan: Any) -> Estimate:
    """Time the first chunk of (a few) groups of ``plan`` on a few steps; extrapolate.

    Bounded whatever the plan's size: at most :data:`PROBE_MAX_GROUPS` groups
    of at most :data:`PROBE_MAX_RUNS` runs each, and no probe is started after
    :data:`PROBE_BUDGET_S` seconds (the first groups are timed once each before
    any is timed again; see the module docstring).

    Args:
        plan: a :class:`implicit_bias.sweep.Plan`.

    Returns:
        The estimate for running every chunk of the plan in this process's
        device and threads (a Dask cluster divides it by its workers, roughly).
    """
    from .engine import eval_steps_of

    t_start = time.perf_counter()
    chunks = plan.chunks
    n_groups = len(plan.groups)
    # per probed group: its timings per run, (step, eval, fixed) each
    per_run: dict[int, list[tuple[float, float, float]]] = {}
    scaled = False
    for _ in range(PROBES):
        for g in _probed_groups(n_groups):
            if per_run and time.perf_counter() - t_start > PROBE_BUDGET_S:
                break  # enough measured: the rest is extrapolated (said in the text)
            first = chunks.get(g, 0)
            runs = [plan.runs[i] for i in first.runs[: _probe_size(plan, g, len(first.runs))]]
            scaled |= len(runs) < len(first.runs)
            step, ev, fixed = _probe(runs)
            per_run.setdefault(g, []).append((step / len(runs), ev / len(runs), fixed / len(runs)))
    # a group not probed costs, per run, the mean of the probed ones' fastest and slowest
    ends = [(min(t, key=sum), max(t, key=sum)) for t in per_run.values()]
    mean = [tuple(sum(e[j][i] for e in ends) / len(ends) for i in range(3)) for j in range(2)]
    per_group = []
    fast = slow = 0.0
    for g in range(n_groups):
        cfg = plan.runs[chunks.get(g, 0).runs[0]].config
        steps, n_eval = cfg.train.steps, len(eval_steps_of(cfg))
        size = chunks.sizes[g]
        timings = [(s * size, e * size, f * size) for s, e, f in per_run.get(g, mean)]
        # a group's chunks: the full ones and the last, shorter one (time ∝ its runs)
        n_chunks = chunks.group_runs[g] / size
        costs = [n_chunks * (fixed + steps * step + n_eval * ev) for step, ev, fixed in timings]
        fast += min(costs)
        slow += max(costs)
        best = min(timings, key=lambda t: t[0] * steps + t[1] * n_eval + t[2])
        per_group.append((*best, n_chunks))
    probe = time.perf_counter() - t_start
    return Estimate(
        seconds=fast + STARTUP_S,
        low=fast + STARTUP_S,
        high=slow + STARTUP_S,
        probe_s=probe,
        per_group=per_group,
        probed=len(per_run),
        scaled=scaled,
        repeated=all(len(t) >= PROBES for t in per_run.values()),
    )
