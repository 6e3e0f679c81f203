"""Step 1, collect: read the handed-in notebooks and tell which exercise each one answers.

Nothing here runs student code. A notebook that cannot be read still names its exercise (from its
file name) so that the gradebook shows "0 of 4, unreadable", not "did not submit".
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from teacher.grading.paths import EXERCISES_DIR
from teacher.grading.records import Submission

__all__ = [
    "collect_class",
    "known_exercises",
    "read_submission",
]

NOTEBOOK_LIMIT_BYTES = 20_000_000


def known_exercises() -> list[str]:
    """The exercises this course has hidden checks for (empty in a student release)."""
    if not EXERCISES_DIR.is_dir():
        return []
    return sorted(p.name for p in EXERCISES_DIR.iterdir() if (p / "judge.py").is_file())


def _exercise_from_name(path: Path) -> str | None:
    for exercise in known_exercises():
        if exercise in path.stem:
            return exercise
    return None


def _code_cells(notebook: dict) -> tuple[str, ...]:
    cells = []
    for cell in notebook["cells"]:
        if isinstance(cell, dict) and cell.get("cell_type") == "code":
            source = cell.get("source", "")
            if isinstance(source, list):
                source = "".join(str(line) for line in source)
            cells.append(str(source))
    return tuple(cells)


def read_submission(path: Path, student: str = "") -> Submission:
    """Read one notebook; name its exercise from its metadata (survives renaming), else its file name."""
    by_name = _exercise_from_name(path)
    try:
        if path.is_symlink() or not path.is_file():
            raise OSError("not a regular file")
        if path.stat().st_size > NOTEBOOK_LIMIT_BYTES:
            raise OSError(f"larger than {NOTEBOOK_LIMIT_BYTES >> 20} MB")
        notebook = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON or encoding
        problem = (
            f"not a readable notebook ({type(exc).__name__}: {exc}); "
            "re-download it or re-save it in JupyterLab"
        )
        return Submission(path, student, by_name, problem=problem)
    if not isinstance(notebook, dict) or not isinstance(notebook.get("cells"), list):
        problem = "not a Jupyter notebook (no list of cells); re-save it in JupyterLab"
        return Submission(path, student, by_name, problem=problem)
    metadata = notebook.get("metadata")
    course = metadata.get("course") if isinstance(metadata, dict) else None
    named = course.get("exercise") if isinstance(course, dict) else None
    exercise = named if named in known_exercises() else by_name
    if exercise is None:
        problem = (
            "cannot tell which exercise this is (no course metadata, and the file name names no "
            f"exercise of {', '.join(known_exercises()) or 'this course'}): keep the exercise's file name"
        )
        return Submission(path, student, None, problem=problem)
    return Submission(path, student, exercise, code_cells=_code_cells(notebook))


def _one_per_exercise(handed_in: list[Submission]) -> list[Submission]:
    """One notebook per exercise: the one named exactly like it, else the newest; others named."""
    chosen: dict[str | None, list[Submission]] = {}
    for submission in handed_in:
        chosen.setdefault(submission.exercise, []).append(submission)
    result = chosen.pop(None, [])  # notebooks of no known exercise: each gets its row
    for exercise, candidates in chosen.items():

        def preference(s: Submission, exercise: str = exercise) -> tuple[bool, bool, float]:
            assert s.path is not None
            exact = s.path.name == f"{exercise}.ipynb"
            return (exact, s.problem is None, s.path.stat().st_mtime)

        candidates.sort(key=preference, reverse=True)
        best, others = candidates[0], candidates[1:]
        if others:
            names = ", ".join(str(s.path.name) for s in others if s.path)
            best = replace(best, note=f"also handed in, not graded: {names}")
        result.append(best)
    return result


def collect_class(root: Path) -> list[Submission]:
    """One submission per notebook under ``root/<student>/``, plus one per exercise a student lacks."""
    submissions: list[Submission] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink()):
        notebooks = sorted(
            p for p in folder.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts
        )
        handed_in = _one_per_exercise([read_submission(p, folder.name) for p in notebooks])
        submissions += handed_in
        answered = {s.exercise for s in handed_in}
        submissions += [
            Submission(None, folder.name, exercise, problem="no notebook handed in")
            for exercise in known_exercises()
            if exercise not in answered
        ]
    loose = sorted(p for p in root.glob("*.ipynb"))
    submissions += [read_submission(p, p.stem) for p in loose]
    return submissions
