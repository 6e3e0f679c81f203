"""course_lib.safe_io's writers (atomic_write, safe_save, save_with_backup) under real faults.

A full disk (injected ENOSPC, and a real 1 MiB tmpfs where mounts are allowed), a read-only
directory, a kill -9 in the middle of a save, permissions, and the fsync/rename order. Each fault
test checks the same promise: the old file is intact and loadable, no temporary file is left
behind (except after SIGKILL, where nothing can clean up), and the error reaches the caller.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from course_lib.safe_io import (
    CorruptCheckpointError,
    atomic_write,
    safe_load,
    safe_save,
    save_with_backup,
)

ROOT = Path(__file__).resolve().parent.parent


def chapter_safe_save(obj, path):
    """The chapter's version, as written."""
    temp_path = path + ".tmp"
    torch.save(obj, temp_path)
    shutil.move(temp_path, path)


def _state(gen: int, numel: int = 1000) -> dict:
    # NumPy fills the array: a torch op in a forked child can hang in OpenMP (see below).
    return {"gen": gen, "data": torch.from_numpy(np.full(numel, gen, dtype=np.float32))}


def _assert_complete(path: Path) -> int:
    """Load ``path`` and check that it is one whole save; return its generation."""
    loaded = safe_load(path, map_location="cpu")
    assert torch.all(loaded["data"] == loaded["gen"]), f"{path} mixes two saves"
    return loaded["gen"]


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def _enospc_half_way(obj, f, *args, **kwargs):
    """A torch.save that writes half a file, then finds the disk full."""
    Path(f).write_bytes(b"PK\x03\x04" + b"\0" * 5000)
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# ----------------------------------------------------------------------------------------------
# Injected faults (run everywhere)
# ----------------------------------------------------------------------------------------------


def test_disk_full_during_the_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "model.pth"
    safe_save(_state(1), path)
    monkeypatch.setattr(torch, "save", _enospc_half_way)
    with pytest.raises(OSError) as info:
        safe_save(_state(2), path)
    assert info.value.errno == errno.ENOSPC
    assert any("model.pth is unchanged" in note for note in getattr(info.value, "__notes__", []))
    monkeypatch.undo()
    assert _assert_complete(path) == 1
    assert _names(tmp_path) == ["model.pth"]  # the temp file is gone


def test_the_chapters_safe_save_leaves_its_tmp_file_behind(tmp_path, monkeypatch):
    """The contrast: same fault, the chapter's version leaves ``model.pth.tmp``."""
    path = tmp_path / "model.pth"
    chapter_safe_save(_state(1), str(path))
    monkeypatch.setattr(torch, "save", _enospc_half_way)
    with pytest.raises(OSError):
        chapter_safe_save(_state(2), str(path))
    assert _names(tmp_path) == ["model.pth", "model.pth.tmp"]


def test_permission_denied_from_the_writer_keeps_the_old_file(tmp_path):
    path = tmp_path / "model.pth"
    safe_save(_state(1), path)

    def refuses(temp: Path) -> None:
        temp.write_bytes(b"partial")
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(temp))

    with pytest.raises(PermissionError):
        atomic_write(path, refuses)
    assert _assert_complete(path) == 1
    assert _names(tmp_path) == ["model.pth"]


def test_keyboard_interrupt_during_the_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "model.pth"
    safe_save(_state(1), path)

    def interrupted(temp: Path) -> None:
        torch.save(_state(2), temp)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, interrupted)
    assert _assert_complete(path) == 1 and _names(tmp_path) == ["model.pth"]


def test_success_leaves_only_the_file(tmp_path):
    for gen in range(3):
        safe_save(_state(gen), tmp_path / "model.pth")
    assert _names(tmp_path) == ["model.pth"] and _assert_complete(tmp_path / "model.pth") == 2
    safe_save(_state(5), str(tmp_path / "as_str.pth"))  # a str path, as the chapter passes
    assert _assert_complete(tmp_path / "as_str.pth") == 5


def test_file_fsynced_before_the_rename_and_directory_after(tmp_path, monkeypatch):
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(src, dst) -> None:
        events.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    safe_save(_state(1), tmp_path / "model.pth")
    assert events == ["fsync file", "replace", "fsync dir"]


# ----------------------------------------------------------------------------------------------
# Permissions: like a plain save
# ----------------------------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_new_file_mode_is_what_a_plain_save_gives(tmp_path, umask):
    old = os.umask(umask)
    try:
        torch.save(_state(0), tmp_path / "plain.pth")
        safe_save(_state(0), tmp_path / "safe.pth")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "safe.pth") == _mode(tmp_path / "plain.pth") == 0o666 & ~umask


def test_overwriting_keeps_the_files_mode_like_a_plain_save(tmp_path):
    for name in ("plain.pth", "safe.pth"):
        torch.save(_state(0), tmp_path / name)
        os.chmod(tmp_path / name, 0o600)
    torch.save(_state(1), tmp_path / "plain.pth")
    safe_save(_state(1), tmp_path / "safe.pth")
    assert _mode(tmp_path / "safe.pth") == _mode(tmp_path / "plain.pth") == 0o600


# ----------------------------------------------------------------------------------------------
# save_with_backup
# ----------------------------------------------------------------------------------------------


def test_save_with_backup_keeps_the_previous_file(tmp_path):
    path = tmp_path / "model.pth"
    save_with_backup(_state(1), path)
    assert _names(tmp_path) == ["model.pth"]
    save_with_backup(_state(2), path)
    assert _assert_complete(path) == 2
    assert _assert_complete(tmp_path / "model.pth.backup") == 1
    save_with_backup(_state(3), str(path))
    assert _assert_complete(path) == 3
    assert _assert_complete(tmp_path / "model.pth.backup") == 2
    assert path.stat().st_ino != (tmp_path / "model.pth.backup").stat().st_ino
    assert _names(tmp_path) == ["model.pth", "model.pth.backup"]


def test_save_with_backup_keeps_a_private_files_mode(tmp_path):
    path = tmp_path / "model.pth"
    save_with_backup(_state(1), path)
    save_with_backup(_state(2), path)
    os.chmod(path, 0o600)
    save_with_backup(_state(3), path)
    assert _mode(path) == 0o600
    assert _mode(tmp_path / "model.pth.backup") == 0o600


def test_safe_save_writes_through_a_symlink_like_torch_save(tmp_path):
    target = tmp_path / "real.pth"
    link = tmp_path / "latest.pth"
    safe_save(_state(1), target)
    link.symlink_to(target)
    safe_save(_state(2), link)
    assert link.is_symlink() and _assert_complete(target) == 2


def test_missing_directory_names_the_destination(tmp_path):
    destination = tmp_path / "no_such_dir" / "model.pth"
    with pytest.raises(FileNotFoundError) as info:
        safe_save(_state(1), destination)
    assert f"{destination} is unchanged" in "\n".join(getattr(info.value, "__notes__", []))


# ----------------------------------------------------------------------------------------------
# kill -9 in the middle of a save
# ----------------------------------------------------------------------------------------------


def _kill_savers_at_random(path: Path, save, kills: int, numel: int) -> int:
    """Fork a process that saves generation after generation of ``numel`` floats to ``path``;
    SIGKILL it at a random moment, ``kills`` times. The child runs no torch op, only
    ``torch.save``: after a fork, a parallel torch op (OpenMP) in the child can deadlock. Return how many kills hit a write in flight
    (a partly written file exists). ``path`` holds generation 0 to begin with."""
    rng = random.Random(1234)
    in_flight = 0
    gen = 0
    for _ in range(kills):
        start = gen + 1
        pid = os.fork()
        if pid == 0:  # the child: save forever, never returns
            try:
                g = start
                while True:
                    save(_state(g, numel), path)
                    g += 1
            finally:
                os._exit(1)
        deadline = time.monotonic() + rng.uniform(0.05, 0.4)
        while time.monotonic() < deadline:
            time.sleep(0.002)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        temps = [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
        in_flight += bool(temps)
        for p in temps:
            p.unlink()
        gen = max(gen, _assert_complete(path))  # raises CorruptCheckpointError if damaged
    return in_flight


@pytest.mark.timeout(120)
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_kill_9_during_safe_save_never_loses_the_file(tmp_path):
    path = tmp_path / "model.pth"
    safe_save(_state(0), path)
    in_flight = _kill_savers_at_random(path, safe_save, kills=20, numel=2_000_000)
    # Each kill left path complete (checked inside); some kills really hit a save in progress.
    assert in_flight >= 3, f"only {in_flight} of 20 kills hit a save in progress"


@pytest.mark.timeout(120)
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_kill_9_during_plain_torch_save_corrupts_the_file(tmp_path):
    """The same harness detects the damage a plain ``torch.save`` does (so the test above can fail)."""
    path = tmp_path / "model.pth"
    torch.save(_state(0), path)
    with pytest.raises(CorruptCheckpointError, match="model.pth"):
        for _ in range(20):
            _kill_savers_at_random(path, torch.save, kills=1, numel=2_000_000)


# ----------------------------------------------------------------------------------------------
# A real full disk and a real read-only directory, in a private mount namespace (root only)
# ----------------------------------------------------------------------------------------------

_NAMESPACE_SCRIPT = textwrap.dedent(
    """
    import errno, json, os, sys, torch
    from pathlib import Path
    from course_lib.safe_io import safe_save, safe_load, save_with_backup
    where, kind = Path(sys.argv[1]), sys.argv[2]
    path = where / "model.pth"
    result = {}
    try:
        if kind == "backup":
            save_with_backup(torch.full((10,), 1.0), path)
            save_with_backup(torch.full((10,), 2.0), path)
            result["backup_before"] = safe_load(str(path) + ".backup", map_location="cpu").tolist()
            save_with_backup(torch.full((4_000_000,), 3.0), path)  # 16 MB into 1 MiB
        elif kind == "full":
            safe_save(torch.full((4_000_000,), 2.0), path)  # 16 MB into a 1 MiB file system
        else:
            safe_save(torch.full((10,), 2.0), path)
        result["error"] = None
    except Exception as exc:  # safe_save turns torch's RuntimeError into OSError(ENOSPC)
        result["error"] = getattr(exc, "errno", None)
        result["type"] = type(exc).__name__
        result["message"] = str(exc).splitlines()[0]
        result["notes"] = getattr(exc, "__notes__", [])
    result["old"] = safe_load(path, map_location="cpu").tolist()
    if kind == "backup":
        result["backup"] = safe_load(str(path) + ".backup", map_location="cpu").tolist()
    result["names"] = sorted(os.listdir(where))
    print(json.dumps(result))
    """
)


def _in_private_mount_namespace(tmp_path: Path, mount: str, kind: str) -> dict:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare(1) for a private mount namespace")
    where = tmp_path / "mnt"
    where.mkdir()
    if kind in ("full", "backup"):
        setup = f"mount -t tmpfs -o size=1m tmpfs {where}"
        prepare = (
            f"{sys.executable} -c 'import torch; torch.save(torch.ones(3), \"{where}/model.pth\")'"
        )
        setup = f"{setup} && {prepare}"
    else:
        torch.save(torch.ones(3), where / "model.pth")
        setup = f"mount --bind {where} {where} && mount -o remount,ro,bind {where}"
    script = tmp_path / "job.py"
    script.write_text(_NAMESPACE_SCRIPT)
    command = f"{setup} && {sys.executable} {script} {where} {kind}"
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", command],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
    )
    if (
        result.returncode != 0
        and "mount" in result.stderr
        and "permission" in result.stderr.lower()
    ):
        pytest.skip(f"mounts not allowed here: {result.stderr.strip()[-200:]}")
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(120)
def test_real_full_disk_keeps_the_old_file(tmp_path):
    """torch.save reports a full disk as RuntimeError("... unexpected pos ..."); safe_save says ENOSPC."""
    result = _in_private_mount_namespace(tmp_path, "tmpfs", "full")
    assert result["type"] == "OSError", result
    assert result["error"] == errno.ENOSPC and "torch.save" in result["message"], result
    assert result["old"] == [1.0, 1.0, 1.0]
    assert result["names"] == ["model.pth"]


@pytest.mark.timeout(120)
def test_real_read_only_directory_keeps_the_old_file(tmp_path):
    """As root, chmod does not stop a write: a read-only bind mount does (EROFS)."""
    result = _in_private_mount_namespace(tmp_path, "bind", "readonly")
    assert result["error"] in (errno.EROFS, errno.EACCES)
    assert result["old"] == [1.0, 1.0, 1.0]
    assert result["names"] == ["model.pth"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_directory_by_permissions(tmp_path):
    path = tmp_path / "model.pth"
    safe_save(_state(1), path)
    os.chmod(tmp_path, 0o555)
    try:
        with pytest.raises(PermissionError):
            safe_save(_state(2), path)
    finally:
        os.chmod(tmp_path, 0o755)
    assert _assert_complete(path) == 1 and _names(tmp_path) == ["model.pth"]


def test_backup_already_linked_to_the_live_file_leaves_no_temp(tmp_path):
    """After a failed save, the backup can be a hard link of the live file; saving again is clean."""
    path = tmp_path / "m.pth"
    safe_save(_state(1), path)
    os.link(path, tmp_path / "m.pth.backup")
    save_with_backup(_state(2), path)
    assert _names(tmp_path) == ["m.pth", "m.pth.backup"]
    assert _assert_complete(tmp_path / "m.pth.backup") == 1 and _assert_complete(path) == 2


def test_directory_fsync_can_be_left_to_a_later_commit(tmp_path, monkeypatch):
    import course_lib.safe_io as safe_io

    synced = []
    monkeypatch.setattr(safe_io, "fsync_directory", synced.append)
    safe_io.atomic_write(tmp_path / "a.bin", lambda t: t.write_bytes(b"a"), sync_directory=False)
    assert synced == []
    safe_io.atomic_write(tmp_path / "b.bin", lambda t: t.write_bytes(b"b"))
    assert synced == [tmp_path]


def test_save_with_backup_on_a_full_disk_keeps_both_generations(tmp_path, monkeypatch):
    """The backup rotates only once the new file is fully written: a full disk loses nothing."""
    path = tmp_path / "model.pth"
    save_with_backup(_state(1), path)
    save_with_backup(_state(2), path)  # model.pth: generation 2, its backup: generation 1
    monkeypatch.setattr(torch, "save", _enospc_half_way)
    with pytest.raises(OSError):
        save_with_backup(_state(3), path)
    monkeypatch.undo()
    assert _assert_complete(path) == 2
    assert _assert_complete(tmp_path / "model.pth.backup") == 1
    assert _names(tmp_path) == ["model.pth", "model.pth.backup"]


@pytest.mark.timeout(120)
def test_real_full_disk_keeps_both_generations_of_save_with_backup(tmp_path):
    result = _in_private_mount_namespace(tmp_path, "tmpfs", "backup")
    assert result["error"] == errno.ENOSPC, result
    assert result["old"] == [2.0] * 10 and result["backup"] == [1.0] * 10, result
    assert result["names"] == ["model.pth", "model.pth.backup"]
