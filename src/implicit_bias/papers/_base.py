"""What every paper module shares: claim rows, claim definitions, run lookups.

A paper module (``papers/liu2023.py``, …) defines one :class:`Paper`: its
experiments (ordinary configs, run by the ordinary sweep engine) and its
claims, each a small function registered with :meth:`Paper.claim`. A claim
names its *source* (section, theorem or figure of the paper; a follow-up
paper; or ``derived`` with where), the *setting* that source states, the
*criterion* it is judged by, and a *negative control*: the same criterion
applied to a setting where the phenomenon is absent, which must FAIL (the
test suite runs every control). A check that cannot be given a failing
control is registered with ``kind="sanity"`` and listed apart.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

STATUSES = ("PASS", "FAIL", "n/a")
KINDS = ("claim", "sanity")

#: phases in which a run has not reached a solution (SPEC §3 rule v2)
NOT_CONVERGED = ("diverged", "dead", "not_converged")


@dataclass(frozen=True)
class Claim:
    """One row of the claims table (SPEC §5).

    Attributes:
        paper: paper key (``liu2023``).
        key: short id (``L1``).
        kind: ``claim`` (has a negative control that FAILs) or ``sanity``.
        claim: what the source says, in one sentence.
        source: section/theorem/figure of the paper, a follow-up paper, or
            ``derived (…)``.
        setting: the setting the source states (activation, loss, GD or
            gradient flow, data) and the one run here.
        criterion: how the claim is judged on the measured numbers.
        measured: the numbers, as text.
        status: ``PASS``, ``FAIL`` or ``n/a``.
        experiment: the experiment folder(s) the numbers come from.
    """

    paper: str
    key: str
    kind: str
    claim: str
    source: str
    setting: str
    criterion: str
    measured: str
    status: str
    experiment: str


def status(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


#: what a judge returns: (criterion holds? None when it cannot be judged, numbers as text)
Verdict = tuple[bool | None, str]
Configs = dict[str, dict[str, Any]]


@dataclass(frozen=True)
class ClaimSpec:
    """A claim's definition: its text, source, criterion, judge and negative control.

    Attributes:
        key, claim, source, setting, criterion, kind: as in :class:`Claim`.
        uses: the experiments the judge reads, in the order of its arguments.
        judge: ``(*runs: Runs) -> Verdict``.
        control: ``configs -> configs``: from the quick configs of ``uses``,
            the configs of a setting where the phenomenon is absent (small
            enough for the test suite); the judge must FAIL on them.
        control_note: why the phenomenon is absent in the control.
    """

    key: str
    claim: str
    source: str
    setting: str
    criterion: str
    uses: tuple[str, ...]
    judge: Callable[..., Verdict]
    control: Callable[[Configs], Configs] | None = None
    control_note: str = ""
    kind: str = "claim"

    def evaluate(self, paper: str, results: Mapping[str, Any]) -> Claim:
        """Judge the claim on stored results ``{experiment: Dataset}``."""
        missing = [u for u in self.uses if u not in results]
        if missing:
            ok, measured = None, f"experiments missing: {', '.join(missing)}"
        else:
            ok, measured = self.judge(*(Runs(results[u], u) for u in self.uses))
        return Claim(
            paper,
            self.key,
            self.kind,
            self.claim,
            self.source,
            self.setting,
            self.criterion,
            measured,
            status(ok),
            ", ".join(self.uses),
        )


@dataclass
class Paper:
    """A paper's reproduction: experiments and claims (register with :meth:`claim`).

    Attributes:
        key: ``liu2023`` etc.
        title: authors, year, arXiv id and topic.
        experiments: ``quick -> {name: config}``; each config's sweep varies only
            per-run keys, so each experiment is one group of runs.
        claims: the registered claims, in table order.
    """

    key: str
    title: str
    experiments: Callable[[bool], Configs]
    claims: list[ClaimSpec] = field(default_factory=list)

    def claim(
        self,
        key: str,
        *,
        claim: str,
        source: str,
        setting: str,
        criterion: str,
        uses: str | tuple[str, ...],
        control: Callable[[Configs], Configs] | None = None,
        control_note: str = "",
        kind: str = "claim",
    ) -> Callable[[Callable[..., Verdict]], Callable[..., Verdict]]:
        """Register the decorated judge as claim ``key`` of this paper."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}")
        if kind == "claim" and control is None:
            raise ValueError(f"claim {key} needs a negative control (or kind='sanity')")

        def register(judge: Callable[..., Verdict]) -> Callable[..., Verdict]:
            self.claims.append(
                ClaimSpec(
                    key,
                    claim,
                    source,
                    setting,
                    criterion,
                    (uses,) if isinstance(uses, str) else tuple(uses),
                    judge,
                    control,
                    control_note,
                    kind,
                )
            )
            return judge

        return register

    def judge(self, results: Mapping[str, Any]) -> list[Claim]:
        """Every claim row in key order (L1, L2, …, L10), judged on ``{experiment: Dataset}``."""

        def order(c: ClaimSpec) -> tuple[str, int]:
            head = c.key.rstrip("0123456789")
            return head, int(c.key[len(head) :] or 0)

        return [c.evaluate(self.key, results) for c in sorted(self.claims, key=order)]

    def control_configs(self, key: str) -> Configs:
        """The configs of claim ``key``'s negative control (from the quick ones)."""
        spec = next(c for c in self.claims if c.key == key)
        if spec.control is None:
            raise ValueError(f"{self.key} {key} has no negative control")
        quick = self.experiments(True)
        return spec.control({u: copy.deepcopy(quick[u]) for u in spec.uses})


# ------------------------------------------------------------------ configs
def with_(cfg: dict[str, Any], **dotted: Any) -> dict[str, Any]:
    """A deep copy of ``cfg`` with dotted keys set (``train__lr=…`` or ``{"sweep": …}``).

    Keys use ``__`` for dots (``model__init_scale=0.2``); a sweep entry is set
    with ``sweep={"train.lr": [...]}`` merged into the existing sweep.
    """
    out = copy.deepcopy(cfg)
    for key, value in dotted.items():
        if key == "sweep":
            out.setdefault("sweep", {}).update(value)
            continue
        node = out
        parts = key.split("__")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


# ------------------------------------------------------------------ formatting
def g(x: float) -> str:
    return "nan" if not np.isfinite(x) else f"{x:.3g}"


def gl(xs: Iterable[float]) -> str:
    return "[" + ", ".join(g(float(x)) for x in xs) + "]"


# ------------------------------------------------------------------ run lookups
class Runs:
    """Per-run lookups in one experiment's Dataset (one group of runs)."""

    def __init__(self, ds, name: str):
        self.ds, self.name = ds, name

    def coord(self, key: str) -> np.ndarray:
        return np.asarray(self.ds[key].values)

    def scalar(self, var: str) -> np.ndarray:
        return np.asarray(self.ds[var].values, dtype=float)

    def has(self, var: str) -> bool:
        return var in self.ds

    def at(self, var: str, step: int) -> np.ndarray:
        return np.asarray(self.ds[var].sel(step=step).values, dtype=float)

    def trace(self, var: str) -> np.ndarray:
        """``(run, step)`` or ``(run, iteration)`` values of a traced variable."""
        return np.asarray(self.ds[var].values, dtype=float)

    def phases(self) -> np.ndarray:
        return np.asarray(self.ds["phase"].values).astype(str)

    @property
    def steps(self) -> np.ndarray:
        return np.asarray(self.ds["step"].values)

    @property
    def rates(self) -> np.ndarray:
        """The swept rate ``train.lr`` (critical units where the recipe uses them)."""
        return self.coord("train.lr").astype(float)

    @property
    def eta(self) -> np.ndarray:
        """The absolute base rate η of every run."""
        return self.scalar("lr")

    def converged(self) -> np.ndarray:
        """Runs that neither diverged, died nor failed to converge (SPEC §3)."""
        return ~np.isin(self.phases(), NOT_CONVERGED)

    def loss_rise(self) -> np.ndarray:
        """max_t L_t / L_0 − 1 per run: how far the loss rose above its initial value."""
        loss = self.trace("loss")
        peak = np.nanmax(np.where(np.isfinite(loss), loss, np.nan), axis=1)
        return peak / loss[:, 0] - 1

    def phase_by_rate(self) -> dict[float, list[str]]:
        out: dict[float, list[str]] = {}
        for lr, ph in zip(self.rates, self.phases(), strict=True):
            out.setdefault(float(lr), []).append(str(ph))
        return dict(sorted(out.items()))

    def phase_text(self) -> str:
        def short(phs: list[str]) -> str:
            return "/".join(sorted(set(phs))) if len(set(phs)) > 1 else phs[0]

        return ", ".join(f"{lr:g}: {short(p)}" for lr, p in self.phase_by_rate().items())

    def limits(self) -> tuple[float, float]:
        """(largest rate with a converged run, smallest rate with a diverging run); NaN if none.

        A dead net is neither: it did not diverge, and it did not converge.
        """
        rates, ph = self.rates, self.phases()
        conv, div = rates[self.converged()], rates[ph == "diverged"]
        return (
            float(conv.max()) if conv.size else math.nan,
            float(div.min()) if div.size else math.nan,
        )

    def sharpness_at_loss(self, i: int, loss: float) -> float:
        """Run i's sharpness at the first eval step where its loss is ≤ ``loss``."""
        tr = self.ds["loss"].values[i]
        steps = self.steps
        hit = steps[tr[steps] <= loss * (1 + 1e-3)]
        t = hit[0] if hit.size else steps[-1]
        return float(self.ds["sharpness"].values[i][list(steps).index(t)])


# ------------------------------------------------------------------ shared criteria
def test_acc_above_critical(r: Runs, gain: float) -> Verdict:
    """Best test accuracy over rates above critical vs below (converged runs only)."""
    rates, conv = r.rates, r.converged()
    acc = r.scalar("final_test_acc")
    by_rate = {float(x): float(np.mean(acc[(rates == x) & conv])) for x in sorted(set(rates[conv]))}
    above = [a for x, a in by_rate.items() if x > 1]
    below = [a for x, a in by_rate.items() if x < 1]
    if not above or not below:
        return False, f"test acc by rate {by_rate} (needs converged runs on both sides)"
    best_above, best_below = max(above), max(below)
    return best_above >= best_below + gain, (
        f"best test acc above critical {g(best_above)} vs below {g(best_below)}; by rate "
        + ", ".join(f"{x:g}: {g(a)}" for x, a in by_rate.items())
    )
