"""Fixtures shared by the manager's tests."""

from __future__ import annotations

import pytest

from course_lib.manager import CheckpointManager
from course_lib.models import make_mlp


@pytest.fixture
def folder_with_a_checkpoint(tmp_path):
    """A manager's folder holding one committed checkpoint (epoch 1)."""
    folder = tmp_path / "checkpoints"
    manager = CheckpointManager(folder, max_to_keep=2)
    manager.save(make_mlp(), None, None, 1, {"val_loss": 0.5})
    return folder
