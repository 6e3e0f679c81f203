"""Readers of a checkpoint folder that others are writing: always a committed checkpoint, no hang."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest

from course_lib.manager import CheckpointManager
from course_lib.models import make_mlp
from course_lib.safe_io import CheckpointError

ROOT = Path(__file__).resolve().parents[2]

WRITER = textwrap.dedent(
    """
    import sys, warnings
    from course_lib.manager import CheckpointManager
    from course_lib.models import make_mlp
    warnings.simplefilter("ignore")
    manager = CheckpointManager(sys.argv[1], max_to_keep=1, keep_best=0)
    model = make_mlp()
    epoch = int(sys.argv[2])
    while True:
        manager.save(model, None, None, epoch, {"val_loss": 1.0})
        epoch += 2
    """
)


@pytest.mark.timeout(120)
def test_load_latest_always_gets_a_committed_checkpoint_while_two_writers_prune(tmp_path):
    folder = tmp_path / "shared"
    CheckpointManager(folder, max_to_keep=1).save(make_mlp(), None, None, 0, {"val_loss": 1.0})
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(folder), str(start)], cwd=ROOT)
        for start in (1, 2)
    ]
    problems, loads = [], 0
    try:
        reader = CheckpointManager(folder, max_to_keep=1)
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    reader.load_latest(make_mlp(), None, restore_rng=False)
                    loads += 1
                except Exception as exc:  # noqa: BLE001 - what the test counts
                    problems.append(f"{type(exc).__name__}: {exc}"[:200])
            problems += [str(w.message)[:200] for w in caught]
    finally:
        for writer in writers:
            writer.kill()
            writer.wait()
    assert loads > 20
    assert not problems, f"{len(problems)} problems in {loads} loads: {problems[:3]}"


@pytest.mark.timeout(60)
def test_a_stopped_lock_holder_gives_a_clear_error_not_a_hang(tmp_path):
    folder = tmp_path / "shared"
    CheckpointManager(folder).save(make_mlp(), None, None, 0, {"val_loss": 1.0})
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, os, signal\n"
         "from pathlib import Path\n"
         "from course_lib.manager.lock import FolderLock\n"
         "with FolderLock(Path(sys.argv[1])):\n"
         "    print('locked', flush=True)\n"
         "    os.kill(os.getpid(), signal.SIGSTOP)\n",
         str(folder)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        started = time.monotonic()
        with pytest.raises(CheckpointError, match="lock") as info:
            CheckpointManager(folder, lock_timeout=2)
        assert time.monotonic() - started < 10
        assert "holds" in info.value.problem and info.value.fix
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert os.path.exists(folder / "manifest.json")
