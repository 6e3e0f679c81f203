"""manager/files.py: a torch checkpoint's SHA-256 is computed while it is written, and is right.

The digest recorded in the manifest must equal the digest of the file computed afterwards,
whichever way it was computed (inline for small files, by a thread behind the writes for large
ones, by rereading after a writer that seeks), and a failed write must leave no temp file and
no hashing thread behind.
"""

from __future__ import annotations

import errno
import hashlib
import os
import threading

import pytest
import torch
from torch import nn

import course_lib.manager.files as files_module
from course_lib.manager import CheckpointManager, CheckpointWriteError
from course_lib.manager.files import sha256_file


def _recorded(folder, name):
    manager = CheckpointManager(folder)
    (entry,) = [r for r in manager.list_checkpoints() if r["file"] == name]
    return entry


def _no_sha_threads():
    return not [t for t in threading.enumerate() if t.name == "checkpoint-sha256"]


def test_a_large_checkpoint_is_hashed_while_it_is_written(tmp_path, monkeypatch):
    model = nn.Linear(1600, 1600)  # 10 MB: above the size that streams
    assert files_module._tensor_bytes(model.state_dict()) >= files_module._HASH_STREAM_BYTES

    def not_by_path(obj, path):
        raise AssertionError("a large checkpoint must not be written by path and hashed after")

    monkeypatch.setattr(files_module, "torch_save", not_by_path)
    path = CheckpointManager(tmp_path, format="torch").save(model, None, None, 0, {"loss": 1.0})
    entry = _recorded(tmp_path, path.name)
    assert entry["sha256"] == sha256_file(path)
    assert entry["size"] == path.stat().st_size
    assert _no_sha_threads()


@pytest.mark.parametrize("announce", [1, 4096, 1 << 20])
def test_the_streamed_digest_equals_the_files_for_any_announcement_size(
    tmp_path, monkeypatch, announce
):
    monkeypatch.setattr(files_module, "_HASH_STREAM_BYTES", 0)
    monkeypatch.setattr(files_module._HashingFile, "_ANNOUNCE_BYTES", announce)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(300, 200), nn.ReLU(), nn.Linear(200, 10))
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 300)).sum().backward()
    optimizer.step()
    manager = CheckpointManager(tmp_path)
    for epoch in range(3):
        path = manager.save(model, optimizer, None, epoch, {"loss": 1.0})
        assert _recorded(tmp_path, path.name)["sha256"] == sha256_file(path)
    assert manager.load_latest(model)["epoch"] == 2  # load verifies the digest too


def test_the_safetensors_sidecar_is_streamed_too(tmp_path, monkeypatch):
    monkeypatch.setattr(files_module, "_HASH_STREAM_BYTES", 0)
    model = nn.Linear(50, 50)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    manager = CheckpointManager(tmp_path, format="safetensors")
    path = manager.save(model, optimizer, None, 0, {"loss": 1.0})
    manifest = CheckpointManager(tmp_path).list_checkpoints()
    assert manifest[0]["sha256"] == sha256_file(path)
    assert manager.load_latest(model)["epoch"] == 0


def test_a_writer_that_seeks_back_gets_the_digest_of_the_whole_file(tmp_path):
    path = tmp_path / "f.bin"
    writer = files_module._HashingFile(path)
    writer._ANNOUNCE_BYTES = 10
    writer.write(b"a" * 100)
    writer.flush()
    writer.seek(10)
    writer.write(b"b" * 20)
    writer.finish_writing()
    writer.close()
    record = writer.record(path)
    assert path.read_bytes() == b"a" * 10 + b"b" * 20 + b"a" * 70
    assert record.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert record.size == 100


def test_a_full_disk_while_streaming_leaves_nothing_behind(tmp_path, monkeypatch):
    monkeypatch.setattr(files_module, "_HASH_STREAM_BYTES", 0)
    model = nn.Linear(400, 400)
    manager = CheckpointManager(tmp_path)
    manager.save(model, None, None, 0, {"loss": 1.0})
    real_write = files_module._HashingFile.write

    class FullDisk:
        def __init__(self, file):
            self.file = file

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def flush(self):
            pass

        def close(self):
            self.file.close()

    def write(self, data):
        if self._written > 100_000 and not isinstance(self._file, FullDisk):
            self._file = FullDisk(self._file)  # the disk fills up after 100 kB
        return real_write(self, data)

    monkeypatch.setattr(files_module._HashingFile, "write", write)
    with pytest.raises(CheckpointWriteError) as info:
        manager.save(model, None, None, 1, {"loss": 1.0})
    assert info.value.errno == errno.ENOSPC
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    assert _no_sha_threads()
    monkeypatch.undo()
    assert [r["epoch"] for r in CheckpointManager(tmp_path).list_checkpoints()] == [0]
