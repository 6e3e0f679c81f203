"""Hostile DCP folders (issue 18, items 1, 2, 6-9): read without running code, refused clearly.

Each attack is built here: a ``.metadata`` pickle that runs code and then returns the real
metadata, a shard entry that points at a ``torch.save`` payload, relative paths and links that
lead out of the folder, planted links and look-alike step names. Code that runs writes a marker
file; every test checks the marker is absent. The tests of functions that existed before the fix
(check_step_folder, newest_complete_step, inspect_checkpoint, save_step) import nothing new, so
they can be run against the old library (they fail there). Real checkpoints (one rank in this
process, two ranks under torchrun) load through the safe reader bit for bit as through ``dcp.load``.
"""

from __future__ import annotations

import operator
import os
import pickle
import shutil
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader

from course_lib.distributed import (
    IncompleteStepError,
    check_step_folder,
    newest_complete_step,
    save_step,
    step_folder,
)
from course_lib.inspection import inspect_checkpoint
from course_lib.safe_io import CheckpointError


class _RunsCode:
    """Unpickled, it writes ``marker``: the proof that loading ran code from the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


class _ThenReturns:
    """Unpickled, it builds ``first`` (running its code) and then returns ``value``."""

    def __init__(self, first: object, value: object) -> None:
        self.first, self.value = first, value

    def __reduce__(self):
        return (operator.getitem, ((self.first, self.value), 1))


def _state(value: float = 1.0) -> dict:
    return {"w": torch.full((64,), value), "table": torch.arange(12.0).reshape(4, 3), "lr": 0.01}


def _quiet_save_step(state: dict, root: Path, step: int) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "torch.distributed is disabled..."
        return save_step(state, root, step)


@pytest.fixture
def two_steps(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (1, 2):
        _quiet_save_step(_state(float(step)), root, step)
    return root


def _metadata(folder: Path):
    return FileSystemReader(folder).read_metadata()


def _write_metadata(folder: Path, obj: object) -> None:
    (folder / ".metadata").write_bytes(pickle.dumps(obj, protocol=4))


def _plant_code(folder: Path, marker: Path) -> None:
    """Item 1: a .metadata whose payload runs code, then returns the real metadata."""
    _write_metadata(folder, _ThenReturns(_RunsCode(marker), _metadata(folder)))


def _point_entry(folder: Path, fqn: str, **changes: object) -> None:
    metadata = _metadata(folder)
    for index, info in metadata.storage_data.items():
        if index.fqn == fqn:
            for name, value in changes.items():
                setattr(info, name, value)
    metadata.storage_meta = None
    _write_metadata(folder, metadata)


# ---- item 1: .metadata is a pickle --------------------------------------------------------------


def test_a_metadata_pickle_that_runs_code_is_refused_by_the_step_checks(two_steps, tmp_path):
    marker = tmp_path / "ran"
    _plant_code(step_folder(two_steps, 2), marker)
    with pytest.raises(IncompleteStepError, match="builtins.exec"):
        check_step_folder(step_folder(two_steps, 2))
    choice = newest_complete_step(two_steps)
    assert choice.step == 1
    assert "builtins.exec" in choice.refused[0]
    assert not marker.exists()


def test_a_metadata_pickle_that_runs_code_is_refused_by_inspect_checkpoint(two_steps, tmp_path):
    marker = tmp_path / "ran"
    _plant_code(step_folder(two_steps, 2), marker)
    with pytest.raises(CheckpointError, match="builtins.exec") as error:
        inspect_checkpoint(step_folder(two_steps, 2))
    assert "How to fix" in str(error.value)
    assert not marker.exists()


def test_a_metadata_pickle_that_runs_code_is_refused_by_load_and_convert(two_steps, tmp_path):
    from course_lib.distributed.safe_dcp import dcp_to_torch_save, load_dcp

    marker = tmp_path / "ran"
    _plant_code(step_folder(two_steps, 2), marker)
    with pytest.raises(CheckpointError, match="builtins.exec"):
        load_dcp(_state(0.0), step_folder(two_steps, 2))
    with pytest.raises(CheckpointError, match="builtins.exec"):
        dcp_to_torch_save(step_folder(two_steps, 2), tmp_path / "full.pth")
    assert not marker.exists()
    assert not (tmp_path / "full.pth").exists()


# ---- item 2: a shard entry read with torch.load(weights_only=False) ------------------------------


def _plant_payload(folder: Path, marker: Path) -> None:
    """Item 2: the ``lr`` entry points at a torch.save payload appended to a shard."""
    shard = folder / "__0_0.distcp"
    offset = shard.stat().st_size
    torch.save(_RunsCode(marker), tmp := folder.parent / "payload.pt")
    payload = tmp.read_bytes()
    tmp.unlink()
    with shard.open("ab") as f:
        f.write(payload)
    _point_entry(folder, "lr", offset=offset, length=len(payload))


def test_torchs_own_loader_runs_a_shard_payload(two_steps, tmp_path):
    """The attack is real: DCP's default planner runs it (so the refusal below means something)."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save as torch_convert

    marker = tmp_path / "ran"
    _plant_payload(step_folder(two_steps, 2), marker)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch_convert(step_folder(two_steps, 2), tmp_path / "unsafe.pth")
    assert marker.exists()


def test_a_shard_payload_is_loaded_with_weights_only_and_refused(two_steps, tmp_path):
    from course_lib.distributed.safe_dcp import dcp_to_torch_save, load_dcp

    marker = tmp_path / "ran"
    _plant_payload(step_folder(two_steps, 2), marker)
    with pytest.raises(IncompleteStepError, match="'lr'.*weights_only=True"):
        check_step_folder(step_folder(two_steps, 2))  # DCP's own classes, ranges in the file
    assert newest_complete_step(two_steps).step == 1
    with pytest.raises(CheckpointError, match="weights_only=True") as error:
        load_dcp(_state(0.0), step_folder(two_steps, 2))
    assert "'lr'" in str(error.value) and "How to fix" in str(error.value)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        dcp_to_torch_save(step_folder(two_steps, 2), tmp_path / "full.pth")
    assert not marker.exists()


# ---- item 6: shards outside the folder ----------------------------------------------------------


@pytest.fixture
def outside(tmp_path, two_steps):
    """A victim file outside the checkpoint folder: a copy of step 1's shard (so it would load)."""
    victim = tmp_path / "outside" / "victim.pt"
    victim.parent.mkdir()
    shutil.copy(step_folder(two_steps, 1) / "__0_0.distcp", victim)
    return victim


@pytest.mark.parametrize("how", ["absolute", "dotdot", "symlink"])
def test_a_shard_outside_the_folder_is_refused(two_steps, outside, how):
    from course_lib.distributed.safe_dcp import load_dcp

    folder = step_folder(two_steps, 2)
    shard = folder / "__0_0.distcp"
    if how == "symlink":
        shard.unlink()
        shard.symlink_to(outside)
    else:
        target = str(outside) if how == "absolute" else "../../outside/victim.pt"
        metadata = _metadata(folder)
        for info in metadata.storage_data.values():
            info.relative_path = target
        _write_metadata(folder, metadata)
    with pytest.raises(IncompleteStepError, match="symbolic link|not a file name inside") as error:
        check_step_folder(folder)
    assert str(outside.stat().st_size) not in error.value.problem
    assert newest_complete_step(two_steps).step == 1
    state = _state(0.0)
    with pytest.raises(CheckpointError, match="symbolic link|not a file name inside"):
        load_dcp(state, folder)
    assert torch.equal(state["w"], torch.zeros(64))  # nothing filled from the outside file
    with pytest.raises(CheckpointError, match="symbolic link|not a file name inside"):
        inspect_checkpoint(folder)


def test_a_huge_recorded_length_names_no_outside_file(two_steps, outside):
    folder = step_folder(two_steps, 2)
    _point_entry(folder, "w", relative_path="../../outside/victim.pt", length=2**62)
    with pytest.raises(IncompleteStepError) as error:
        check_step_folder(folder)
    assert str(outside.stat().st_size) not in str(error.value)
    assert "not a file name inside" in str(error.value)


# ---- items 7 and 8: save_step and step names -----------------------------------------------------


def test_save_step_refuses_a_planted_link_at_its_incomplete_folder(tmp_path):
    root, elsewhere = tmp_path / "checkpoints", tmp_path / "elsewhere"
    root.mkdir()
    elsewhere.mkdir()
    (root / "step_000003.incomplete").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(CheckpointError, match="symbolic link") as error:
        _quiet_save_step(_state(), root, 3)
    assert "How to fix" in str(error.value)
    assert list(elsewhere.iterdir()) == []
    assert not step_folder(root, 3).exists()


@pytest.mark.parametrize(
    "name",
    [
        "step_\u0669\u0669\u0669\u0669\u0669\u0669",
        "step_\uff19\uff19\uff19\uff19\uff19\uff19",
        "step_999999\n",
    ],
)
def test_step_names_are_six_ascii_digits_exactly(two_steps, name):
    shutil.copytree(step_folder(two_steps, 2), two_steps / name)
    choice = newest_complete_step(two_steps)
    assert (choice.step, choice.path) == (2, step_folder(two_steps, 2))


# ---- item 9: damaged metadata, clear errors, no quadratic time ----------------------------------


def _damage(folder: Path, how: str) -> None:
    meta = folder / ".metadata"
    if how == "truncated":
        meta.write_bytes(meta.read_bytes()[:200])
    elif how == "not a pickle":
        meta.write_bytes(b"hello, this is text\n" * 10)
    elif how == "a dict":
        _write_metadata(folder, {"state_dict_metadata": {}})
    elif how == "a directory":
        meta.unlink()
        meta.mkdir()
    elif how == "a string dtype":
        metadata = _metadata(folder)
        metadata.state_dict_metadata["w"].properties.dtype = "float32"
        _write_metadata(folder, metadata)
    elif how == "60,000 dimensions":
        metadata = _metadata(folder)
        metadata.state_dict_metadata["w"].size = torch.Size([1] * 60_000)
        _write_metadata(folder, metadata)
    elif how == "a huge tensor":
        metadata = _metadata(folder)
        metadata.state_dict_metadata["w"].size = torch.Size([2**40])
        _write_metadata(folder, metadata)


@pytest.mark.parametrize(
    "how",
    [
        "truncated",
        "not a pickle",
        "a dict",
        "a directory",
        "a string dtype",
        "60,000 dimensions",
        "a huge tensor",
    ],
)
def test_a_damaged_metadata_is_a_clear_error_everywhere(two_steps, tmp_path, how):
    from course_lib.distributed.safe_dcp import dcp_to_torch_save

    folder = step_folder(two_steps, 2)
    _damage(folder, how)
    with pytest.raises(CheckpointError) as error:
        inspect_checkpoint(folder)
    assert str(folder) in str(error.value) and "How to fix" in str(error.value)
    with pytest.raises(IncompleteStepError):
        check_step_folder(folder)
    assert newest_complete_step(two_steps).step == 1
    with pytest.raises(CheckpointError):
        dcp_to_torch_save(folder, tmp_path / "full.pth")


# ---- real checkpoints load the same, bit for bit ------------------------------------------------


def _equal(a: object, b: object) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_equal, a, b))
    if isinstance(a, torch.Tensor):
        return (
            isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))
        )
    return type(a) is type(b) and a == b


def _training_state() -> tuple[torch.nn.Module, torch.optim.Optimizer, dict]:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model(torch.randn(8, 5)).sum().backward()
    optimizer.step()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {
        "model": model_sd,
        "optim": optim_sd,
        "rng": {"rank0": torch.get_rng_state()},
        "half": torch.randn(3, 4).to(torch.bfloat16),
        "step": 7,
        "note": "text",
    }
    return model, optimizer, state


def _zeroed(obj: object) -> object:
    if isinstance(obj, dict):
        return {k: _zeroed(v) for k, v in obj.items()}
    if isinstance(obj, torch.Tensor):
        return torch.zeros_like(obj)
    return obj


def test_a_one_rank_checkpoint_loads_bit_for_bit_as_through_dcp(tmp_path):
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save as torch_convert

    from course_lib.distributed.safe_dcp import dcp_to_torch_save, load_dcp

    _, _, state = _training_state()
    folder = _quiet_save_step(state, tmp_path / "checkpoints", 1)
    check_step_folder(folder)
    ours, theirs = _zeroed(state), _zeroed(state)
    load_dcp(ours, folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(theirs, checkpoint_id=folder, no_dist=True)
        torch_convert(folder, tmp_path / "theirs.pth")
    assert _equal(ours, theirs) and _equal(ours, state)
    dcp_to_torch_save(folder, tmp_path / "ours.pth")
    assert _equal(
        torch.load(tmp_path / "ours.pth", weights_only=True),
        torch.load(tmp_path / "theirs.pth", weights_only=True),
    )
    info = inspect_checkpoint(folder)
    assert info.num_tensors == sum(isinstance(v, torch.Tensor) for v in _leaves(state))


def _leaves(obj: object) -> list[object]:
    if isinstance(obj, dict):
        return [leaf for v in obj.values() for leaf in _leaves(v)]
    if isinstance(obj, (list, tuple)):
        return [leaf for v in obj for leaf in _leaves(v)]
    return [obj]


@pytest.mark.timeout(300)
@pytest.mark.xdist_group("elastic-baseline")  # with the run it reads (conftest.py)
def test_the_elastic_jobs_two_rank_checkpoint_loads_bit_for_bit_and_a_hostile_step_is_refused(
    elastic_baseline, tmp_path
):
    """Two ranks under torchrun wrote steps 4, 8 and 12; the safe reader loads step 8 as dcp.load
    does. Then step 8's .metadata runs code: the restarted job refuses it and resumes from 4."""
    from test_elastic_job import JOB, STEPS
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save as torch_convert

    from course_lib.distributed import run_torchrun
    from course_lib.distributed.safe_dcp import dcp_to_torch_save

    reference, _ = elastic_baseline
    workdir = tmp_path / "run"
    for step in (4, 8):  # the run as if it had stopped after step 8
        source = step_folder(reference / "checkpoints", step)
        shutil.copytree(source, workdir / "checkpoints" / source.name)
    step8 = step_folder(workdir / "checkpoints", 8)
    dcp_to_torch_save(step8, tmp_path / "ours.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch_convert(step8, tmp_path / "theirs.pth")
    ours = torch.load(tmp_path / "ours.pth", weights_only=True)
    assert _equal(ours, torch.load(tmp_path / "theirs.pth", weights_only=True))
    assert set(ours) == {"model", "optim", "table", "rng"} and set(ours["rng"]) == {
        "rank0",
        "rank1",
    }

    marker = tmp_path / "ran"
    _plant_code(step8, marker)
    result = run_torchrun(JOB, ["--workdir", str(workdir), *STEPS], timeout=150)
    lines = result.job_lines()
    assert any(
        line.startswith("[job] refused step 8:") and "builtins.exec" in line for line in lines
    ), lines
    assert "[job] 2 workers resumed from step 4" in lines
    assert not marker.exists()


def test_the_metadata_reader_refuses_nothing_dcp_writes_for_common_dtypes(tmp_path):
    from course_lib.distributed.safe_dcp import read_dcp_metadata

    state = {
        str(dtype): torch.zeros(2, 3, dtype=dtype)
        for dtype in (
            torch.float16,
            torch.bfloat16,
            torch.float64,
            torch.int8,
            torch.bool,
            torch.complex64,
            torch.uint8,
            torch.int64,
        )
    }
    state["empty"] = torch.zeros(0, 5)
    state["scalar"] = torch.tensor(3.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(state, checkpoint_id=tmp_path / "ck", no_dist=True)
    metadata = read_dcp_metadata(tmp_path / "ck")
    assert set(metadata.state_dict_metadata) == set(state)
    assert os.listdir(tmp_path / "ck")
