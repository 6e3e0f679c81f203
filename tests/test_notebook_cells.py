"""What a learner sees in a committed notebook: short cells, and progress bars that finished.

A cell should show one idea. A long cell is usually a harness (plotting, a subprocess) that
belongs in ``course_lib``, or the chapter's code stretched by the formatter (kept in the
chapter's own layout with ``# fmt: off``). The few long cells that are the chapter's own code
are listed below with the reason.

A progress bar stored at 0 % or 42 % looks like a run that hung. In a saved notebook the learner
sees the text of the last update (tqdm's text after its last carriage return, or a widget's
``text/plain`` fallback and saved widget state), so that text must read 100 %.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = sorted((ROOT / "notebooks").glob("*.ipynb")) + sorted(
    (ROOT / "solutions").glob("*.ipynb")
)
CELL_LINE_LIMIT = 40

# (notebook, first line of the cell) -> why it may be longer than CELL_LINE_LIMIT.
LONG_CELL_EXCEPTIONS: dict[tuple[str, str], str] = {
    (
        "03b_resume_in_depth.ipynb",
        "# fmt: off",
    ): "the chapter's train_with_checkpoint, in the chapter's own layout (67 lines there)",
    ("08b_retention_async.ipynb", "class CheckpointManager:"): (
        "the chapter's whole class (a Python class cannot span cells); read method by method"
    ),
}
# tqdm's text: "desc:  42%|####1     | 5/12 [...]"
TQDM_BAR = re.compile(r"(?P<percent>\d{1,3})%\|[^|\n]*\|\s*(?P<n>[\d.]+[kMG]?)/(?P<total>[\d.]+)")


def _ids(paths):
    return [str(p.relative_to(ROOT)) for p in paths]


def long_cells(nb: nbformat.NotebookNode, name: str) -> list[str]:
    """The code cells of ``nb`` over the limit that are not listed exceptions."""
    found = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        lines = cell.source.splitlines()
        listed = (name, lines[0]) in LONG_CELL_EXCEPTIONS
        if len(lines) > CELL_LINE_LIMIT and not listed:
            found.append(f"{cell.get('id')}: {len(lines)} lines, starting {lines[0]!r}")
    return found


def _shown_lines(text: str) -> list[str]:
    """The lines a front end shows for a stream: each line's text after its last ``\\r``."""
    return [line.rsplit("\r", 1)[-1] for line in text.split("\n")]


def unfinished_bars(nb: nbformat.NotebookNode) -> list[str]:
    """Every stored progress bar (tqdm text or widget state) that did not reach its end."""
    found = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            texts = []
            if output.output_type == "stream":
                texts.append(output.text)
            elif output.output_type in ("display_data", "execute_result"):
                plain = output.get("data", {}).get("text/plain", "")
                texts.append(plain if isinstance(plain, str) else "".join(plain))
            for text in texts:
                for line in _shown_lines(text):
                    match = TQDM_BAR.search(line)
                    if match and int(match["percent"]) < 100:
                        found.append(f"{cell.get('id')}: {line.strip()!r}")
    widgets = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {})
    for model_id, model in widgets.get("state", {}).items():
        state = model.get("state", {})
        if model.get("model_name") in ("FloatProgressModel", "IntProgressModel"):
            if state.get("value", 0) < state.get("max", 100):
                found.append(f"widget {model_id}: {state.get('value')}/{state.get('max')}")
    return found


@pytest.mark.parametrize("path", COMMITTED, ids=_ids(COMMITTED))
def test_code_cells_are_short(path):
    nb = nbformat.read(path, as_version=4)
    found = long_cells(nb, path.name)
    assert not found, (
        f"code cells over {CELL_LINE_LIMIT} lines (split them, move harnesses into course_lib, or "
        f"list a justified exception in LONG_CELL_EXCEPTIONS): {found}"
    )


@pytest.mark.parametrize("path", COMMITTED, ids=_ids(COMMITTED))
def test_stored_progress_bars_reached_their_end(path):
    nb = nbformat.read(path, as_version=4)
    found = unfinished_bars(nb)
    assert not found, f"progress bars stored before their end: {found}"


def test_exceptions_still_exist():
    """A listed exception whose cell is gone (or now short) must leave the list."""
    for (name, first_line), why in LONG_CELL_EXCEPTIONS.items():
        nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
        lengths = [
            len(c.source.splitlines())
            for c in nb.cells
            if c.cell_type == "code" and c.source.splitlines()[:1] == [first_line]
        ]
        assert any(n > CELL_LINE_LIMIT for n in lengths), f"{name} {first_line!r} ({why})"


def _notebook(outputs, widgets=None):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("run()")
    cell.outputs = [nbformat.from_dict(o) for o in outputs]
    nb.cells.append(cell)
    if widgets is not None:
        nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": widgets}}
    return nb


def test_the_checks_see_what_they_must():
    """Each check fails on the defect it exists for, and passes its fixed form."""
    frozen = {"text/plain": "epochs:  42%|####1     | 5/12 [00:00<?, ?epoch/s]"}
    done = {"text/plain": "epochs: 100%|##########| 12/12 [00:01<00:00, 9.1epoch/s]"}
    assert unfinished_bars(_notebook([{"output_type": "display_data", "data": frozen}]))
    assert not unfinished_bars(_notebook([{"output_type": "display_data", "data": done}]))
    stream = "a:   0%|          | 0/3\ra:  33%|###3      | 1/3\ra: 100%|##########| 3/3\n"
    assert not unfinished_bars(
        _notebook([{"output_type": "stream", "name": "stderr", "text": stream}])
    )
    assert unfinished_bars(
        _notebook(
            [
                {
                    "output_type": "stream",
                    "name": "stderr",
                    "text": stream.split("\ra: 100%")[0] + "\n",
                }
            ]
        )
    )
    bar = {"model_name": "FloatProgressModel", "state": {"value": 5, "max": 12}}
    assert unfinished_bars(_notebook([], widgets={"m": bar}))
    bar["state"]["value"] = 12
    assert not unfinished_bars(_notebook([], widgets={"m": bar}))

    nb = _notebook([])
    nb.cells[0].source = "\n".join(f"x{i} = {i}" for i in range(CELL_LINE_LIMIT + 1))
    assert long_cells(nb, "any.ipynb")
    nb.cells[0].source = "\n".join(f"x{i} = {i}" for i in range(CELL_LINE_LIMIT))
    assert not long_cells(nb, "any.ipynb")
