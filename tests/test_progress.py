"""course_lib.progress in a real Jupyter kernel: the saved notebook holds the bar's last state."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

from course_lib import progress

ROOT = Path(__file__).resolve().parent.parent


def _run(tmp_path: Path, *sources: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    return nb


def _bars(cell: nbformat.NotebookNode) -> list[str]:
    return [
        o.data["text/plain"]
        for o in cell.outputs
        if o.output_type == "display_data" and "%|" in o.data.get("text/plain", "")
    ]


def _stream(cell: nbformat.NotebookNode) -> str:
    return "".join(o.text for o in cell.outputs if o.output_type == "stream")


def test_a_resumed_training_stores_its_finished_bar_and_its_epoch_lines(tmp_path):
    """train_with_checkpoint's bar, started at epoch 2 of 5 (as after a resume), ends at 5/5."""
    nb = _run(
        tmp_path,
        f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
        "from course_lib import demo_job\n"
        "demo_job.demo_training('run', 2)",
        "demo_job.demo_training('run', 5, resume=True, progress=True, verbose=True)",
    )
    bars = _bars(nb.cells[1])
    assert len(bars) == 1, nb.cells[1].outputs  # one display, updated in place
    assert "100%" in bars[0] and "5/5" in bars[0], bars[0]
    assert [line.split(":")[0] for line in _stream(nb.cells[1]).splitlines()] == [
        "Resumed from run/latest.pth",
        "Epoch 2",
        "Epoch 3",
        "Epoch 4",
    ]


def test_a_bar_left_unfinished_is_stored_as_it_stopped(tmp_path):
    """The stored text is the bar's real last state, not a fixed 100 %."""
    nb = _run(
        tmp_path,
        f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
        "from course_lib.progress import epoch_bar\n"
        "bar = epoch_bar(4)\n"
        "bar.update(1); bar.write('one done'); bar.update(2); bar.close()",
    )
    (bar,) = _bars(nb.cells[0])
    assert "75%" in bar and "3/4" in bar, bar
    assert _stream(nb.cells[0]) == "one done\n"


def test_outside_a_kernel_it_is_tqdms_text_bar(capsys):
    assert not progress.in_kernel()
    bar = progress.epoch_bar(2, desc="steps")
    bar.update(2)
    bar.close()
    assert "steps: 100%" in capsys.readouterr().err
