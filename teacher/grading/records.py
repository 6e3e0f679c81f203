"""The records the grading pipeline passes from step to step (dataclasses, no dicts)."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "CheckResult",
    "GradeReport",
    "SandboxRun",
    "Status",
    "Submission",
    "printable",
    "quoted",
]

# Control characters a terminal or an editor would act on (ANSI escapes, carriage returns, ...).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def printable(text: object) -> str:
    """``text`` as something every file and terminal can hold: lone surrogates (a non-UTF-8 file
    name, an ``Exception("\\ud800")``) and control characters written as escapes, never raised."""
    value = text if isinstance(text, str) else str(text)
    value = value.encode("utf-8", "backslashreplace").decode("utf-8")
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), value)


def quoted(text: str, indent: str = "      ") -> list[str]:
    """Text that may come from the student's code, one ``| ``-marked line each, deeper than any
    line of the grader's own, so that it cannot pass for a verdict (a forged "PASS ...")."""
    lines = printable(text).replace("\t", "    ").splitlines() or [""]
    return [f"{indent}| {line}" for line in lines]


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
    notes: list[str] = field(default_factory=list)  # the grader's own words on what happened


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
    notes: list[str] = field(default_factory=list)  # what the grader saw happen (its own words)
    student_output: str = ""  # the last lines the notebook printed, when they explain a problem

    @property
    def score(self) -> float:
        return sum(c.points for c in self.checks)

    def summary(self) -> str:
        """The feedback text. Lines at two spaces are the grader's; anything the student's code
        could have written (cell errors, output, the messages of failed checks, which quote what
        the student's code raised) is quoted below them with ``|``, so it cannot forge a verdict."""
        where = printable(self.notebook or f"{self.student}/{self.exercise}")
        lines = [
            f"{where}: {self.score:g}/{self.max_score:g} points ({self.exercise}, {self.status})"
        ]
        if not self.sandboxed:
            lines.append("  WARNING: graded WITHOUT a sandbox (bubblewrap is not available)")
        if self.problem:
            lines.append(f"  PROBLEM: {printable(self.problem)}")
        if self.note:
            lines.append(f"  NOTE: {printable(self.note)}")
        lines += [f"  NOTE: {printable(n)}" for n in self.notes]
        if self.student_output.strip():
            lines.append("  the notebook's last output (quoted):")
            lines += quoted(self.student_output)
        for error in self.cell_errors:
            cell, _, message = error.partition(": ")
            if not cell.startswith("In ["):
                cell, message = "a cell", error
            lines.append(f"  cell error in {printable(cell)} (its own message, quoted):")
            lines += quoted(message)
        for check in self.checks:
            mark = "PASS" if check.passed else "FAIL"
            lines.append(
                f"  {mark} {printable(check.name)} ({check.points:g}/{check.max_points:g})"
            )
            if not check.passed:
                lines += quoted(check.message)
        return "\n".join(lines)
