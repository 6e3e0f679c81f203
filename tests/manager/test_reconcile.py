"""``manager.reconcile``: what a manager repairs when it opens a folder, and what it leaves alone.

Leftover temp files, deletions a commit left pending, files deleted by hand, files copied in,
a folder written by the chapter's own manager, a damaged manifest, and a full disk that keeps
the repair from being written (loading must still work).
"""

from __future__ import annotations

import errno
import importlib.util
import os
import warnings
import zipfile
from pathlib import Path

import pytest

from course_lib.manager import CheckpointManager, reconcile
from course_lib.manager.files import MANIFEST_NAME
from course_lib.models import make_mlp
from course_lib.safe_io import CorruptCheckpointError, zip_structure_sha256
from tests.zip_bytes import data_range

_common_spec = importlib.util.spec_from_file_location(
    "common", Path(__file__).resolve().parent / "helpers" / "common.py"
)
common = importlib.util.module_from_spec(_common_spec)
_common_spec.loader.exec_module(common)
tiny, mark, weight, _tamper = common.tiny, common.mark, common.weight, common.tamper


_spec = importlib.util.spec_from_file_location(
    "chapter_manager", Path(__file__).resolve().parent / "helpers" / "chapter_manager.py"
)
chapter_manager = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(chapter_manager)


def save_epochs(manager, epochs):
    model, optimizer = tiny()
    for epoch in epochs:
        mark(model, epoch)
        manager.save(model, optimizer, None, epoch, {"val_loss": 1.0 / (epoch + 1)})
    return model, optimizer


def quiet_manager(directory, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        manager = CheckpointManager(directory, **kwargs)
    return manager, [str(w.message) for w in caught]


def test_start_removes_temp_files_and_tolerates_files_deleted_by_hand(tmp_path):
    model, optimizer = tiny()
    manager = CheckpointManager(tmp_path, max_to_keep=None)
    for epoch in range(3):
        mark(model, epoch)
        manager.save(model, optimizer, None, epoch, {"val_loss": 1.0})
    leftover = tmp_path / ".checkpoint_epoch_0003.pth.k2j4h5_x.tmp"
    leftover.write_bytes(b"PK\x03\x04 half a checkpoint")
    unrelated = tmp_path / "notes.txt"
    unrelated.write_text("mine")
    (tmp_path / "checkpoint_epoch_0002.pth").unlink()
    with pytest.warns(UserWarning, match="checkpoint_epoch_0002.pth is listed .* but missing"):
        fresh = CheckpointManager(tmp_path, max_to_keep=None)
    assert not leftover.exists() and unrelated.exists()
    assert [r["epoch"] for r in fresh.list_checkpoints()] == [0, 1]
    assert fresh.load_latest(model)["epoch"] == 1


def test_untracked_checkpoint_files_are_reported_not_used_and_can_be_adopted(tmp_path):
    model, optimizer = tiny()
    manager = CheckpointManager(tmp_path)
    manager.save(model, optimizer, None, 0, {"val_loss": 1.0})
    other = CheckpointManager(tmp_path / "elsewhere")
    mark(model, 5)
    other.save(model, optimizer, None, 5, {"val_loss": 0.5})
    os.replace(
        tmp_path / "elsewhere" / "checkpoint_epoch_0005.pth", tmp_path / "checkpoint_epoch_0005.pth"
    )
    with pytest.warns(UserWarning, match=r"checkpoint_epoch_0005.pth not in manifest.json"):
        fresh = CheckpointManager(tmp_path)
    assert fresh.load_latest(model)["epoch"] == 0
    fresh.adopt("checkpoint_epoch_0005.pth")
    assert fresh.load_latest(model)["epoch"] == 5 and weight(model) == 5.0
    assert fresh.list_checkpoints()[-1]["val_loss"] == 0.5


def test_a_folder_written_by_the_chapters_manager_is_adopted(tmp_path, capsys):
    model, optimizer = tiny()
    old = chapter_manager.CheckpointManager(str(tmp_path), max_to_keep=3)
    for epoch, val_loss in enumerate([0.9, 0.3, 0.5, 0.4]):
        mark(model, epoch)
        old.save(model, optimizer, None, epoch, {"val_loss": val_loss}, is_best=val_loss < 0.35)
    with pytest.warns(UserWarning, match="adopted"):
        manager = CheckpointManager(tmp_path, max_to_keep=3)
    assert [r["epoch"] for r in manager.list_checkpoints()] == [1, 2, 3]
    assert manager.load_best(model)["epoch"] == 1 and weight(model) == 1.0
    mark(model, 4)
    manager.save(model, optimizer, None, 4, {"val_loss": 0.8})
    assert manager.load_latest(model)["epoch"] == 4


def test_damaged_manifest_is_rebuilt_from_the_files(tmp_path):
    manager = CheckpointManager(tmp_path)
    model, _ = save_epochs(manager, range(3))
    (tmp_path / "manifest.json").write_text('{"version": 1, "checkpoints": [{"fi')
    with pytest.raises(CorruptCheckpointError, match="manifest.json"):
        manager.load_latest(model)
    fresh, messages = quiet_manager(tmp_path)
    assert any("manifest is damaged" in m for m in messages)
    assert (tmp_path / "manifest.json.damaged").exists()
    assert fresh.load_latest(model)["epoch"] == 2
    assert [r["epoch"] for r in fresh.list_checkpoints()] == [0, 1, 2]


@pytest.mark.parametrize("repair", ["pending_delete", "missing_manifest"])
def test_a_full_disk_keeps_loading_whatever_the_repair(
    folder_with_a_checkpoint, monkeypatch, repair
):
    folder = folder_with_a_checkpoint
    if repair == "missing_manifest":
        (folder / MANIFEST_NAME).unlink()  # the manager adopts the files: a manifest to write
    else:
        _tamper(folder, lambda d: d.update(pending_delete=["checkpoint_epoch_0000.pth"]))

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(reconcile, "write_manifest", disk_full)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        manager = CheckpointManager(folder)
    assert manager.load_latest(make_mlp(), None)["epoch"] == 1


def test_a_full_disk_does_not_stop_a_manager_from_opening_and_loading(
    folder_with_a_checkpoint, monkeypatch
):
    """Opening finishes a repair (here: a deletion left pending); on a full disk loading still works."""
    folder = folder_with_a_checkpoint
    _tamper(folder, lambda d: d.update(pending_delete=["checkpoint_epoch_0000.pth"]))

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(reconcile, "write_manifest", disk_full)
    with pytest.warns(UserWarning, match="disk is full"):
        manager = CheckpointManager(folder)
    loaded = manager.load_latest(make_mlp(), None)
    assert loaded["epoch"] == 1


def test_a_damaged_copy_of_best_model_is_linked_again_on_opening(tmp_path):
    """A copied best_model.pth (no hard link) with a flipped bit in its data: its structure
    digest still matches, so opening checks its CRC-32s too, and links it again from its
    source."""
    manager = CheckpointManager(tmp_path, max_to_keep=3)
    model, optimizer = tiny()
    for epoch in range(2):
        mark(model, epoch)
        manager.save(model, optimizer, None, epoch, {"val_loss": 1.0}, is_best=epoch == 0)
    best, source = tmp_path / "best_model.pth", tmp_path / "checkpoint_epoch_0000.pth"
    data = bytearray(best.read_bytes())
    best.unlink()
    best.write_bytes(bytes(data))  # a copy: intact, so it stays as it is
    quiet_manager(tmp_path)
    assert not os.path.samefile(best, source)
    with zipfile.ZipFile(best) as archive:
        pickle = next(n for n in archive.namelist() if n.endswith("data.pkl"))
    start, end = data_range(best, pickle)
    data[(start + end) // 2] ^= 0x01  # inside the pickle's data
    best.write_bytes(bytes(data))
    with open(best, "rb") as copy, open(source, "rb") as original:
        assert zip_structure_sha256(copy) == zip_structure_sha256(original)
    quiet_manager(tmp_path)
    assert os.path.samefile(best, source)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert CheckpointManager(tmp_path).load_best(model)["epoch"] == 0
