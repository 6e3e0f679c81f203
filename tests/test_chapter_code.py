"""chapter_code: the tests take the chapter's original code from the notebook sources."""

from __future__ import annotations

import pytest
from chapter_code import NBSRC, cells, chapter_definitions


def test_the_chapters_manager_is_notebook_08s_class():
    manager = chapter_definitions("08b_retention_async", "CheckpointManager").CheckpointManager
    assert manager.__doc__ == "Checkpoint manager"
    assert {"save", "load", "load_best", "load_latest", "_cleanup"} <= set(vars(manager))


def test_the_chapters_functions_call_each_other_as_in_the_notebook(tmp_path, capsys):
    import torch
    from torch import nn

    chapter = chapter_definitions("03b_resume_in_depth", "save_checkpoint", "load_checkpoint")
    model = nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    chapter.save_checkpoint(model, optimizer, None, 3, 0.5, tmp_path / "c.pth")
    assert chapter.load_checkpoint(tmp_path / "c.pth", model, optimizer) == (3, 0.5)
    assert "Checkpoint saved" in capsys.readouterr().out


def test_only_code_cells_are_read_and_a_missing_name_is_named(tmp_path):
    assert all("[markdown]" not in c for c in cells(NBSRC / "notebooks" / "03_checkpoints.py"))
    with pytest.raises(LookupError, match="no_such_function"):
        chapter_definitions("03_checkpoints", "no_such_function")


def test_the_chapters_code_keeps_its_line_numbers_in_the_source():
    """TorchScript reads a method's source by its line number: the chapter's conditional model
    fails to script for the chapter's reason (no annotation on use_relu), not on a wrong line."""
    import inspect

    model = chapter_definitions("06b_export_in_depth", "ConditionalModel").ConditionalModel
    lines, first = inspect.getsourcelines(model.forward)
    source = (NBSRC / "notebooks" / "06b_export_in_depth.py").read_text().splitlines()
    assert source[first - 1] == lines[0].rstrip("\n") and "def forward" in lines[0]
