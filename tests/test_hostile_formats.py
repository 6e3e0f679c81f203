"""Hostile files (issue 18, items 10-12): read without running code, refused with a clear error.

Safetensors headers and tensor_state structures, sparse tensors on every loading path of
load_memory, and hostile training checkpoints. Items 3-5 (.pt2 programs, TorchScript and
AOTInductor packages, which run code when loaded) are export.trust's: tests/export/test_trust.py.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch

from course_lib.safe_io import CheckpointError

# ---- item 10: safetensors headers and tensor_state structures -----------------------------------


def _write_safetensors(path: Path, header: dict, data: bytes = b"") -> Path:
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


def test_a_shape_of_two_to_the_64_is_a_clear_error_in_every_safetensors_reader(tmp_path):
    from course_lib.big_models import load_big_model
    from course_lib.safe_io import load_safetensors
    from course_lib.tensor_state import load_state_safetensors

    header = {"x": {"dtype": "F32", "shape": [2**64 - 1, 0], "data_offsets": [0, 0]}}
    path = _write_safetensors(tmp_path / "huge.safetensors", header)

    def big_model(path: Path) -> None:  # opens the file before building anything on it
        load_big_model(lambda: torch.nn.Linear(1, 1), path)

    for load in (load_safetensors, big_model, load_state_safetensors):
        with pytest.raises(CheckpointError, match="not a readable safetensors file") as error:
            load(path)
        assert error.value.path == path


def _structure_file(path: Path, structure: str) -> Path:
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(path), metadata={"course_lib.structure": structure})
    return path


def test_a_structure_nested_900_deep_is_a_clear_error(tmp_path):
    from course_lib.tensor_state import load_state_safetensors

    deep = '{"__dict__": [["a", ' * 900 + "1" + "]]}" * 900
    path = _structure_file(tmp_path / "deep.safetensors", deep)
    with pytest.raises(CheckpointError, match="deeper than"):
        load_state_safetensors(path)


def test_five_mb_of_empty_lists_is_refused_within_twice_the_file_in_memory(tmp_path):
    import tracemalloc

    from course_lib.tensor_state import load_state_safetensors

    path = _structure_file(tmp_path / "lists.safetensors", "[" + ",".join(["[]"] * 1_700_000) + "]")
    size = path.stat().st_size
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match="more than twice the file"):
            load_state_safetensors(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert size > 5_000_000 and peak <= 2 * size  # parsed, the lists took 226 MB (44x)


def test_real_structures_still_load(tmp_path):
    from course_lib.tensor_state import load_state_safetensors, save_state_safetensors

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    state = {
        "model": model.state_dict(),
        "optim": optimizer.state_dict(),
        "history": [i / 7 for i in range(20_000)],
    }
    save_state_safetensors(state, tmp_path / "state.safetensors")
    loaded = load_state_safetensors(tmp_path / "state.safetensors")
    assert loaded["history"] == state["history"]
    assert loaded["optim"]["param_groups"] == state["optim"]["param_groups"]


def test_150000_empty_tensors_are_refused_before_they_are_built(tmp_path):
    from course_lib.safe_io import load_safetensors

    header = {
        f"t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(150_000)
    }
    path = _write_safetensors(tmp_path / "many.safetensors", header)
    with pytest.raises(CheckpointError, match="150,000 tensors"):
        load_safetensors(path)


# ---- item 11: sparse tensors on every loading path of load_memory --------------------------------


class _SparseHolder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("sp", torch.zeros(3))


@pytest.mark.parametrize("method", ["naive", "mmap", "meta + assign", "mmap + meta + assign"])
def test_a_sparse_tensor_with_an_index_out_of_range_is_refused_by_every_load(tmp_path, method):
    from course_lib.load_memory import _load

    bad = torch.sparse_coo_tensor(
        torch.tensor([[0, 7]]), torch.ones(2), (3,), check_invariants=False
    )  # index 7 in a tensor of 3: to_dense() writes out of bounds
    path = tmp_path / "sparse.pth"
    torch.save({"sp": bad}, path)
    with pytest.raises((RuntimeError, CheckpointError), match="(?i)index|invariant|bound"):
        _load(method, str(path), _SparseHolder)


# ---- item 12: hostile training checkpoints -------------------------------------------------------


def _training_checkpoint(tmp_path: Path, **changes: object) -> Path:
    from course_lib.checkpoint import build_checkpoint

    model = torch.nn.Linear(2, 2)
    checkpoint = build_checkpoint(model, torch.optim.SGD(model.parameters(), lr=0.1), epoch=1)
    checkpoint.update(changes)
    torch.save(checkpoint, tmp_path / "checkpoint.pth")
    return tmp_path / "checkpoint.pth"


def _load_into_fresh(path: Path) -> object:
    from course_lib.checkpoint import load_checkpoint

    model = torch.nn.Linear(2, 2)
    return load_checkpoint(path, model, torch.optim.SGD(model.parameters(), lr=0.1))


def test_an_rng_of_the_wrong_kind_is_a_clear_error(tmp_path):
    path = _training_checkpoint(tmp_path, rng={"torch": "x"})
    with pytest.raises(CheckpointError, match="'rng' cannot be restored") as error:
        _load_into_fresh(path)
    assert error.value.path == path


def test_an_optimizer_state_that_does_not_fit_is_a_clear_error(tmp_path):
    path = _training_checkpoint(
        tmp_path, optimizer_state_dict={"state": {}, "param_groups": [{"params": [5]}]}
    )
    with pytest.raises(CheckpointError) as error:
        _load_into_fresh(path)
    assert error.value.path == path


def _flip_in_zip_names(path: Path) -> None:
    """Flip the top bit of one byte of a member's name in the zip directory (the names are
    flagged UTF-8, so Python's zipfile raises UnicodeDecodeError on them)."""
    data = bytearray(path.read_bytes())
    where = data.rfind(b"data.pkl")
    data[where + 2] ^= 0x80
    data[where + 3] ^= 0x80
    path.write_bytes(bytes(data))


def test_bit_flips_in_the_archives_names_are_a_clear_error_everywhere(tmp_path):
    from course_lib.inspection import inspect_checkpoint
    from course_lib.safe_io import safe_load

    path = _training_checkpoint(tmp_path)
    _flip_in_zip_names(path)
    for load in (
        lambda: safe_load(path),
        lambda: _load_into_fresh(path),
        lambda: inspect_checkpoint(path),
    ):
        with pytest.raises(CheckpointError, match="damaged") as error:
            load()
        assert error.value.path == path


def test_a_manifest_best_entry_without_files_is_named_and_the_manifest_rebuilt(tmp_path):
    """It raised StopIteration; now it is a damaged manifest, handled as the manager handles
    every damaged manifest: kept aside, named in a warning, rebuilt from the files."""
    from course_lib.manager import CheckpointManager

    model = torch.nn.Linear(2, 2)
    manager = CheckpointManager(tmp_path / "run")
    manager.save(model, None, None, 1, {"val_loss": 0.5}, is_best=True)
    manifest = tmp_path / "run" / "manifest.json"
    document = json.loads(manifest.read_text())
    del document["best"]["files"]
    manifest.write_text(json.dumps(document))
    with pytest.warns(UserWarning, match="'best' lists no best_model file"):
        checkpoint = CheckpointManager(tmp_path / "run").load_best(model)
    assert checkpoint["epoch"] == 1
    assert (tmp_path / "run" / "manifest.json.damaged").exists()
