"""The candidate space (target x prune x recovery x int8 budget), its order, and the two rules
that cut it short: dominance (a failed candidate condemns every less accurate one) and a speed
bound (a candidate that cannot beat the best so far is not tried).

Everything here is pure: it reads finished trial records and says what to try next, so the
search is tested without exporting anything.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from optimize.errors import InputError
from optimize.tune.goal import Goal

#: targets tune can time on CPU (TensorRT bundles are built and timed on their GPU)
TUNABLE = ("ort-int8", "ort-fp32", "ort-fp16")
DEFAULT_TARGETS = ("ort-int8", "ort-fp32")
#: 10-30%: at 30% this small distilled encoder already reads 0.947-0.98 against the unpruned one
#: (README, Pruning), so deeper cuts only suit task goals, which pass --prune themselves
DEFAULT_PRUNE = (0.0, 0.1, 0.2, 0.3)
#: 400 steps (~4-5 minutes on 2 cores) is the recovery a 45-minute search can afford twice
DEFAULT_RECOVER = (0, 400)
#: accuracy rank of a target's arithmetic: higher keeps more (used by dominance)
PRECISION_RANK = {"ort-fp32": 3, "ort-fp16": 2, "ort-int8": 1}
#: a prior on CPU speed, only to order candidates (int8 kernels first; fp16 on CPU is slowest)
SPEED_PRIOR = {"ort-int8": 3, "ort-fp32": 2, "ort-fp16": 1}
#: a pruned artifact is at most 1/(1-p) faster than its unpruned self; this slack covers timing
#: noise between trials measured minutes apart (30% read 1.37x against a 1.43x bound)
PRUNE_BOUND_SLACK = 1.1


@dataclass(frozen=True)
class Candidate:
    """One setting of the knobs. ``budget``: the int8 search's mean-cosine budget (None: not int8)."""

    target: str
    prune: float = 0.0
    recover: int = 0
    budget: float | None = None

    @property
    def key(self) -> str:
        budget = "-" if self.budget is None else f"{self.budget:g}"
        return f"{self.target}|prune={self.prune:g}|recover={self.recover}|budget={budget}"

    @property
    def label(self) -> str:
        parts = [self.target]
        if self.prune:
            parts.append(f"prune {self.prune:g}")
        if self.recover:
            parts.append(f"recover {self.recover}")
        if self.budget is not None:
            parts.append(f"int8 budget {self.budget:g}")
        return ", ".join(parts)

    @property
    def accuracy_budget(self) -> float:
        return 1.0 if self.budget is None else self.budget

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "prune": self.prune, "recover": self.recover, "budget": self.budget}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Candidate:
        return cls(str(data["target"]), float(data.get("prune", 0.0)), int(data.get("recover", 0)),
                   None if data.get("budget") is None else float(data["budget"]))


def at_least_as_accurate(a: Candidate, b: Candidate) -> bool:
    """Whether ``a`` keeps at least what ``b`` keeps: no lower precision, no tighter int8 budget
    no deeper cut, no shorter recovery where ``b`` is cut. If ``a`` fails the goal,
    so does ``b`` (the assumption dominance rests on)."""
    if PRECISION_RANK[a.target] < PRECISION_RANK[b.target]:
        return False
    if a.accuracy_budget < b.accuracy_budget:
        return False
    if a.prune > b.prune:
        return False
    return a.prune == 0.0 or a.recover >= b.recover


def int8_budgets(goal: Goal) -> tuple[float, ...]:
    """The goal itself, and one halfway to 1 for candidates the cut already spends part of the goal on."""
    floor = goal.cosine if goal.cosine is not None else 0.99
    tight = round(1.0 - (1.0 - floor) / 2.0, 6)
    return (floor,) if tight == floor else (floor, tight)


def build_space(targets: Iterable[str], prunes: Iterable[float], recovers: Iterable[int], goal: Goal) -> list[Candidate]:
    """Every candidate, in the order tried: unpruned first (cheapest, likely within a parity
    goal), then cuts without recovery, shallow before deep, then with recovery, short before
    long; within a step, the target expected fastest first, the looser int8 budget first.
    Recovery without a cut is meaningless and left out."""
    targets = tuple(dict.fromkeys(targets))
    for target in targets:
        if target not in TUNABLE:
            raise InputError(f"tune cannot time target {target!r}", f"choose from: {', '.join(TUNABLE)}")
    prunes = tuple(sorted(set(float(p) for p in prunes)))
    recovers = tuple(sorted(set(int(r) for r in recovers)))
    if any(not 0.0 <= p < 1.0 for p in prunes) or any(r < 0 for r in recovers):
        raise InputError("--prune fractions must be in [0, 1) and --recover steps 0 or more", "pass e.g. --prune 0,0.1,0.3 --recover 0,400")
    budgets = int8_budgets(goal)
    space: list[Candidate] = []
    for prune in prunes:
        for recover in recovers if prune else (0,):
            for target in targets:
                # a cut spends part of the goal already: an int8 search that spends all of it
                # again would miss, so a cut candidate gets the tight budget alone
                for budget in (budgets if not prune else budgets[-1:]) if target == "ort-int8" else (None,):
                    space.append(Candidate(target, prune, recover, budget))

    def order(c: Candidate) -> tuple:
        return (c.prune > 0, c.recover, c.prune, -SPEED_PRIOR[c.target], c.accuracy_budget)

    return sorted(dict.fromkeys(space), key=order)


# -- the objective -----------------------------------------------------------------------------

OBJECTIVES = ("latency", "throughput", "size")


def score(record: Mapping[str, Any], objective: str) -> float:
    """Higher is better: the speed ratio against PyTorch eager (latency, throughput), or minus bytes."""
    if objective == "size":
        return -float(record["size_bytes"])
    return float(record["speedup"])


def met(record: Mapping[str, Any]) -> bool:
    return record.get("status") == "met"


def best_record(records: Iterable[Mapping[str, Any]], objective: str) -> Mapping[str, Any] | None:
    """The met trial with the best objective; ties go to the more accurate one."""
    chosen = [r for r in records if met(r)]
    if not chosen:
        return None
    return max(chosen, key=lambda r: (score(r, objective), float(r.get("figures", {}).get("accuracy", 0.0))))


def bound(candidate: Candidate, records: Iterable[Mapping[str, Any]], objective: str) -> float | None:
    """The best score ``candidate`` could reach, from met unpruned trials of its target at a looser
    or equal int8 budget (at least as fast as it would be unpruned); None: nothing known yet.
    A cut of fraction p removes that share of the encoder's work, so it is at most 1/(1-p) faster
    (and at least (1-p) of the bytes)."""
    same = [
        r for r in records
        if met(r) and r["candidate"]["target"] == candidate.target and float(r["candidate"]["prune"]) == 0.0
        and Candidate.from_dict(r["candidate"]).accuracy_budget <= candidate.accuracy_budget
    ]
    if not same:
        return None
    top = max(score(r, objective) for r in same)
    if candidate.prune == 0.0:
        return top
    if objective == "size":
        return top * (1.0 - candidate.prune)  # minus bytes: a lower bound on bytes is an upper bound here
    return top * PRUNE_BOUND_SLACK / (1.0 - candidate.prune)


@dataclass(frozen=True)
class Decision:
    """What the search says about one candidate: run it, or why not."""

    candidate: Candidate
    verdict: str  # "run" | "done" | "dominated" | "cannot-beat" | "in-flight"
    why: str = ""

    def describe(self) -> str:
        """One line: the candidate, the verdict and why (tune's output and frontier.md alike)."""
        return f"{self.candidate.label}: {self.verdict}{': ' + self.why if self.why else ''}"


def decide(space: list[Candidate], records: Mapping[str, Mapping[str, Any]], objective: str,
           in_flight: Iterable[str] = ()) -> list[Decision]:
    """Each candidate's verdict given the finished trials (by key) and those running now."""
    finished = list(records.values())
    failed = [Candidate.from_dict(r["candidate"]) for r in finished if r.get("status") == "missed"]
    best = best_record(finished, objective)
    running = set(in_flight)
    decisions = []
    for c in space:
        if c.key in records:
            decisions.append(Decision(c, "done"))
            continue
        if c.key in running:
            decisions.append(Decision(c, "in-flight"))
            continue
        culprit = next((f for f in failed if at_least_as_accurate(f, c)), None)
        if culprit is not None:
            decisions.append(Decision(c, "dominated", f"{culprit.label} missed the goal and keeps at least as much"))
            continue
        ceiling = bound(c, finished, objective)
        if best is not None and ceiling is not None and ceiling <= score(best, objective):
            decisions.append(Decision(c, "cannot-beat", f"at best {_show(ceiling, objective)} against {_show(score(best, objective), objective)} ({Candidate.from_dict(best['candidate']).label})"))
            continue
        decisions.append(Decision(c, "run"))
    return decisions


def _show(value: float, objective: str) -> str:
    return f"{-value / 1e6:.1f} MB" if objective == "size" else f"{value:.2f}x"
