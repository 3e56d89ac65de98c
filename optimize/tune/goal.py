"""What the user asks a tuned artifact to keep: a parity goal (``cosine>=0.99``) or a task goal
(``--eval-data FILE --max-accuracy-drop 1.0``), parsed once into a frozen value."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from optimize.errors import InputError

#: the figures a parity goal may name, and what each bounds (both against the unpruned PyTorch fp32 model)
METRICS = {"cosine": "mean cosine on held-out text", "agreement": "top-1 neighbour or label agreement"}

_CLAUSE = re.compile(r"^\s*([a-z_]+)\s*>=\s*([0-9]*\.?[0-9]+)\s*$")


@dataclass(frozen=True)
class Goal:
    """``cosine``/``agreement``: parity floors; ``eval_data``: the task gate instead (classifiers)."""

    cosine: float | None = 0.99
    agreement: float | None = None
    eval_data: Path | None = None
    max_accuracy_drop: float = 1.0
    text_column: str = "text"
    label_column: str = "label"

    @property
    def is_task(self) -> bool:
        return self.eval_data is not None

    def describe(self) -> str:
        if self.is_task:
            return f"accuracy drop <= {self.max_accuracy_drop} points on {self.eval_data}"
        parts = [f"cosine>={self.cosine}"] if self.cosine is not None else []
        if self.agreement is not None:
            parts.append(f"agreement>={self.agreement}")
        return ",".join(parts)


def parse_goal(text: str | None, eval_data: Path | None = None, max_accuracy_drop: float = 1.0,
               text_column: str = "text", label_column: str = "label") -> Goal:
    """``"cosine>=0.99"`` or ``"cosine>=0.99,agreement>=0.9"``; with ``eval_data`` the task goal.
    Anything else is one InputError line naming what is accepted."""
    fix = 'pass e.g. --goal "cosine>=0.99" (figures: cosine, agreement; values in (0, 1])'
    if eval_data is not None:
        if text:
            raise InputError("--goal and --eval-data both given", "pass one: a parity goal, or --eval-data FILE --max-accuracy-drop N")
        if max_accuracy_drop < 0:
            raise InputError(f"--max-accuracy-drop cannot be negative, got {max_accuracy_drop}", "pass e.g. --max-accuracy-drop 1.0")
        return Goal(cosine=None, eval_data=eval_data, max_accuracy_drop=max_accuracy_drop, text_column=text_column, label_column=label_column)
    if text is None:
        return Goal()
    if not text.strip():
        raise InputError("--goal is empty", fix)
    values: dict[str, float] = {}
    for clause in text.split(","):
        match = _CLAUSE.match(clause)
        if not match or match.group(1) not in METRICS:
            raise InputError(f"cannot read goal {text!r} (at {clause.strip()!r})", fix)
        value = float(match.group(2))
        if not 0.0 < value <= 1.0:
            raise InputError(f"goal {match.group(1)} must be in (0, 1], got {value}", fix)
        values[match.group(1)] = value
    return Goal(cosine=values.get("cosine"), agreement=values.get("agreement"))
