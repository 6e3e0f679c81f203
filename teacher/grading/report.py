"""Step 4, report: the class's gradebook (one CSV row per student and exercise) and feedback files.

Both are written atomically; an existing gradebook is kept as ``<name>.backup`` first, so a run
that is interrupted never destroys the previous grades. Every text is made printable first (a
non-UTF-8 file name, a lone surrogate in an exception), and a feedback file that cannot be
written costs that student's file only, never the gradebook or anyone else's feedback.
"""

from __future__ import annotations

import csv
import hashlib
import io
import shutil
import sys
from collections import defaultdict
from pathlib import Path

from course_lib.safe_io import atomic_write
from teacher.grading.records import GradeReport, printable

__all__ = ["GRADEBOOK_COLUMNS", "write_feedback", "write_gradebook"]

GRADEBOOK_COLUMNS = [
    "student",
    "exercise",
    "status",
    "score",
    "max_score",
    "problem",
    "note",
    "failed_checks",
    "cell_errors",
    "submission",
    "sandboxed",
    "seed",
    "seconds",
]


def _row(root: Path, report: GradeReport) -> dict[str, object]:
    submission = ""
    if report.notebook is not None:
        try:
            submission = str(report.notebook.relative_to(root))
        except ValueError:
            submission = str(report.notebook)
    row = {
        "student": report.student,
        "exercise": report.exercise or "",
        "status": str(report.status),
        "score": f"{report.score:g}",
        "max_score": f"{report.max_score:g}",
        "problem": report.problem or "",
        "note": report.note or "",
        "failed_checks": "; ".join(c.name for c in report.checks if not c.passed),
        "cell_errors": len(report.cell_errors),
        "submission": submission,
        "sandboxed": "yes" if report.sandboxed else "NO",
        "seed": report.seed,
        "seconds": f"{report.seconds:.1f}",
    }
    return {key: printable(value) for key, value in row.items()}


def write_gradebook(root: Path, reports: list[GradeReport], out: Path) -> None:
    """One row per report, sorted by student and exercise; the old file is kept as a backup."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=GRADEBOOK_COLUMNS)
    writer.writeheader()
    ordered = sorted(reports, key=lambda r: (r.student, r.exercise or "", str(r.notebook)))
    writer.writerows(_row(root, r) for r in ordered)
    if out.exists():
        atomic_write(out.with_name(out.name + ".backup"), lambda temp: shutil.copyfile(out, temp))
    atomic_write(out, lambda temp: temp.write_text(buffer.getvalue(), "utf-8"))


def write_feedback(reports: list[GradeReport], folder: Path) -> list[Path]:
    """One text file per student: every exercise, every check with its full message, cell errors."""
    by_student: dict[str, list[GradeReport]] = defaultdict(list)
    for report in reports:
        by_student[report.student].append(report)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for student, theirs in sorted(by_student.items()):
        safe_name = "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "_"
                            for c in student) or "student"  # fmt: skip
        if safe_name != student:  # "john smith" and "john_smith" must not share a file
            digest = hashlib.sha256(student.encode("utf-8", "surrogateescape")).hexdigest()
            safe_name += "-" + digest[:8]
        path = folder / f"{safe_name}.txt"
        try:
            text = "\n\n".join(r.summary() for r in sorted(theirs, key=lambda r: r.exercise or ""))
            atomic_write(path, lambda temp, text=text: temp.write_text(text + "\n", "utf-8"))
        except Exception as exc:  # noqa: BLE001 - one student's file must not cost the others theirs
            print(
                f"grading: could not write the feedback of {printable(student)} to {path} "
                f"({type(exc).__name__}: {printable(exc)}); their grades are in the gradebook",
                file=sys.stderr,
            )
            continue
        written.append(path)
    return written
