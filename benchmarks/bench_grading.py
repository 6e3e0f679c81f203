"""Seconds per submission: the course's sandboxed grader against nbgrader's autograde, one run.

A generated class (``--students`` × the seven exercises; even students hand in the solutions, odd
ones the untouched stubs) is graded by

- nbgrader 0.9.6 ``autograde`` (serial, as nbgrader runs), when ``--nbgrader-python`` names a
  Python with nbgrader installed (the benchmark's own environment: the course does not depend on
  nbgrader). Its notebooks carry nbgrader metadata: the self-check cell is the graded test cell,
  worth the exercise's points;
- the course's grader, bubblewrap sandbox on: cold (a new sandboxed Python per submission) at
  ``--jobs 2``, and warm (each submission forked from a pre-imported zygote in its own sandbox,
  walled off in fresh namespaces) at ``--jobs 1`` and ``--jobs 2``. The cold row shows what the
  warm zygote buys.

It prints seconds per submission for each, the ratio to nbgrader, and whether both tools gave the
same verdict (full marks or not) on every submission.

    python benchmarks/bench_grading.py --students 30 --nbgrader-python /path/to/nbgrader-venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from teacher.grading import grade_class, sandbox_available  # noqa: E402
from teacher.grading.judge import load_exercise  # noqa: E402

EXERCISES = sorted(p.stem for p in (ROOT / "exercises").glob("ex*.ipynb"))
ASSIGNMENT = "chapter63"


def _notebook(exercise: str, solved: bool) -> nbformat.NotebookNode:
    return nbformat.read(ROOT / ("solutions" if solved else "exercises") / f"{exercise}.ipynb", 4)


def make_class(root: Path, students: int) -> dict[tuple[str, str], bool]:
    """``root/<student>/<exercise>.ipynb``; returns which submissions are the solutions."""
    solved = {}
    for index in range(students):
        student = f"student{index:02d}"
        (root / student).mkdir(parents=True)
        for exercise in EXERCISES:
            solved[(student, exercise)] = index % 2 == 0
            nbformat.write(
                _notebook(exercise, index % 2 == 0), root / student / f"{exercise}.ipynb"
            )
    return solved


def _with_nbgrader_metadata(nb: nbformat.NotebookNode, points: float) -> nbformat.NotebookNode:
    for index, cell in enumerate(nb.cells):
        meta = {"schema_version": 3, "grade": False, "solution": False, "locked": False,
                "task": False, "grade_id": f"cell-{index}"}  # fmt: skip
        if cell.cell_type == "code" and "self-check passed" in cell.source:
            meta.update(grade=True, locked=True, points=points)
        elif cell.cell_type == "code" and "YOUR CODE HERE" in cell.source:
            meta.update(solution=True)
        cell.metadata["nbgrader"] = meta
    return nb


def run_nbgrader(python: str, classroom: Path, workdir: Path) -> tuple[float, dict]:
    """Set up an nbgrader course for the same submissions, autograde them, return seconds and scores."""
    course = workdir / "nbgrader-course"
    (course / "source" / ASSIGNMENT).mkdir(parents=True)
    (course / "nbgrader_config.py").write_text(
        "c = get_config()\n"
        f"c.CourseDirectory.root = {str(course)!r}\n"
        "c.ExecutePreprocessor.timeout = 300\n"
        "c.Execute.timeout = 300\n"
    )
    for exercise in EXERCISES:
        points = load_exercise(exercise).max_score
        nb = _with_nbgrader_metadata(_notebook(exercise, solved=False), points)
        nbformat.write(nb, course / "source" / ASSIGNMENT / f"{exercise}.ipynb")
    env = {"PYTHONPATH": str(ROOT), "PATH": f"{Path(python).parent}:/usr/bin:/bin",
           "HOME": str(workdir), "MPLBACKEND": "Agg", "COURSE_DEVICE": "cpu"}  # fmt: skip
    nbgrader = [python, "-m", "nbgrader"]
    subprocess.run([*nbgrader, "db", "assignment", "add", ASSIGNMENT], cwd=course, env=env,
                   check=True, capture_output=True)  # fmt: skip
    subprocess.run([*nbgrader, "generate_assignment", ASSIGNMENT, "--force"], cwd=course, env=env,
                   check=True, capture_output=True)  # fmt: skip
    for student in sorted(p.name for p in classroom.iterdir()):
        target = course / "submitted" / student / ASSIGNMENT
        target.mkdir(parents=True)
        for exercise in EXERCISES:
            nb = nbformat.read(classroom / student / f"{exercise}.ipynb", 4)
            points = load_exercise(exercise).max_score
            nbformat.write(_with_nbgrader_metadata(nb, points), target / f"{exercise}.ipynb")
        (target / "timestamp.txt").write_text("2026-12-01 12:00:00.000000 UTC")
    started = time.perf_counter()
    subprocess.run([*nbgrader, "autograde", ASSIGNMENT, "--force"], cwd=course, env=env,
                   check=True, capture_output=True)  # fmt: skip
    seconds = time.perf_counter() - started
    scores = {}
    for student in sorted(p.name for p in classroom.iterdir()):
        for exercise in EXERCISES:
            graded = course / "autograded" / student / ASSIGNMENT / f"{exercise}.ipynb"
            nb = nbformat.read(graded, 4)
            cell = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade"))
            failed = any(o.get("output_type") == "error" for o in cell.get("outputs", []))
            scores[(student, exercise)] = not failed
    return seconds, scores


def run_course_grader(classroom: Path, workdir: Path, jobs: int, warm: bool) -> tuple[float, dict]:
    started = time.perf_counter()
    out = workdir / f"grades-{jobs}-{warm}.csv"
    reports = grade_class(classroom, out, jobs=jobs, seed=0, progress=False, warm=warm)
    seconds = time.perf_counter() - started
    return seconds, {(r.student, r.exercise): r.score == r.max_score for r in reports}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", type=int, default=30)
    parser.add_argument("--nbgrader-python", help="a Python with nbgrader installed")
    args = parser.parse_args()
    if not sandbox_available():
        print("bubblewrap is not available: the course's grader would run unsandboxed; stopping")
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="bench-grading-"))
    try:
        classroom = workdir / "class"
        solved = make_class(classroom, args.students)
        count = len(solved)
        print(f"{args.students} students x {len(EXERCISES)} exercises = {count} submissions")
        results = {}
        if args.nbgrader_python:
            results["nbgrader autograde (serial)"] = run_nbgrader(
                args.nbgrader_python, classroom, workdir
            )
        for warm, jobs in ((False, 2), (True, 1), (True, 2)):
            name = f"course grader, {'warm' if warm else 'cold'} sandboxes, --jobs {jobs}"
            results[name] = run_course_grader(classroom, workdir, jobs, warm)
        baseline = results.get("nbgrader autograde (serial)", (None, None))[0]
        print(f"{'grader':42s} {'s/submission':>13s} {'x faster':>9s} {'verdicts = expected':>20s}")
        for name, (seconds, verdicts) in results.items():
            per = seconds / count
            ratio = f"{baseline / seconds:8.1f}x" if baseline else "        -"
            agree = sum(verdicts[key] == solved[key] for key in solved)
            print(f"{name:42s} {per:13.2f} {ratio} {agree:>13d}/{count}")
        print(json.dumps({name: round(s / count, 3) for name, (s, _) in results.items()}))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
