"""Notebook 08b runs the chapter's whole CheckpointManager, ``load_best`` and ``is_best`` included."""

from __future__ import annotations

from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent


def test_the_chapters_load_best_and_best_copy_are_run_not_only_described():
    nb = nbformat.read(ROOT / "notebooks" / "08b_retention_async.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    start = next(i for i, c in enumerate(code) if c.source.startswith("class CheckpointManager:"))
    chapter = code[start + 1 :]
    end = next(i for i, c in enumerate(chapter) if "from course_lib.manager import" in c.source)
    chapter = chapter[:end]  # the cells that use the chapter's class

    def printed(cell):
        return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")

    saves = [c for c in chapter if "is_best=True" in c.source]
    assert saves and "Updated best model" in printed(saves[0])
    loads = [c for c in chapter if "manager.load_best(" in c.source]
    assert loads and "best_model.pth" in printed(loads[0])
