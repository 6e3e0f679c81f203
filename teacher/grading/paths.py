"""Where the grader finds the course: one place for every path it uses."""

from __future__ import annotations

from pathlib import Path

__all__ = ["COURSE_LIB_DIR", "EXERCISES_DIR", "GRADER_DIR", "REPO_ROOT", "SOLUTIONS_DIR"]

GRADER_DIR = Path(__file__).resolve().parent
REPO_ROOT = GRADER_DIR.parent.parent
# The learners' library: the only part of the course a sandboxed notebook sees.
COURSE_LIB_DIR = REPO_ROOT / "course_lib"
# The teacher's material: per exercise, ``judge.py`` (questions and hidden checks, run by the
# grader) and ``answer.py`` (the asker, run inside the sandbox).
EXERCISES_DIR = REPO_ROOT / "teacher" / "exercises"
SOLUTIONS_DIR = REPO_ROOT / "solutions"
