"""Learning-rate schedules as functions of the step (optax-style).

A schedule maps step t to a multiplier of the base rate. The engine builds a
table ``lr_t`` of shape ``(runs, steps + 1)`` once, so runs with different
rates or schedules are just different rows: the rate is a tensor, never a
Python float baked into the step.
"""

from __future__ import annotations

import math

import numpy as np

from .config import ConstantSchedule, CosineSchedule, StepSchedule, WarmupSchedule


def multipliers(schedule: object, steps: int) -> np.ndarray:
    """Multiplier of the base rate at t = 0…steps, shape ``(steps + 1,)``.

    ``step``: ×factor at every t ≥ each entry of ``at`` (annealing, Liu et al.
    2023 §5); ``cosine``: from 1 down to ``final`` at t = steps; ``warmup``:
    linear from 1/steps_w up to 1 over ``steps_w`` steps, then constant.
    """
    t = np.arange(steps + 1, dtype=np.float64)
    if isinstance(schedule, ConstantSchedule):
        return np.ones_like(t)
    if isinstance(schedule, StepSchedule):
        count = np.zeros_like(t)
        for s in schedule.at:
            count += t >= s
        return np.power(schedule.factor, count)
    if isinstance(schedule, CosineSchedule):
        frac = np.minimum(t / max(steps, 1), 1.0)
        return schedule.final + (1 - schedule.final) * 0.5 * (1 + np.cos(math.pi * frac))
    if isinstance(schedule, WarmupSchedule):
        return np.minimum(1.0, (t + 1) / schedule.steps)
    raise ValueError(f"unknown schedule {schedule!r}")
