"""The records the grading pipeline passes from step to step (dataclasses, no dicts)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["CheckResult", "GradeReport", "SandboxRun", "Status", "Submission"]


class Status(enum.StrEnum):
    """How far a submission got; the gradebook's ``status`` column."""

    OK = "ok"
    TIMEOUT = "timeout"  # the notebook ran past its total time and was stopped
    CRASHED = "crashed"  # its process died or exited before answering every question
    UNREADABLE = "unreadable"  # not a notebook we could read
    MISSING = "missing"  # the student handed in nothing for this exercise
    SANDBOX_OFF = "sandbox-off"  # graded without bubblewrap: the student's code was not isolated


@dataclass(frozen=True)
class Submission:
    """Step 1 (collect): one notebook handed in, and the exercise it answers."""

    path: Path | None  # None when the student handed in nothing for ``exercise``
    student: str
    exercise: str | None  # None when neither the metadata nor the file name names one
    code_cells: tuple[str, ...] = ()
    problem: str | None = None  # why the notebook cannot be run, if it cannot
    note: str | None = None  # for the teacher, e.g. other copies handed in for the same exercise


@dataclass
class SandboxRun:
    """Step 2 (run sandboxed): what came back from the student's process, none of it trusted."""

    answers_dir: Path  # the scratch folder's ``answers/``; the judge reads it with limits
    sandboxed: bool
    returncode: int | None  # None: stopped at the time limit
    where: str  # the last cell or question the process reported reaching
    cell_errors: list[str] = field(default_factory=list)
    output_tail: str = ""
    output_truncated: bool = False
    problem: str | None = None


@dataclass(frozen=True)
class CheckResult:
    """Step 3 (judge): one hidden check's verdict, with its full message."""

    name: str
    points: float
    max_points: float
    message: str

    @property
    def passed(self) -> bool:
        return self.points == self.max_points


@dataclass
class GradeReport:
    """Step 4 (report): the grade of one student's exercise, as the gradebook and feedback show it."""

    student: str
    exercise: str | None
    notebook: Path | None
    max_score: float
    status: Status
    seed: int
    sandboxed: bool = True
    checks: list[CheckResult] = field(default_factory=list)
    cell_errors: list[str] = field(default_factory=list)
    problem: str | None = None
    note: str | None = None
    seconds: float = 0.0

    @property
    def score(self) -> float:
        return sum(c.points for c in self.checks)

    def summary(self) -> str:
        where = self.notebook or f"{self.student}/{self.exercise}"
        lines = [
            f"{where}: {self.score:g}/{self.max_score:g} points ({self.exercise}, {self.status})"
        ]
        if not self.sandboxed:
            lines.append("  WARNING: graded WITHOUT a sandbox (bubblewrap is not available)")
        if self.problem:
            lines.append(f"  PROBLEM: {self.problem}")
        if self.note:
            lines.append(f"  NOTE: {self.note}")
        lines += [f"  cell error: {e}" for e in self.cell_errors]
        for check in self.checks:
            mark = "PASS" if check.passed else "FAIL"
            lines.append(f"  {mark} {check.name} ({check.points:g}/{check.max_points:g})")
            if not check.passed:
                lines += [f"      {line}" for line in check.message.splitlines()]
        return "\n".join(lines)
