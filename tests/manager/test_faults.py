"""Bad input loses nothing: kills mid-save, a full disk, no permission, damaged files.

Each test damages a real checkpoint folder the way it happens in practice, then checks that the
manager says precisely what is wrong (naming the file and the fix) and that the newest good
checkpoint still loads.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pytest
import torch

import course_lib.manager.files as checkpoint_files_module
import course_lib.manager.lock as lock_module
import course_lib.manager.manifest as manifest_module
from course_lib.checkpoint import checkpoint_filename
from course_lib.manager import (
    Candidate,
    CheckpointFallbackWarning,
    CheckpointManager,
    CheckpointWriteError,
    retention_reasons,
)
from course_lib.manager.files import file_sha256
from course_lib.safe_io import CheckpointNotFoundError, CorruptCheckpointError

ROOT = Path(__file__).resolve().parents[2]
HELPERS = ROOT / "tests" / "manager" / "helpers"
_spec = importlib.util.spec_from_file_location("save_loop", HELPERS / "save_loop.py")
save_loop = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(save_loop)


def tiny():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    return model, torch.optim.Adam(model.parameters(), lr=0.1)


def save_epochs(manager, epochs, model=None, optimizer=None):
    if model is None:
        model, optimizer = tiny()
    for epoch in epochs:
        with torch.no_grad():
            model.weight.fill_(float(epoch))
        manager.save(model, optimizer, None, epoch, {"val_loss": 1.0 / (epoch + 1)})
    return model, optimizer


def manifest_of(directory):
    return json.loads((Path(directory) / "manifest.json").read_text())


def temp_files(directory):
    return sorted(p.name for p in Path(directory).iterdir() if p.name.endswith(".tmp"))


def quiet_manager(directory, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        manager = CheckpointManager(directory, **kwargs)
    return manager, [str(w.message) for w in caught]


# ----------------------------------------------------------------------------------------------
# SIGKILL at chosen points of the save
# ----------------------------------------------------------------------------------------------


def expected_files(last_epoch, fmt):
    """What the policies of save_loop keep after epochs 0..last_epoch (computed from scratch)."""
    entries = [
        Candidate(
            checkpoint_filename(e, format=fmt), epoch=e, metrics={"val_loss": save_loop.metric(e)}
        )
        for e in range(last_epoch + 1)
    ]
    reasons = retention_reasons(entries, **save_loop.POLICY)
    return {name for name, why in reasons.items() if why}


@pytest.fixture(scope="module")
def zygote(tmp_path_factory):
    """One process that imported torch, forking a fresh saving process for each kill.

    COURSE_DEVICE=cpu: these tests are about files; a zygote that loads onto CUDA (the default
    device on a GPU machine) would leave its forked children unable to use CUDA at all."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", COURSE_DEVICE="cpu")
    stderr = tmp_path_factory.mktemp("zygote") / "stderr.txt"
    with stderr.open("w") as errors:
        process = subprocess.Popen(
            [sys.executable, str(HELPERS / "save_loop.py"), "--zygote"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            env=env,
        )
    process.stderr_path = stderr
    first = process.stdout.readline().strip()
    assert first == "READY", f"{first!r}; stderr: {stderr.read_text()[-3000:]}"
    yield process
    process.stdin.close()
    process.wait(timeout=30)


def run_and_kill(zygote, directory, fmt, pause):
    """Fork a saving process; SIGKILL it where it paused, at its ``pause``-th file-system step.

    Returns the epoch it started at, the epochs it reported, and where it was killed."""
    zygote.stdin.write(f"RUN {directory} {fmt} {pause}\n")
    zygote.stdin.flush()
    pid = started = None
    committed = []
    while True:
        words = zygote.stdout.readline().split()
        assert words, "the zygote died: " + zygote.stderr_path.read_text()[-3000:]
        if words[0] == "PID":
            pid = int(words[1])
        elif words[0] == "STARTED":
            started = int(words[1])
        elif words[0] in ("COMMITTED", "SUBMITTED"):
            committed.append(int(words[1]))
        elif words[0] == "PAUSED":
            assert int(words[1]) == pause and pid is not None and started is not None
            where = words[2]
            break
        elif words[0] == "REAPED":  # before it paused: it failed; say why instead of hanging
            raise AssertionError(
                f"the saving process ended on its own (status {words[2]}) before its step "
                f"{pause}; its stderr: {zygote.stderr_path.read_text()[-3000:]}"
            )
    os.kill(pid, signal.SIGKILL)
    while True:
        words = zygote.stdout.readline().split()
        assert words, "the zygote died: " + zygote.stderr_path.read_text()[-3000:]
        if words[0] in ("COMMITTED", "SUBMITTED"):  # printed before the pause, read after it
            committed.append(int(words[1]))
        elif words[0] == "REAPED":
            status = int(words[2])
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
            return started, committed, where


@pytest.mark.timeout(60)
def test_a_saving_process_that_fails_is_reported_with_its_error_not_waited_for(zygote, tmp_path):
    """A child that dies before it started saving (here: its folder is a file) used to leave the
    test reading forever (the hang of [torch-async-6]); now its traceback is the failure."""
    (tmp_path / "not_a_folder").write_text("x")
    with pytest.raises(AssertionError, match="(?s)ended on its own.*not_a_folder"):
        run_and_kill(zygote, tmp_path / "not_a_folder", "torch-async", 5)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("fmt,kills", [("torch", 12), ("safetensors", 10), ("torch-async", 6)])
def test_sigkill_mid_save_loses_nothing(zygote, tmp_path, fmt, kills):
    rng = random.Random(1234 + kills)
    directory = tmp_path / "ck"
    newest_reported = -1
    leftovers_seen = 0
    killed_at = []
    model = torch.nn.Linear(512, 512)
    # The kill points: the 1st..40th file-system step of a run (a save takes about 8), chosen
    # by a seeded generator, so every machine kills at the same places.
    for pause in [1, 2, 3] + [rng.randint(1, 40) for _ in range(kills - 3)]:
        started, committed, where = run_and_kill(zygote, directory, fmt, pause)
        killed_at.append(f"{pause}:{where}")
        assert started == newest_reported + 1  # it resumed from the newest committed epoch
        if committed:
            newest_reported = committed[-1]
        leftovers_seen += bool(temp_files(directory))
        manager, _ = quiet_manager(directory, format=fmt.removesuffix("-async"), **save_loop.POLICY)
        assert temp_files(directory) == [], "temp files of the killed save were not removed"
        manifest = manifest_of(directory)
        epochs = [c["epoch"] for c in manifest["checkpoints"]]
        if not epochs:
            # Nothing committed yet; with async_save, SUBMITTED 0 means epoch 0 was in flight.
            in_flight = fmt.endswith("-async") and committed == [0]
            assert newest_reported == -1 or in_flight
            newest_reported = -1
            continue
        newest = max(epochs)
        if fmt.endswith("-async") and committed:
            # SUBMITTED e: epoch e-1 is committed; e may be, and e+1 too if the kill came
            # after its save returned but before the child printed.
            assert newest in (newest_reported - 1, newest_reported, newest_reported + 1)
        else:
            # The manifest is the commit: it holds every reported commit, at most one more.
            assert newest in (newest_reported, newest_reported + 1)
        checkpoint = manager.load_latest(model)
        assert checkpoint["epoch"] == newest
        # No earlier checkpoint lost: exactly what the policies keep for epochs 0..newest.
        assert {c["file"] for c in manifest["checkpoints"]} == expected_files(
            newest, fmt.removesuffix("-async")
        )
        for entry in manifest["checkpoints"]:
            for name, info in entry["files"].items():
                assert file_sha256(directory / name, info["sha256_of"]) == info["sha256"]
        best_epoch = min(range(newest + 1), key=save_loop.metric)
        if manifest["best"] is not None:
            assert manager.load_best(model, restore_rng=False)["epoch"] == best_epoch
        newest_reported = newest
    print(
        f"\n{fmt}: {kills} kills, newest epoch {newest_reported}, {leftovers_seen} left temp "
        f"files; killed at {' '.join(killed_at)}"
    )
    assert leftovers_seen >= 1, "no kill left a temp file: the test never killed mid-write"
    assert newest_reported >= 3, "the child hardly ever committed: the test tests little"


# ----------------------------------------------------------------------------------------------
# A full disk, no permission
# ----------------------------------------------------------------------------------------------


def _full_disk_after(nbytes):
    def save(obj, f, *args, **kwargs):
        if hasattr(f, "write"):
            f.write(b"PK\x03\x04" + b"\0" * nbytes)
        else:
            Path(f).write_bytes(b"PK\x03\x04" + b"\0" * nbytes)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    return save


@pytest.mark.parametrize("fmt", ["torch", "safetensors"])
def test_disk_full_during_the_write(tmp_path, monkeypatch, fmt):
    manager = CheckpointManager(tmp_path, format=fmt)
    model, optimizer = save_epochs(manager, range(3))
    before = manifest_of(tmp_path)
    monkeypatch.setattr(torch, "save", _full_disk_after(1000))
    with pytest.raises(CheckpointWriteError) as info:
        manager.save(model, optimizer, None, 3, {"val_loss": 0.1})
    error = info.value
    assert error.errno == errno.ENOSPC
    assert "checkpoint_epoch_0003" in str(error)
    assert "free space" in str(error) and "Nothing was committed" in str(error)
    assert "checkpoint_epoch_0002" in str(error)  # names the checkpoint that is still good
    monkeypatch.undo()
    assert temp_files(tmp_path) == []
    assert not list(tmp_path.glob("checkpoint_epoch_0003*"))
    assert manifest_of(tmp_path) == before
    assert CheckpointManager(tmp_path, format=fmt).load_latest(model)["epoch"] == 2
    manager.save(model, optimizer, None, 3, {"val_loss": 0.1})  # space is back: it works
    assert manager.load_latest(model)["epoch"] == 3


def test_disk_full_during_the_manifest_commit(tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path)
    model, optimizer = save_epochs(manager, range(3))
    before = manifest_of(tmp_path)
    real = manifest_module.atomic_write

    def failing(path, write, **options):
        if Path(path).name == "manifest.json":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, write, **options)

    monkeypatch.setattr(manifest_module, "atomic_write", failing)  # the manifest's writes
    with pytest.raises(CheckpointWriteError, match="No space left"):
        manager.save(model, optimizer, None, 3, {"val_loss": 0.1}, is_best=True)
    monkeypatch.undo()
    assert manifest_of(tmp_path) == before
    assert not (tmp_path / "checkpoint_epoch_0003.pth").exists()  # written, never committed
    assert not (tmp_path / "best_model.pth").exists()
    assert manager.load_latest(model)["epoch"] == 2


def _mount_tiny_tmpfs(path, size):
    path.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
    )
    return result.returncode == 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fmt", ["torch", "safetensors"])
def test_a_really_full_disk(tmp_path, fmt):
    """On a real 3 MiB file system (needs root to mount; skipped elsewhere)."""
    mount = tmp_path / "small"
    if not _mount_tiny_tmpfs(mount, "3m"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        manager = CheckpointManager(mount / "ck", max_to_keep=None, format=fmt)
        torch.manual_seed(0)
        model = torch.nn.Linear(256, 256)  # 257 KiB a checkpoint
        saved = []
        with pytest.raises(CheckpointWriteError) as info:
            for epoch in range(100):
                manager.save(model, None, None, epoch, {"val_loss": 1.0})
                saved.append(epoch)
        assert info.value.errno == errno.ENOSPC
        assert f"checkpoint_epoch_{len(saved):04d}" in str(info.value)
        assert temp_files(mount / "ck") == []
        fresh = CheckpointManager(mount / "ck", format=fmt)
        assert fresh.load_latest(model)["epoch"] == saved[-1]
        assert [r["epoch"] for r in fresh.list_checkpoints()] == saved
    finally:
        # Lazy: a manager's open lock file would make a plain umount fail and leak the mount.
        subprocess.run(["umount", "--lazy", str(mount)], check=False)


def test_permission_denied(tmp_path, monkeypatch):
    """As root ``chmod`` does not stop writes, so the refusal is injected where the OS gives it."""
    manager = CheckpointManager(tmp_path)
    model, optimizer = save_epochs(manager, range(2))
    real = tempfile.mkstemp

    def refuse(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == tmp_path:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dir))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(CheckpointWriteError) as info:
        manager.save(model, optimizer, None, 2, {"val_loss": 0.1})
    assert info.value.errno == errno.EACCES
    assert "writable" in str(info.value) and "checkpoint_epoch_0002.pth" in str(info.value)
    monkeypatch.undo()
    assert manager.load_latest(model)["epoch"] == 1
    assert [r["epoch"] for r in manager.list_checkpoints()] == [0, 1]


def test_a_folder_without_write_permission_can_still_be_read(tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path)
    model, optimizer = save_epochs(manager, range(2))
    real_open = open

    def refuse_writes(path, mode="r", *args, **kwargs):
        if any(c in mode for c in "wa+x"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, mode, *args, **kwargs)

    for module in (lock_module, checkpoint_files_module):  # the lock file, the checkpoints
        monkeypatch.setattr(module, "open", refuse_writes, raising=False)
    reader = CheckpointManager(tmp_path)
    assert reader.read_only
    assert reader.load_latest(model)["epoch"] == 1
    with pytest.raises(CheckpointWriteError, match="writable") as info:
        reader.save(model, optimizer, None, 2, {"val_loss": 0.1})
    assert f"make {tmp_path} writable" in str(info.value)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores chmod")
def test_read_only_folder_for_real(tmp_path):
    manager = CheckpointManager(tmp_path)
    model, optimizer = save_epochs(manager, range(2))
    tmp_path.chmod(0o555)
    try:
        reader = CheckpointManager(tmp_path)  # reading a read-only folder works
        assert reader.load_latest(model)["epoch"] == 1
        with pytest.raises(CheckpointWriteError, match="writable"):
            reader.save(model, optimizer, None, 2, {"val_loss": 0.1})
    finally:
        tmp_path.chmod(0o755)


def test_background_save_error_is_raised_by_the_next_call(tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path, async_save=True)
    model, optimizer = save_epochs(manager, range(2))
    manager.wait()
    monkeypatch.setattr(torch, "save", _full_disk_after(10))
    manager.save(model, optimizer, None, 2, {"val_loss": 0.1})  # returns: the write fails later
    manager._background.join()
    monkeypatch.undo()
    with pytest.raises(CheckpointWriteError, match="No space left"):
        manager.save(model, optimizer, None, 3, {"val_loss": 0.1})
    manager.wait()  # the error was raised once; nothing is pending
    assert manager.load_latest(model)["epoch"] == 1
    assert temp_files(tmp_path) == []


# ----------------------------------------------------------------------------------------------
# Damaged files
# ----------------------------------------------------------------------------------------------


def flip_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def empty(path):
    path.write_bytes(b"")


def foreign(path):
    path.write_text("epoch,loss\n1,0.5\n")


@pytest.mark.parametrize("fmt", ["torch", "safetensors"])
@pytest.mark.parametrize("damage", [flip_byte, truncate, empty, foreign])
def test_damaged_latest_falls_back_with_a_warning(tmp_path, fmt, damage):
    manager = CheckpointManager(tmp_path, format=fmt)
    model, _ = save_epochs(manager, range(4))
    suffix = ".safetensors" if fmt == "safetensors" else ".pth"
    bad = tmp_path / f"checkpoint_epoch_0003{suffix}"
    damage(bad)
    with pytest.warns(CheckpointFallbackWarning) as caught:
        checkpoint = manager.load_latest(model)
    assert checkpoint["epoch"] == 2
    assert float(model.weight.detach()[0, 0]) == 2.0  # the model holds epoch 2, not a mix
    message = str(caught[0].message)
    assert (
        str(bad) in message
        and f"Loading checkpoint_epoch_0002{suffix}, the previous checkpoint" in message
    )
    with pytest.raises(CorruptCheckpointError) as info:
        manager.load(bad, model)
    assert str(bad) in str(info.value) and "How to fix" in str(info.value)
    # A fresh manager (e.g. after a restart) sees the same and still resumes.
    fresh, _ = quiet_manager(tmp_path, format=fmt)
    with pytest.warns(CheckpointFallbackWarning):
        assert fresh.load_latest(model)["epoch"] == 2


def test_damaged_sidecar_is_detected(tmp_path):
    manager = CheckpointManager(tmp_path, format="safetensors")
    model, _ = save_epochs(manager, range(3))
    flip_byte(tmp_path / "checkpoint_epoch_0002.train_state.pth")
    with pytest.warns(CheckpointFallbackWarning, match="train_state"):
        assert manager.load_latest(model)["epoch"] == 1


def test_unverified_load_still_refuses_a_damaged_file(tmp_path):
    manager = CheckpointManager(tmp_path)
    model, _ = save_epochs(manager, range(2))
    truncate(tmp_path / "checkpoint_epoch_0001.pth")
    with pytest.raises(CorruptCheckpointError, match="checkpoint_epoch_0001.pth"):
        manager.load(tmp_path / "checkpoint_epoch_0001.pth", model, verify=False)


def test_every_checkpoint_damaged(tmp_path):
    manager = CheckpointManager(tmp_path)
    model, _ = save_epochs(manager, range(2))
    for path in tmp_path.glob("checkpoint_epoch_*.pth"):
        empty(path)
    with pytest.warns(CheckpointFallbackWarning):
        with pytest.raises(CorruptCheckpointError, match="none of the 2 checkpoints"):
            manager.load_latest(model)


def test_damaged_best_model_falls_back_to_its_source(tmp_path):
    manager = CheckpointManager(tmp_path, keep_best=0, max_to_keep=2)
    model, optimizer = tiny()
    manager.save(model, optimizer, None, 0, {"val_loss": 0.5}, is_best=True)
    save_epochs(manager, range(1, 3), model, optimizer)
    best = tmp_path / "best_model.pth"
    # Break the hard link first, as a copy or restore would, then damage the copy.
    data = best.read_bytes()
    best.unlink()
    best.write_bytes(data)
    flip_byte(best)
    with pytest.warns(CheckpointFallbackWarning, match="best_model.pth"):
        assert manager.load_best(model)["epoch"] == 0


def test_missing_folder_and_empty_folder(tmp_path):
    model, _ = tiny()
    manager = CheckpointManager(tmp_path / "new")
    with pytest.raises(CheckpointNotFoundError, match="no checkpoint has been committed"):
        manager.load_latest(model)
    with pytest.raises(FileNotFoundError):  # the chapter's exception type still catches it
        manager.load_latest(model)
    with pytest.raises(CheckpointNotFoundError, match="best_model.pth"):
        manager.load_best(model)


def test_a_hard_link_is_not_a_backup_load_best_falls_back_to_the_best_intact(tmp_path):
    """One flipped bit damages best_model.pth and its source (one file, two names): the next
    best checkpoint by the metric is loaded, with a warning naming both."""
    manager = CheckpointManager(tmp_path, max_to_keep=3, keep_best=1)
    model, optimizer = tiny()
    for epoch, val_loss in enumerate([0.9, 0.2, 0.4, 0.6]):
        with torch.no_grad():
            model.weight.fill_(float(epoch))
        manager.save(model, optimizer, None, epoch, {"val_loss": val_loss}, is_best=epoch == 1)
    assert os.path.samefile(tmp_path / "best_model.pth", tmp_path / "checkpoint_epoch_0001.pth")
    flip_byte(tmp_path / "best_model.pth")
    with pytest.warns(CheckpointFallbackWarning) as caught:
        checkpoint = manager.load_best(model)
    assert checkpoint["epoch"] == 2 and checkpoint["metrics"]["val_loss"] == 0.4
    messages = " ".join(str(w.message) for w in caught)
    assert "best_model.pth" in messages and "checkpoint_epoch_0001.pth" in messages
    assert "next best" in messages


def test_load_best_with_every_candidate_damaged_names_them_all(tmp_path):
    manager = CheckpointManager(tmp_path, max_to_keep=2, keep_best=0)
    model, optimizer = tiny()
    for epoch in range(2):
        manager.save(model, optimizer, None, epoch, {"val_loss": 1.0 - epoch / 10}, is_best=True)
    for name in ("checkpoint_epoch_0000.pth", "checkpoint_epoch_0001.pth"):
        flip_byte(tmp_path / name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CorruptCheckpointError, match="checkpoint_epoch_0000.pth"):
            manager.load_best(model)


def test_load_best_without_a_best_pointer_and_every_file_damaged_is_a_clear_error(tmp_path):
    """No save was marked best: the candidates are ranked by the metric; all damaged -> one error."""
    manager = CheckpointManager(tmp_path, max_to_keep=3, keep_best=0)
    model, optimizer = tiny()
    for epoch in range(2):
        manager.save(model, optimizer, None, epoch, {"val_loss": 1.0 - epoch / 10})
    for epoch in range(2):
        flip_byte(tmp_path / f"checkpoint_epoch_{epoch:04d}.pth")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(CorruptCheckpointError, match="no best checkpoint loads"):
            manager.load_best(model)
    assert "No other checkpoint" in str(caught[-1].message)
