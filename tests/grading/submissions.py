"""Building test submissions: the course's own notebooks with cells added, replaced or removed."""

from __future__ import annotations

from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent.parent
EXERCISES = sorted(p.stem for p in (ROOT / "exercises").glob("ex*.ipynb"))


def notebook(exercise: str, *, solved: bool = True) -> nbformat.NotebookNode:
    folder = "solutions" if solved else "exercises"
    return nbformat.read(ROOT / folder / f"{exercise}.ipynb", as_version=4)


def with_cells(exercise: str, *sources: str, solved: bool = True, metadata: bool = True):
    """The exercise's notebook (solved, or the student's stub) with extra code cells at the end."""
    nb = notebook(exercise, solved=solved)
    nb.cells += [nbformat.v4.new_code_cell(source) for source in sources]
    if not metadata:
        nb.metadata.pop("course", None)
    return nb


def replacing(exercise: str, defines: str, source: str, *, extra: tuple[str, ...] = ()):
    """The solved notebook with the cell that defines ``defines`` replaced by ``source``."""
    nb = with_cells(exercise, *extra)
    cell = next(c for c in nb.cells if c.cell_type == "code" and defines in c.source)
    cell.source = source
    return nb


def without_self_check(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Drop the self-check cell, so a wrong answer still runs to the end (as a student's would)."""
    nb.cells = [c for c in nb.cells if "self-check passed" not in c.get("source", "")]
    return nb
