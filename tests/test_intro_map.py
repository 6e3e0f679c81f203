"""00's map quotes ``tools/course_length.py``: every core step, in order, with its minutes.

A figure in prose must be the one the tool computes now; when a notebook changes, this test
names the rows to update. `python tests/test_intro_map.py` rewrites the table from the tool;
then rebuild 00 with tools/build_notebooks.py.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROW = re.compile(r"^# \| \[`(?P<name>\w+)`\]\([^)]*\) \| [^|]+ \| (?P<minutes>\d+|\?) \|$", re.M)
TOTAL = re.compile(r"^# \| total \| \| (?P<minutes>\d+) \|$", re.M)


def _tool():
    spec = importlib.util.spec_from_file_location("course_length", ROOT / "tools/course_length.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["course_length"] = module
    spec.loader.exec_module(module)
    return module


def expected_rows(tool) -> list[tuple[str, str]]:
    _, core = tool.measure_course()
    minutes = {length.name: f"{length.minutes:.0f}" for length in core}
    return [(name, minutes.get(name, "?")) for name in tool.CORE_NOTEBOOKS + tool.CORE_EXERCISES]


def test_the_map_lists_the_core_path_with_the_tools_minutes():
    tool = _tool()
    text = (ROOT / "nbsrc/notebooks/00_introduction.py").read_text()
    found = [(m["name"], m["minutes"]) for m in ROW.finditer(text)]
    expected = expected_rows(tool)
    table = "\n".join(f"{name}: {minutes}" for name, minutes in expected)
    assert found == expected, f"00's map is stale; tools/course_length.py says:\n{table}"
    _, core = tool.measure_course()
    total = TOTAL.search(text)
    assert total and int(total["minutes"]) == round(sum(c.minutes for c in core)), table


def test_the_map_names_every_deeper_notebook():
    text = (ROOT / "nbsrc/notebooks/00_introduction.py").read_text()
    path16 = ["01a_fast_path", "01b_big_models", "02b_safe_formats", "03b_resume_in_depth",
              "04b_partial_loading_in_depth", "05b_torchrun_elastic", "06b_export_in_depth",
              "07b_onnx_latency", "08b_retention_async", "09b_durability_in_depth"]  # fmt: skip
    assert [n for n in path16 if f"({n}.ipynb)" not in text] == []


def refresh() -> None:
    """Rewrite 00's table from the tool (then rebuild 00 with tools/build_notebooks.py)."""
    tool = _tool()
    rows = dict(expected_rows(tool))
    _, core = tool.measure_course()
    path = ROOT / "nbsrc/notebooks/00_introduction.py"
    text = ROW.sub(
        lambda m: m.group(0)[: m.start("minutes") - m.start()] + rows[m["name"]] + " |",
        path.read_text(),
    )
    total = f"# | total | | {round(sum(c.minutes for c in core))} |"
    path.write_text(TOTAL.sub(total, text))


if __name__ == "__main__":  # python tests/test_intro_map.py: refresh the table
    refresh()
