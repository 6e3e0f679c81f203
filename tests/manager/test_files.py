"""manager/files.py: each file's record, what it covers, and that a save reads no data back.

A ``torch.save`` file is recorded by the SHA-256 of its zip structure (every byte but the
entries' data, whose CRC-32s that structure holds), read back from a few KB of headers: the
save makes no pass over the data. A ``.safetensors`` file, which has no CRC-32s, is recorded
by the SHA-256 of the whole file. Together with the CRC-32 check of every load, either record
finds a changed byte, a truncated file and a file swapped for another; a failed write leaves
no temp file and no hashing thread behind.
"""

from __future__ import annotations

import errno
import json
import shutil
import threading
import warnings
import zipfile

import pytest
import torch
from torch import nn

import course_lib.manager.files as files_module
import course_lib.safe_io as safe_io
from course_lib.manager import CheckpointManager, CheckpointWriteError
from course_lib.manager.files import file_sha256, sha256_file
from course_lib.safe_io import CorruptCheckpointError, safe_load


def _record(folder, name):
    manifest = json.loads((folder / "manifest.json").read_text())
    for entry in manifest["checkpoints"]:
        if name in entry["files"]:
            return entry["files"][name]
    raise AssertionError(f"{name} is not in the manifest")


def _no_sha_threads():
    return not [t for t in threading.enumerate() if t.name == "checkpoint-sha256"]


def _local_header_offset(path, which=0):
    """The offset of an entry's local header (the first tensor's by default)."""
    with zipfile.ZipFile(path) as archive:
        tensors = [i for i in archive.infolist() if "/data/" in i.filename]
        return sorted(tensors, key=lambda i: i.header_offset)[which].header_offset


def _flip(path, position, bit=0x01):
    data = bytearray(path.read_bytes())
    data[position] ^= bit
    path.write_bytes(bytes(data))


def test_a_torch_checkpoint_is_recorded_without_reading_its_data_back(tmp_path, monkeypatch):
    model = nn.Linear(1600, 1600)  # 10 MB
    read = []
    real_pread = safe_io.os.pread

    def counting_pread(fd, length, offset):
        read.append(length)
        return real_pread(fd, length, offset)

    def no_whole_file_hash(handle):
        raise AssertionError("a torch checkpoint must not be hashed whole")

    monkeypatch.setattr(safe_io.os, "pread", counting_pread)
    monkeypatch.setattr(files_module, "sha256_stream", no_whole_file_hash)
    path = CheckpointManager(tmp_path, format="torch").save(model, None, None, 0, {"loss": 1.0})
    monkeypatch.undo()
    assert sum(read) < 64 << 10  # headers and directory, not the 10 MB of data
    record = _record(tmp_path, path.name)
    assert record["sha256_of"] == "zip"
    assert record["sha256"] == file_sha256(path, "zip") != sha256_file(path)
    assert record["size"] == path.stat().st_size
    assert _no_sha_threads()


def test_records_and_loads_agree_over_several_saves(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(300, 200), nn.ReLU(), nn.Linear(200, 10))
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 300)).sum().backward()
    optimizer.step()
    manager = CheckpointManager(tmp_path)
    digests = set()
    for epoch in range(3):
        path = manager.save(model, optimizer, None, epoch, {"loss": 1.0})
        record = _record(tmp_path, path.name)
        assert record["sha256"] == file_sha256(path, "zip")
        digests.add(record["sha256"])
    assert len(digests) == 3  # the same state saved three times: three different records
    assert manager.load_latest(model)["epoch"] == 2  # load verifies the digest too


def test_safetensors_weights_are_hashed_whole_and_their_sidecar_by_structure(tmp_path):
    model = nn.Linear(50, 50)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    manager = CheckpointManager(tmp_path, format="safetensors")
    path = manager.save(model, optimizer, None, 0, {"loss": 1.0})
    weights = _record(tmp_path, path.name)
    assert weights["sha256_of"] == "file" and weights["sha256"] == sha256_file(path)
    sidecar = tmp_path / files_module.sidecar_name(path.name)
    record = _record(tmp_path, sidecar.name)
    assert record["sha256_of"] == "zip" and record["sha256"] == file_sha256(sidecar, "zip")
    assert manager.load_latest(model)["epoch"] == 0


def test_a_file_written_without_crcs_is_hashed_whole(tmp_path):
    """``set_crc32_options(False)``: torch.save writes 0 for every CRC-32, which would leave
    the data covered by nothing: the record falls back to the whole file's SHA-256."""
    model = nn.Linear(50, 50)
    torch.serialization.set_crc32_options(False)
    try:
        path = CheckpointManager(tmp_path).save(model, None, None, 0, {"loss": 1.0})
    finally:
        torch.serialization.set_crc32_options(True)
    with open(path, "rb") as handle:
        assert safe_io.zip_structure_sha256(handle) is None
    record = _record(tmp_path, path.name)
    assert record["sha256_of"] == "file" and record["sha256"] == sha256_file(path)


def test_a_file_swapped_for_another_checkpoint_of_the_same_size_is_refused(tmp_path):
    """What only the manifest can tell: the swapped file is a whole, valid checkpoint (its
    CRC-32s are right), but not the one that was saved under this name."""
    model = nn.Linear(20, 20)
    manager = CheckpointManager(tmp_path, max_to_keep=None)
    for epoch in range(3):
        manager.save(model, None, None, epoch, {"loss": 1.0})
    one, two = tmp_path / "checkpoint_epoch_0001.pth", tmp_path / "checkpoint_epoch_0002.pth"
    assert one.stat().st_size == two.stat().st_size
    shutil.copyfile(two, one)
    assert safe_load(one, map_location="cpu")["epoch"] == 2  # intact, and the wrong one
    with pytest.raises(CorruptCheckpointError, match="replaced by another") as info:
        manager.load(one, model)
    assert str(one) in str(info.value)
    assert manager.load(one, model, verify=False)["epoch"] == 2  # verify=False trusts it


@pytest.mark.parametrize("field", [10, 14], ids=["modification_time", "header_crc"])
def test_a_changed_byte_that_no_crc_covers_is_found_by_the_structure_digest(tmp_path, field):
    """A local header's time and CRC fields are read by neither torch.load nor the CRC check:
    safe_load accepts the file, the manifest's structure digest does not."""
    model = nn.Linear(20, 20)
    manager = CheckpointManager(tmp_path)
    for epoch in range(2):
        manager.save(model, None, None, epoch, {"loss": 1.0})
    path = tmp_path / "checkpoint_epoch_0001.pth"
    _flip(path, _local_header_offset(path) + field)
    assert safe_load(path, map_location="cpu")["epoch"] == 1
    with pytest.raises(CorruptCheckpointError, match="zip structure"):
        manager.load(path, model)
    with pytest.warns(Warning, match="checkpoint_epoch_0001.pth"):
        assert manager.load_latest(model)["epoch"] == 0


def test_a_flipped_data_bit_is_found_by_the_crc_check_that_the_digest_covers(tmp_path):
    model = nn.Linear(64, 64)
    manager = CheckpointManager(tmp_path)
    for epoch in range(2):
        manager.save(model, None, None, epoch, {"loss": 1.0})
    path = tmp_path / "checkpoint_epoch_0001.pth"
    digest = file_sha256(path, "zip")
    with zipfile.ZipFile(path) as archive:
        info = max(archive.infolist(), key=lambda i: i.compress_size)
    _flip(path, info.header_offset + 200)  # inside the biggest tensor's data
    assert file_sha256(path, "zip") == digest  # the structure is intact...
    with pytest.raises(CorruptCheckpointError, match="CRC-32"):
        manager.load(path, model)  # ...and the data is not


def _rewrite_as_version_1(folder):
    """The manifest as the previous course_lib wrote it: whole-file SHA-256s, version 1."""
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["version"] = 1
    for entry in manifest["checkpoints"] + ([manifest["best"]] if manifest["best"] else []):
        for name, record in entry["files"].items():
            record.pop("sha256_of")
            record["sha256"] = sha256_file(folder / name)
        if "sha256" in entry:
            entry["sha256"] = entry["files"][entry["file"]]["sha256"]
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("fmt", ["torch", "safetensors"])
def test_a_manifest_of_the_previous_version_still_verifies(tmp_path, fmt):
    model = nn.Linear(20, 20)
    manager = CheckpointManager(tmp_path, format=fmt, max_to_keep=None)
    for epoch in range(3):
        manager.save(model, None, None, epoch, {"loss": 1.0 - epoch / 10}, is_best=epoch == 1)
    _rewrite_as_version_1(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to repair: the old records match
        old = CheckpointManager(tmp_path, format=fmt, max_to_keep=None)
    assert old.load_latest(model)["epoch"] == 2
    assert old.load_best(model)["epoch"] == 1
    # A byte that no CRC-32 covers is still found, by the whole file's SHA-256.
    suffix = ".safetensors" if fmt == "safetensors" else ".pth"
    primary = tmp_path / f"checkpoint_epoch_0002{suffix}"
    torch_file = tmp_path / files_module.sidecar_name(primary.name) if suffix != ".pth" else primary
    _flip(torch_file, _local_header_offset(torch_file) + 10)
    with pytest.raises(CorruptCheckpointError, match="its SHA-256"):
        old.load(primary, model)
    # The next save writes version 2 and keeps the old records as they are.
    old.save(model, None, None, 3, {"loss": 0.5})
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["version"] == 2
    kinds = {
        e["epoch"]: {r["sha256_of"] for r in e["files"].values()} for e in manifest["checkpoints"]
    }
    assert kinds[0] == {"file"} and "zip" in kinds[3]
    fresh = CheckpointManager(tmp_path, format=fmt)
    assert fresh.load(tmp_path / f"checkpoint_epoch_0000{suffix}", model)["epoch"] == 0


def test_a_full_disk_in_torch_save_leaves_nothing_behind(tmp_path, monkeypatch):
    """torch.save given a path reports a full disk as ``RuntimeError: ... unexpected pos``."""
    model = nn.Linear(400, 400)
    manager = CheckpointManager(tmp_path)
    manager.save(model, None, None, 0, {"loss": 1.0})
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        with open(f, "r+b") as handle:
            handle.truncate(100_000)
        raise RuntimeError("[enforce fail at inline_container.cc:778] . unexpected pos 100000")

    monkeypatch.setattr(torch, "save", full_disk)
    monkeypatch.setattr(
        safe_io.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(1 << 30, 1 << 30, 0)
    )
    with pytest.raises(CheckpointWriteError) as info:
        manager.save(model, None, None, 1, {"loss": 1.0})
    assert info.value.errno == errno.ENOSPC
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    assert _no_sha_threads()
    monkeypatch.undo()
    assert [r["epoch"] for r in CheckpointManager(tmp_path).list_checkpoints()] == [0]
