"""course_lib.interrupt on real processes: killed at the moment asked for, or a clear error."""

from __future__ import annotations

import signal
import sys

import pytest
import torch

from course_lib.interrupt import InterruptError, kill_demo_job_after, kill_while_saving
from course_lib.safe_io import safe_load


def test_the_demo_job_is_killed_after_the_epochs_asked_for(tmp_path):
    run = kill_demo_job_after(tmp_path / "run", 2, tmp_path / "job.log", epoch_delay=0.4)
    assert run.killed
    if sys.platform != "win32":
        assert run.returncode == -signal.SIGKILL
    assert [line.split(":")[0] for line in run.log.splitlines()] == ["Epoch 0", "Epoch 1"]
    assert safe_load(tmp_path / "run" / "latest.pth", map_location="cpu")["epoch"] == 1


def test_a_job_that_ends_by_itself_is_an_error_naming_its_log(tmp_path):
    with pytest.raises(InterruptError, match="ended before it was killed") as error:
        kill_demo_job_after(tmp_path / "run", 20, tmp_path / "job.log", epoch_delay=0.0)
    assert error.value.path == tmp_path / "job.log"


def test_a_plain_save_killed_half_way_leaves_a_truncated_file(tmp_path):
    path = tmp_path / "model.pth"
    torch.save({"generation": 0, "weights": torch.zeros(16_000_000)}, path)
    full = path.stat().st_size
    assert kill_while_saving("plain", path) != 0
    assert path.stat().st_size < full


def test_how_is_checked(tmp_path):
    with pytest.raises(ValueError, match="'plain' or 'safe'"):
        kill_while_saving("atomic", tmp_path / "x.pth")
