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

Data draws: :meth:`Paper.configs` sweeps ``data.seed`` in every experiment
(:data:`QUICK_DRAWS` quick, :data:`FULL_DRAWS` full), and a claim is judged on
each draw's runs alone (:meth:`ClaimSpec.evaluate`). A row PASSes if its
criterion holds on every draw (:data:`EVERY_DRAW`); a statistical claim (a
mean difference, ``statistical=True``) PASSes if its effect, pooled over draws
× init seeds, exceeds 2 standard errors (:data:`STATISTICAL`). A judge that
cannot apply its criterion (no runs of the kind it compares) returns
:func:`not_judged`: the row is n/a with ``judged`` False, and a negative
control must FAIL with ``judged`` True — on the criterion's substance.
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
    #: data seed (as text) → that draw's status
    draws: dict[str, str] = field(default_factory=dict)
    #: how the draws combine: :data:`EVERY_DRAW` or :data:`STATISTICAL`
    rule: str = ""
    #: False when a guard decided the status (no runs to judge, …), not the criterion
    judged: bool = True
    #: the status of the same row in the full reproduction (``docs/claims-full.json``),
    #: "not run" when there is none; empty in the full reproduction itself
    full: str = ""


def status(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


#: a claim PASSes only if its criterion holds on every data draw
EVERY_DRAW = "holds on every draw"
#: a statistical claim (a mean difference) PASSes if the effect exceeds 2 standard errors
STATISTICAL = "mean effect > 2 SE over draws × seeds"


@dataclass(frozen=True)
class Outcome:
    """What a judge found on one draw of the data.

    Attributes:
        ok: the criterion holds (None: it could not be judged).
        measured: the numbers, as text.
        judged: False when a guard decided (no runs of the kind the criterion
            compares), so a FAIL says nothing about the phenomenon; a negative
            control must FAIL with ``judged`` True.
        effects: a statistical claim's effect samples on this draw (one per
            init seed, say); pooled over draws for the 2-standard-error test.
    """

    ok: bool | None
    measured: str
    judged: bool = True
    effects: tuple[float, ...] = ()


def not_judged(reason: str) -> Outcome:
    """A guard's outcome: the criterion could not be applied (status n/a)."""
    return Outcome(None, reason, judged=False)


#: what a judge returns: an :class:`Outcome` or (criterion holds? None when it
#: cannot be judged, numbers as text)
Verdict = tuple[bool | None, str] | Outcome
Configs = dict[str, dict[str, Any]]

#: data draws per experiment (``data.seed`` = data_seed + 0, 1, …)
QUICK_DRAWS, FULL_DRAWS = 2, 5
#: the swept key that draws the data
DATA_SEED = "data.seed"


def as_outcome(v: Verdict) -> Outcome:
    if isinstance(v, Outcome):
        return v
    ok, measured = v
    return Outcome(ok, measured, judged=ok is not None)


def draws_of(results: Mapping[str, Any], uses: Iterable[str]) -> list[int | None]:
    """The data seeds present in the experiments ``uses`` (``[None]`` when not swept)."""
    seeds: set[int] = set()
    for u in uses:
        ds = results[u]
        if DATA_SEED in ds.coords:
            seeds |= {int(x) for x in np.asarray(ds[DATA_SEED].values).ravel()}
    out: list[int | None] = [*sorted(seeds)] if seeds else [None]
    return out


def one_draw(ds: Any, seed: int | None) -> Any:
    """The runs of ``ds`` on data seed ``seed`` (all of them for None)."""
    if seed is None or DATA_SEED not in ds.coords:
        return ds
    return ds.isel(run=np.flatnonzero(np.asarray(ds[DATA_SEED].values) == seed))


def significant(effects: Iterable[float], minimum: float = 0.0) -> tuple[bool | None, str]:
    """Mean effect > 2 standard errors (and ≥ ``minimum``) over the pooled samples."""
    x = np.asarray([e for e in effects if np.isfinite(e)], dtype=float)
    if x.size < 2:
        return None, f"{x.size} effect sample(s): too few for a standard error"
    mean, se = float(x.mean()), float(x.std(ddof=1) / np.sqrt(x.size))
    ok = mean > 2 * se and mean >= minimum
    return (
        ok,
        f"effect {mean:.3g} ± {se:.3g} (SE, {x.size} samples; needs > 2 SE and ≥ {minimum:g})",
    )


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
    #: a mean difference judged by :func:`significant` over draws × seeds (the
    #: judge returns :class:`Outcome` with ``effects``), not draw by draw
    statistical: bool = False
    #: the smallest mean effect a statistical claim counts
    min_effect: float = 0.0

    @property
    def rule(self) -> str:
        return STATISTICAL if self.statistical else EVERY_DRAW

    def judge_draw(self, results: Mapping[str, Any], seed: int | None) -> Outcome:
        """The judge's outcome on one data draw (all runs for ``seed`` None)."""
        runs = [Runs(one_draw(results[u], seed), u) for u in self.uses]
        empty = [r.name for r in runs if r.n_runs == 0]
        if empty:
            return not_judged(f"no runs on this draw in {', '.join(empty)}")
        return as_outcome(self.judge(*runs))

    def evaluate(self, paper: str, results: Mapping[str, Any]) -> Claim:
        """Judge the claim on stored results ``{experiment: Dataset}``, draw by draw.

        Every draw (``data.seed``) is judged on its own runs; the row PASSes if
        every draw PASSes (:data:`EVERY_DRAW`), or for a statistical claim if
        the effect pooled over draws × seeds exceeds 2 standard errors
        (:data:`STATISTICAL`).
        """
        missing = [u for u in self.uses if u not in results]
        draws: dict[str, str] = {}
        if missing:
            ok: bool | None = None
            measured, judged = f"experiments missing: {', '.join(missing)}", False
        else:
            outs = {s: self.judge_draw(results, s) for s in draws_of(results, self.uses)}
            draws = {("all" if s is None else str(s)): status(o.ok) for s, o in outs.items()}
            judged = all(o.judged for o in outs.values())
            texts = [o.measured for o in outs.values()]
            if len(outs) > 1:
                texts = [f"draw {k}: {t}" for k, t in zip(draws, texts, strict=True)]
            measured = "; ".join(texts) if len(texts) == 1 else " | ".join(texts)
            if self.statistical:
                ok, text = significant(
                    (e for o in outs.values() for e in o.effects), self.min_effect
                )
                judged = judged or ok is not None
                measured = f"{text} | {measured}"
            else:
                vals = list(draws.values())
                ok = False if "FAIL" in vals else (None if "n/a" in vals else True)
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
            draws,
            self.rule,
            judged,
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
    #: the paper's own figures: (experiments used, ``(results, folder) -> [png]``)
    figures: list[tuple[tuple[str, ...], Callable[..., list[Any]]]] = field(default_factory=list)

    def figure(self, *uses: str) -> Callable[[Callable[..., list[Any]]], Callable[..., list[Any]]]:
        """Register the decorated ``(results, folder) -> [png]`` as one of the paper's figures.

        It is drawn by ``reproduce`` when every experiment in ``uses`` was run,
        on the first data draw of each (``results`` holds only ``uses``).
        """

        def register(fn: Callable[..., list[Any]]) -> Callable[..., list[Any]]:
            self.figures.append((tuple(uses), fn))
            return fn

        return register

    def draw_figures(self, results: Mapping[str, Any], folder: Any) -> list[Any]:
        """The paper's figures whose experiments are all in ``results``, into ``folder``."""
        from ._figures import first_draw

        out: list[Any] = []
        for uses, fn in self.figures:
            if all(u in results for u in uses):
                out += fn({u: first_draw(results[u]) for u in uses}, folder)
        return out

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
        statistical: bool = False,
        min_effect: float = 0.0,
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
                    statistical,
                    min_effect,
                )
            )
            return judge

        return register

    def judge(self, results: Mapping[str, Any], keys: Iterable[str] | None = None) -> list[Claim]:
        """Claim rows in key order (L1, L2, …, L10), judged on ``{experiment: Dataset}``.

        Args:
            results: the experiments' Datasets.
            keys: only these claims (all when None).
        """

        def order(c: ClaimSpec) -> tuple[str, int]:
            head = c.key.rstrip("0123456789")
            return head, int(c.key[len(head) :] or 0)

        want = None if keys is None else set(keys)
        return [
            c.evaluate(self.key, results)
            for c in sorted(self.claims, key=order)
            if want is None or c.key in want
        ]

    def spec(self, key: str) -> ClaimSpec:
        """Claim ``key``'s definition (KeyError when there is none)."""
        for c in self.claims:
            if c.key == key:
                return c
        raise KeyError(key)

    def configs(
        self,
        quick: bool,
        data_seed: int = 0,
        draws: int | None = None,
        seeds: int | None = None,
        only: Iterable[str] | None = None,
    ) -> Configs:
        """The experiments' configs with the data draws (and init seeds) swept.

        Args:
            quick: the quick recipes.
            data_seed: the first data seed; draws are ``data_seed + 0, 1, …``.
            draws: number of data draws (:data:`QUICK_DRAWS` / :data:`FULL_DRAWS`).
            seeds: number of init seeds ``0 … seeds−1`` (the recipe's when None).
            only: only these experiments (all when None).
        """
        n = draws if draws is not None else (QUICK_DRAWS if quick else FULL_DRAWS)
        out = self.experiments(quick)
        if only is not None:
            keep = set(only)
            out = {k: v for k, v in out.items() if k in keep}
        for cfg in out.values():
            sweep = cfg.setdefault("sweep", {})
            sweep[DATA_SEED] = [data_seed + i for i in range(n)]
            if seeds is not None:
                sweep["seed"] = list(range(seeds))
        return out

    def control_configs(self, key: str) -> Configs:
        """The configs of claim ``key``'s negative control (from the quick ones, one draw)."""
        spec = self.spec(key)
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

    @property
    def n_runs(self) -> int:
        return int(self.ds.sizes.get("run", 0))

    def has(self, var: str) -> bool:
        return var in self.ds

    def data(self, name: str) -> np.ndarray:
        """``(run, …)``: each run's ``X_train``/``y_train``/``X_test``/``y_test``."""
        from ..results_data import run_data

        return np.asarray(run_data(self.ds, name), dtype=float)

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
def test_acc_above_critical(r: Runs, gain: float) -> Outcome:
    """Best test accuracy over rates above critical minus best below, per init seed.

    Converged runs only. A statistical criterion: each seed's gap is one effect
    sample (pooled over draws by :func:`significant`); this draw holds if the
    mean gap is ≥ ``gain``.
    """
    rates, conv, seeds = r.rates, r.converged(), r.coord("seed")
    acc = r.scalar("final_test_acc")
    gaps = []
    for s in sorted(set(seeds.tolist())):
        above = acc[conv & (rates > 1) & (seeds == s)]
        below = acc[conv & (rates < 1) & (seeds == s)]
        if above.size and below.size:
            gaps.append(float(above.max() - below.max()))
    by_rate = {float(x): float(np.mean(acc[(rates == x) & conv])) for x in sorted(set(rates[conv]))}
    text = "mean test acc by converged rate " + ", ".join(
        f"{x:g}: {g(a)}" for x, a in by_rate.items()
    )
    if not gaps:
        return not_judged(f"{text} (needs converged runs on both sides of critical)")
    return Outcome(
        float(np.mean(gaps)) >= gain,
        f"best above − best below critical per seed {gl(gaps)}; {text}",
        effects=tuple(gaps),
    )
