"""A recipe's verdict: each criterion as stated before the runs, the number measured, PASS/FAIL.

A :class:`Criterion` is one comparison ``value <op> threshold`` with the sentence that states it; a
:class:`Verdict` passes when it has gating criteria and every one passes. A non-gating criterion is a part of
the claim that is reported ("shows" / "does not show") but does not decide the verdict; which parts gate is
fixed in the recipe's code and file before anything runs. A value that could not be measured
(a group with no finished run, a diverged run) is NaN and fails, with the reason in ``notes``.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import asdict, dataclass, field
from typing import Any

OPS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt}


@dataclass(frozen=True)
class Criterion:
    """``value <op> threshold``; ``statement`` says in words what is compared and why."""

    name: str
    statement: str
    value: float
    op: str
    threshold: float
    gating: bool = True  # False: a part of the claim reported (shows / does not show) without deciding the verdict

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"criterion {self.name!r}: op {self.op!r} is not one of {', '.join(OPS)}")

    @property
    def passed(self) -> bool:
        v, t = float(self.value), float(self.threshold)
        return not (math.isnan(v) or math.isnan(t)) and bool(OPS[self.op](v, t))

    def line(self) -> str:
        mark = ("PASS" if self.passed else "FAIL") if self.gating else ("shows" if self.passed else "does not show")
        return f"[{mark}] {self.name}: {_num(self.value)} {self.op} {_num(self.threshold)} -- {self.statement}"


@dataclass(frozen=True)
class Verdict:
    """The outcome of one recipe check: criteria, the numbers behind them, notes."""

    recipe: str
    claim: str
    criteria: tuple[Criterion, ...]
    numbers: dict[str, float] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        gating = [c for c in self.criteria if c.gating]
        return bool(gating) and all(c.passed for c in gating)

    @property
    def label(self) -> str:
        return "PASS" if self.passed else "FAIL"

    def lines(self) -> list[str]:
        """The verdict as printed: claim, one line per criterion, the numbers, notes."""
        out = [f"recipe {self.recipe}: {self.label}", f"claim: {self.claim}"]
        out += [c.line() for c in self.criteria]
        if self.numbers:
            out.append("numbers: " + ", ".join(f"{k}={_num(v)}" for k, v in self.numbers.items()))
        out += [f"note: {n}" for n in self.notes]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe,
            "claim": self.claim,
            "verdict": self.label,
            "criteria": [{**asdict(c), "passed": c.passed} for c in self.criteria],
            "numbers": dict(self.numbers),
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Verdict:
        crit = tuple(
            Criterion(
                c["name"], c["statement"], float(c["value"]), c["op"], float(c["threshold"]), c.get("gating", True)
            )
            for c in d["criteria"]
        )
        return cls(d["recipe"], d["claim"], crit, dict(d.get("numbers", {})), tuple(d.get("notes", ())))

    def mlflow_metrics(self) -> dict[str, float]:
        """``check/passed`` (1/0), ``check/<criterion>`` and its threshold, ``recipe/<number>`` (finite only)."""
        m: dict[str, float] = {"check/passed": float(self.passed)}
        for c in self.criteria:
            m[f"check/{c.name}"] = float(c.value)
            m[f"check/{c.name}.threshold"] = float(c.threshold)
            m[f"check/{c.name}.passed"] = float(c.passed)
        m.update({f"recipe/{k}": float(v) for k, v in self.numbers.items()})
        return {_METRIC_BAD.sub("_", k): v for k, v in m.items() if math.isfinite(v)}


_METRIC_BAD = re.compile(r"[^A-Za-z0-9_\-. :/]")  # MLflow metric names allow these characters only


def _num(v: float) -> str:
    v = float(v)
    if math.isnan(v):
        return "nan"
    return f"{v:.4g}"
