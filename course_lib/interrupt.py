"""Kill a real process at a chosen moment: the crashes that notebooks 03b and 09 show.

``SIGKILL`` (``kill -9``) gives a process no chance to clean up, like a power cut or the
out-of-memory killer. These harnesses start the process, wait for the moment (an epoch's
checkpoint on disk; a save half written) and kill it there, so that the notebook shows what the
crash left behind. Taught in notebooks/03b_resume_in_depth.ipynb (step 3) and
notebooks/09_safe_saving.ipynb (step 1).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from course_lib.errors import FileError

__all__ = ["InterruptError", "KilledRun", "kill_demo_job_after", "kill_while_saving"]


class InterruptError(FileError):
    """The process could not be killed at the moment asked for; says why and what to do."""


@dataclass(frozen=True)
class KilledRun:
    """What a killed process left: its exit code (negative: the signal) and its output."""

    returncode: int
    log: str

    @property
    def killed(self) -> bool:
        """Whether the process ended by the kill rather than by finishing."""
        return self.returncode != 0


def _reported(log: Path, epoch: int) -> bool:
    """Has the job printed the whole line for ``epoch``? (It prints once the file is saved.)"""
    whole_lines = log.read_text().split("\n")[:-1]
    return any(line.startswith(f"Epoch {epoch}:") for line in whole_lines)


def kill_demo_job_after(
    run_dir: str | os.PathLike[str],
    epochs: int,
    log: str | os.PathLike[str],
    *,
    epoch_delay: float = 0.4,
    timeout: float = 120.0,
) -> KilledRun:
    """Run ``python -m course_lib.demo_job run_dir`` in another process; ``SIGKILL`` it once it
    reported ``epochs`` finished epochs (their checkpoint is on disk).

    The job pauses ``epoch_delay`` seconds between epochs, so the kill lands at the same point on
    every run. Taught in notebooks/03b_resume_in_depth.ipynb, step 3.
    """
    log = Path(log)
    command = [sys.executable, "-u", "-m", "course_lib.demo_job", str(run_dir)]
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [*command, "--epoch-delay", str(epoch_delay)], stdout=out, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while not _reported(log, epochs - 1):
            if proc.poll() is not None:
                raise InterruptError(log, "the job ended before it was killed", "read its log")
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise InterruptError(
                    log, f"no epoch {epochs - 1} within {timeout:.0f} s", "raise timeout="
                )
            time.sleep(0.02)
        proc.kill()  # SIGKILL on Linux and macOS
        proc.wait()
    return KilledRun(proc.returncode, log.read_text())


# Saves a 64 MB state to a path again and again, with plain torch.save or safe_save.
_SAVER = """
import sys, torch
from course_lib.safe_io import safe_save
path, how = sys.argv[1], sys.argv[2]
state = {"generation": 1, "weights": torch.full((16_000_000,), 1.0)}  # 64 MB
save = torch.save if how == "plain" else safe_save
while True:
    save(state, path)
"""


def kill_while_saving(how: str, path: str | os.PathLike[str], *, timeout: float = 60.0) -> int:
    """Save a 64 MB state to ``path`` in a loop in another process (``how``: ``'plain'`` for
    ``torch.save``, ``'safe'`` for ``safe_save``) and ``SIGKILL`` it while a file is half
    written; return its exit code.

    ``path`` must already hold a complete save (its size tells "half written"). Taught in
    notebooks/09_safe_saving.ipynb, step 1.
    """
    if how not in ("plain", "safe"):
        raise ValueError(f"how must be 'plain' or 'safe', not {how!r}")
    path = Path(path)
    full = path.stat().st_size
    watched = path.name if how == "plain" else f".{path.name}.*.tmp"
    proc = subprocess.Popen([sys.executable, "-c", _SAVER, str(path), how])
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise InterruptError(
                path,
                f"never saw a half-written file in {timeout:.0f} s (a very fast disk?)",
                "run it again, or with a larger timeout=",
            )
        for f in path.parent.glob(watched):
            try:
                size = f.stat().st_size
            except FileNotFoundError:  # renamed away between glob and stat
                continue
            if 4_000_000 < size < full - 1_000_000:
                proc.kill()
                break
        time.sleep(0.0005)
    proc.wait()
    return proc.returncode
