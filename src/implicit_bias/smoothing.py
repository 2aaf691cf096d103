"""Time averages of per-iteration traces, for comparing GD with its central flow.

Cohen, Damian, Talwalkar, Kolter & Lee 2024 (arXiv 2410.24206) compare the
central flow with GD's *time-averaged* (locally smoothed) trajectory, not with
the oscillating iterates. :func:`centred_average` is that smoothing for a
trace stored per iteration (``loss``), read at the eval steps by :func:`at_steps`.
"""

from __future__ import annotations

import numpy as np


def centred_average(x: np.ndarray, half: int) -> np.ndarray:
    """Centred moving average over ``2·half`` iterations, half weight at both ends.

    ``y_t = (x_{t−h}/2 + x_{t−h+1} + … + x_{t+h−1} + x_{t+h}/2) / (2h)``: a
    trapezoid window, exactly centred on t, which removes a period-2
    oscillation (GD's flip-flop along the top eigenvector at the edge of
    stability) exactly. Where the window does not fit, or holds a non-finite
    value, the result is NaN.

    Args:
        x: ``(..., T)`` trace over iterations (last axis).
        half: h ≥ 1, half the window's length in iterations.

    Returns:
        ``(..., T)`` float64 array.
    """
    if half < 1:
        raise ValueError(f"half must be ≥ 1 (got {half})")
    x = np.asarray(x, dtype=np.float64)
    T = x.shape[-1]
    out = np.full(x.shape, np.nan)
    if T < 2 * half + 1:
        return out
    bad = ~np.isfinite(x)
    xz = np.where(bad, 0.0, x)
    c = np.concatenate([np.zeros((*x.shape[:-1], 1)), np.cumsum(xz, axis=-1)], axis=-1)
    nb = np.concatenate(
        [np.zeros((*x.shape[:-1], 1)), np.cumsum(bad.astype(np.int64), axis=-1)], axis=-1
    )
    t = np.arange(half, T - half)
    lo, hi = t - half, t + half  # inclusive ends
    full = c[..., hi + 1] - c[..., lo]  # sum x_lo..x_hi
    ends = xz[..., lo] + xz[..., hi]
    val = (full - ends / 2) / (2 * half)
    anybad = (nb[..., hi + 1] - nb[..., lo]) > 0
    out[..., t] = np.where(anybad, np.nan, val)
    return out


def at_steps(trace: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """``(run, iteration)`` → ``(run, step)``: the values at the eval steps (iterations)."""
    return np.asarray(trace, dtype=np.float64)[..., np.asarray(steps, dtype=np.int64)]
