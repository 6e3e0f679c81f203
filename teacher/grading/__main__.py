"""``python -m teacher.grading`` (``./course grade``): grade one notebook, or a whole class."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from teacher.grading.pipeline import SolutionError, grade_class, grade_notebook
from teacher.grading.records import Status
from teacher.grading.sandbox import Limits, sandbox_available

UNSANDBOXED_WARNING = (
    "WARNING: bubblewrap (bwrap) is not available, so student code runs WITHOUT a sandbox: it can "
    "read and change your files. Install it (Debian/Ubuntu: apt-get install bubblewrap) before "
    "grading untrusted work; the gradebook marks these rows 'sandbox-off'."
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="./course grade",
        description="Grade exercise notebooks with the hidden checks: one or more notebooks "
        "(self-study), or a class folder with one sub-folder per student.",
    )
    parser.add_argument("notebooks", nargs="*", type=Path, help="exercise notebooks to grade")
    parser.add_argument("--class", dest="folder", type=Path, help="grade FOLDER/<student>/*.ipynb")
    parser.add_argument(
        "--out", type=Path, default=Path("grades.csv"), help="gradebook for --class"
    )
    parser.add_argument("--feedback", type=Path, help="feedback folder (default: <out>-feedback)")
    parser.add_argument("--jobs", type=int, default=2, help="submissions graded at once")
    parser.add_argument("--seed", type=int, help="draw the same questions as an earlier run")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per notebook")
    parser.add_argument(
        "--memory-mb", type=int, default=Limits.memory_mb,
        help="memory of one submission, all its processes together",
    )  # fmt: skip
    parser.add_argument(
        "--disk-mb", type=int, default=Limits.disk_mb,
        help="size of a submission's home folder, /tmp and answers folder, each",
    )  # fmt: skip
    parser.add_argument(
        "--cold", action="store_true", help="start a new sandboxed Python per submission (slower)"
    )
    args = parser.parse_args(argv)
    limits = Limits(timeout=args.timeout, memory_mb=args.memory_mb, disk_mb=args.disk_mb)
    if not sandbox_available():
        print(UNSANDBOXED_WARNING, file=sys.stderr)
    try:
        if args.folder:
            reports = grade_class(
                args.folder, args.out, feedback_dir=args.feedback, seed=args.seed,
                jobs=args.jobs, limits=limits, warm=not args.cold,
            )  # fmt: skip
            seed = reports[0].seed
            print(f"graded {len(reports)} submissions (seed {seed}) -> {args.out}")
            for report in reports:
                if report.status not in (Status.OK, Status.SANDBOX_OFF) or report.problem:
                    print(
                        f"  {report.student}/{report.exercise}: {report.status}: {report.problem}"
                    )
            return 0
        if not args.notebooks:
            parser.error("name notebooks to grade, or --class FOLDER")
        reports = [grade_notebook(nb, seed=args.seed, limits=limits) for nb in args.notebooks]
    except SolutionError as exc:
        print(f"grading stopped: {exc}", file=sys.stderr)
        return 2
    for report in reports:
        print(report.summary())
    return 0 if all(r.score == r.max_score for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
