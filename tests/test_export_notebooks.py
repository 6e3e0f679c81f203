"""What notebooks 06/06b and 07/07b say agrees with what they ran.

- 06 runs the chapter's trace as written (its 10->20->5 MLP on a 224x224 image) and shows it fail
  before switching to an image model;
- prose never quotes a duration (``N s``) that the notebook's own output does not show: timings
  differ on every machine, so the cell prints them and the text points at the cell;
- the export notebooks say that exported files are code, to be loaded from trusted sources only.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import build_notebooks  # noqa: E402

NAMES = ["06_torchscript", "06b_export_in_depth", "07_onnx", "07b_onnx_latency"]
SECONDS = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?) ?s\b")


def _notebook(name: str) -> nbformat.NotebookNode:
    return nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)


def _outputs(nb: nbformat.NotebookNode) -> str:
    texts = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            texts.append(output.get("text", "") or output.get("evalue", ""))
            texts.append(str(output.get("data", {}).get("text/plain", "")))
    return "\n".join(texts)


def test_06_runs_the_chapters_trace_and_shows_it_fail():
    nb = _notebook("06_torchscript")
    failing = [c for c in nb.cells if "raises-exception" in c.metadata.get("tags", [])]
    chapter = [c for c in failing if "make_mlp()" in c.source and "224, 224" in c.source]
    assert chapter, "06 should run the chapter's trace of its MLP on a 224x224 image"
    errors = [o for o in chapter[0].outputs if o.output_type == "error"]
    assert errors and "cannot be multiplied" in errors[0].evalue


@pytest.mark.parametrize("name", NAMES)
def test_prose_quotes_only_durations_the_run_printed(name):
    cells = build_notebooks.parse_source((ROOT / "nbsrc" / "notebooks" / f"{name}.py").read_text())
    prose = "\n".join(body for kind, body, _ in cells if kind == "markdown")
    prose = re.sub(r"```.*?```", "", prose, flags=re.S)
    printed = _outputs(_notebook(name))
    stale = [m.group(0) for m in SECONDS.finditer(prose) if f"{m.group(1)} s" not in printed]
    assert not stale, f"{name} quotes durations its output does not show: {stale}"


@pytest.mark.parametrize("name", ["06_torchscript", "06b_export_in_depth"])
def test_exported_files_are_called_code_to_load_from_trusted_sources(name):
    prose = (ROOT / "nbsrc" / "notebooks" / f"{name}.py").read_text()
    assert "**code**" in prose and "trust" in prose
    assert "Neither loader reads the other's file" not in prose
