"""The core path fits in an afternoon: ``tools/course_length.py``'s estimate, at most 180 minutes."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _tool():
    spec = importlib.util.spec_from_file_location("course_length", ROOT / "tools/course_length.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["course_length"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_estimate_counts_prose_code_and_cells(tmp_path):
    tool = _tool()
    notebook = tmp_path / "x.ipynb"
    notebook.write_text(
        '{"cells": [{"cell_type": "markdown", "source": ["' + "word " * 400 + '"]},'
        ' {"cell_type": "code", "source": ["a = 1\\n", "\\n", "b = 2\\n"]}]}'
    )
    length = tool.measure_notebook(notebook)
    assert (length.words, length.code_lines, length.cells) == (400, 2, 2)
    assert abs(length.minutes - (400 / 200 + 2 * 0.25 + 2 * 0.3)) < 1e-9


def test_the_core_path_is_complete_and_at_most_180_minutes():
    tool = _tool()
    _, core = tool.measure_course()
    names = [length.name for length in core]
    assert names == tool.CORE_NOTEBOOKS + tool.CORE_EXERCISES, "a core notebook is missing"
    total = sum(length.minutes for length in core)
    table = ", ".join(f"{length.name} {length.minutes:.0f}" for length in core)
    assert total <= tool.CORE_LIMIT_MINUTES, f"core path {total:.0f} min: {table}"


def test_the_fast_path_is_announced_with_the_tools_estimate():
    """README, 00 and 01a itself called 01a "15 minutes" while the tool measured 42: every place
    that announces 01a's length quotes the tool's estimate (to the nearest 5 minutes)."""
    tool = _tool()
    everything, _ = tool.measure_course()
    (fast,) = [length for length in everything if length.name == "01a_fast_path"]
    places = [ROOT / "README.md", ROOT / "nbsrc/notebooks/00_introduction.py",
              ROOT / "nbsrc/notebooks/01a_fast_path.py"]  # fmt: skip
    for place in places:
        text = place.read_text(encoding="utf-8")
        if place.stem != "01a_fast_path":
            text = text[text.index("01a_fast_path") :]
        quoted = re.search(r"(\d+) minutes", text)
        assert quoted, f"{place.name}: no length announced for 01a_fast_path"
        assert abs(int(quoted[1]) - fast.minutes) <= 2.5, (
            f"{place.name} announces 01a_fast_path as {quoted[1]} minutes; "
            f"tools/course_length.py estimates {fast.minutes:.0f}: quote that"
        )
