"""The committed notebooks: built from their sources, fully executed, failures only where tagged.

nbval re-runs every notebook and compares outputs, but it silently skips cells that were never
executed. These checks make sure that every code cell has a committed output to compare against.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import build_notebooks  # noqa: E402

SOURCES = build_notebooks.all_sources()
TARGETS = [t for s in SOURCES for t in build_notebooks.targets_for(s)]
EXECUTED = [(path, cells) for path, cells, run in TARGETS if run]


def _ids(targets):
    return [str(t[0].relative_to(ROOT)) for t in targets]


def test_every_notebook_has_a_source():
    built = {t[0] for t in TARGETS}
    committed = {
        p
        for folder in ("notebooks", "solutions", "exercises")
        for p in (ROOT / folder).glob("*.ipynb")
    }
    assert committed, "no notebooks found"
    assert committed == built, f"notebooks without a source in nbsrc/: {sorted(committed - built)}"


@pytest.mark.parametrize("target", TARGETS, ids=_ids(TARGETS))
def test_notebook_matches_its_source(target):
    path, cells, _ = target
    nb = nbformat.read(path, as_version=4)
    committed = [(c.cell_type, c.source, c.metadata.get("tags", [])) for c in nb.cells]
    assert committed == cells, f"{path.name} differs from its source: run tools/build_notebooks.py"


@pytest.mark.parametrize("target", EXECUTED, ids=_ids(EXECUTED))
def test_every_code_cell_was_executed_in_order(target):
    nb = nbformat.read(target[0], as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "a notebook without code cells tests nothing"
    counts = [c.execution_count for c in code]
    assert None not in counts, "cells without a committed execution are never checked by nbval"
    assert counts == list(range(1, len(code) + 1)), "executed out of order or partially"


@pytest.mark.parametrize("target", EXECUTED, ids=_ids(EXECUTED))
def test_errors_only_where_tagged(target):
    nb = nbformat.read(target[0], as_version=4)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        tagged = "raises-exception" in cell.metadata.get("tags", [])
        errors = [o for o in cell.outputs if o.output_type == "error"]
        assert bool(errors) == tagged, f"cell {cell.id}: " + (
            "tagged raises-exception but did not fail" if tagged else "fails without the tag"
        )
        if tagged:
            # The cell must also be compared (not ignored), so a cell that stops failing fails nbval.
            assert "nbval-ignore-output" not in cell.metadata.get("tags", [])


def test_solution_markers_are_stripped_from_exercises():
    for path, cells, run in TARGETS:
        if run:
            continue
        text = "\n".join(body for _, body, _ in cells)
        assert "BEGIN SOLUTION" not in text and "END SOLUTION" not in text
        nb = nbformat.read(path, as_version=4)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")


def test_strip_solutions_leaves_a_stub():
    body = "def f():\n    # BEGIN SOLUTION\n    return 1\n    # END SOLUTION\n"
    assert build_notebooks.strip_solutions(body) == (
        "def f():\n    # YOUR CODE HERE\n    raise NotImplementedError\n"
    )


MACHINE_PATH = re.compile(r"(?<![\w.~])/(?:work|tmp|home|root|usr|opt|var|Users|private)/[^\s'\"]*")
TRACEBACK_LIMIT = 20  # lines: the exception and its message, not the frames of torch's files


@pytest.mark.parametrize("target", EXECUTED, ids=_ids(EXECUTED))
def test_committed_outputs_show_no_machine_paths_and_short_tracebacks(target):
    nb = nbformat.read(target[0], as_version=4)
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            text = json.dumps(output)
            found = MACHINE_PATH.findall(text)
            assert not found, f"cell {cell.id}: absolute paths of the building machine: {found[:3]}"
            if output.output_type == "error":
                lines = "\n".join(output.traceback).splitlines()
                assert len(lines) <= TRACEBACK_LIMIT, (
                    f"cell {cell.id}: a {len(lines)}-line traceback"
                )
