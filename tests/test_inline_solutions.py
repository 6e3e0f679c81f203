"""The solutions collapsed under a notebook's exercises run, and their own checks pass.

Each ```python block inside a ``<details>`` of a notebook's markdown is appended as a last cell
to that notebook, which then runs top to bottom in a fresh kernel (in a temporary folder), as a
learner would run it after the notebook. A solution that no longer works fails here.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import build_notebooks  # noqa: E402

pytestmark = pytest.mark.slow  # ./course test --fast leaves it out

DETAILS = re.compile(r"<details>.*?</details>", re.S)
PYTHON_BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def inline_solutions(cells: list[tuple[str, str, list[str]]]) -> list[str]:
    """The code of every ```python block inside ``<details>`` in the markdown cells."""
    return [
        code
        for kind, body, _ in cells
        if kind == "markdown"
        for details in DETAILS.findall(body)
        for code in PYTHON_BLOCK.findall(details)
    ]


# The notebooks whose solutions this file checks (01b and 02b's are self-contained and run in
# tests/test_big_models.py; 05b's start torchrun jobs for about a minute and are not run).
NOTEBOOKS = [
    "01_state_dict",
    "02_whole_model",
    "03_checkpoints",
    "04_mismatched_state_dict",
    "04b_partial_loading_in_depth",
    "05_data_parallel",
    "06_torchscript",
    "07_onnx",
    "07b_onnx_latency",
    "08_checkpoint_manager",
    "08b_retention_async",
    "09_safe_saving",
    "09b_durability_in_depth",
    "10_summary",
    "10b_physicists_view",
]
SOURCES = [ROOT / "nbsrc" / "notebooks" / f"{name}.py" for name in NOTEBOOKS]


def test_the_extraction_finds_a_solution_and_nothing_else():
    body = "text\n```python\nnot_in_details()\n```\n<details><summary>S</summary>\n\n```python\nx = 1\n```\n</details>"
    assert inline_solutions(
        [("markdown", body, []), ("code", "<details>```python\ny\n```</details>", [])]
    ) == ["x = 1\n"]
    for source in SOURCES:
        assert inline_solutions(build_notebooks.parse_source(source.read_text())), source.name


@pytest.mark.parametrize("source", SOURCES, ids=[s.stem for s in SOURCES])
def test_inline_solutions_run_after_their_notebook(source, tmp_path):
    cells = build_notebooks.parse_source(source.read_text())
    solutions = inline_solutions(cells)
    nb = build_notebooks.make_notebook(
        [c for c in cells if c[0] == "code"] + [("code", code, []) for code in solutions]
    )
    client = NotebookClient(
        nb,
        timeout=300,
        kernel_name="python3",
        allow_errors=True,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
    for cell in nb.cells:
        errors = [o for o in cell.outputs if o.output_type == "error"]
        expected = "raises-exception" in cell.metadata.get("tags", [])
        assert bool(errors) == expected, (cell.source[:200], [e.evalue for e in errors])
