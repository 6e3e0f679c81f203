"""distributed.step_checkpoints: a step folder is chosen only when every rank's shard is complete.

In this process, without torchrun (dcp.save runs without a process group). The checkpoints of a
real two-rank run are checked in test_elastic_job.py; hostile step folders in test_safe_dcp.py.
"""

from __future__ import annotations

import shutil
import warnings

import pytest
import torch

from course_lib.distributed import (
    IncompleteStepError,
    check_step_folder,
    newest_complete_step,
    save_step,
    step_folder,
)


@pytest.fixture
def two_steps(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "torch.distributed is disabled..."
        for step in (1, 2):
            save_step({"w": torch.full((64,), float(step))}, tmp_path, step)
    return tmp_path


def test_a_step_with_a_missing_shard_is_refused_and_the_previous_one_chosen(two_steps):
    (step_folder(two_steps, 2) / "__0_0.distcp").unlink()
    with pytest.raises(IncompleteStepError, match="rank 0's shard __0_0.distcp is missing") as e:
        check_step_folder(step_folder(two_steps, 2))
    assert "load the previous step" in str(e.value)
    choice = newest_complete_step(two_steps)
    assert (choice.step, choice.path) == (1, step_folder(two_steps, 1))
    assert choice.refused == [
        "step 2: rank 0's shard __0_0.distcp is missing (the metadata lists it)"
    ]


def test_a_truncated_shard_and_a_missing_metadata_are_refused(two_steps):
    shard = step_folder(two_steps, 2) / "__0_0.distcp"
    size = shard.stat().st_size
    with shard.open("r+b") as f:
        f.truncate(size - 10)
    with pytest.raises(IncompleteStepError, match=f"truncated: {size - 10} bytes, the metadata"):
        check_step_folder(step_folder(two_steps, 2))
    (step_folder(two_steps, 1) / ".metadata").unlink()
    with pytest.raises(IncompleteStepError, match="no .metadata file"):
        check_step_folder(step_folder(two_steps, 1))
    assert newest_complete_step(two_steps).step is None  # start from scratch


def test_an_unfinished_step_folder_is_never_chosen(two_steps):
    shutil.copytree(step_folder(two_steps, 2), two_steps / "step_000003.incomplete")
    assert newest_complete_step(two_steps).step == 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        save_step({"w": torch.zeros(64)}, two_steps, 3)
    assert not list(two_steps.glob("*.incomplete"))
    assert newest_complete_step(two_steps).step == 3
