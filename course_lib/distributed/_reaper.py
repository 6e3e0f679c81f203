"""Ending a torchrun run and everything it started, also after the process that started it died.

torchrun puts each worker in a session of its own (so killing torchrun's process group misses
them), and a worker killed with its parent gone is re-parented to init, out of reach. So the reaper
finds the whole tree while torchrun still lives (``ps``: pid and parent of every process), plus,
on Linux, every process whose environment carries the run's marker variable (inherited by all
descendants, whatever their parent now), stops them all with SIGSTOP so none can start another,
then kills them.

Run as a file (``python _reaper.py``) it is the *guardian*: it reads a marker and process ids on
stdin and reaps them when stdin closes, which happens when the run ends or when the notebook
kernel or test that started it dies. It imports nothing of the course, so it starts in an instant.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

__all__ = ["reap"]

MARKER_VARIABLE = "COURSE_TORCHRUN_RUN"


def _parents() -> dict[int, int]:
    out = subprocess.run(["ps", "-A", "-o", "pid=,ppid="], capture_output=True, text=True).stdout
    table = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
            table[int(parts[0])] = int(parts[1])
    return table


def _marked(marker: str) -> set[int]:
    needle = f"{MARKER_VARIABLE}={marker}".encode() + b"\0"
    found = set()
    if not os.path.isdir("/proc"):
        return found
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                if needle in f.read() + b"\0":
                    found.add(int(name))
        except OSError:
            continue
    return found


def _tree(roots: set[int]) -> set[int]:
    parents = _parents()
    found = {pid for pid in roots if pid in parents}
    grew = True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in found} - found
        found |= more
        grew = bool(more)
    return found


def reap(roots: list[int], marker: str) -> None:
    """Stop, then kill, ``roots``, all their descendants and every process carrying ``marker``."""
    me = {os.getpid(), os.getppid()}
    for _ in range(10):
        found = (_tree(set(roots)) | _marked(marker)) - me
        if not found:
            return
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for pid in found:
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
            if sig == signal.SIGSTOP:  # stopped: no one forks any more; look once more
                found |= (_tree(set(roots)) | _marked(marker)) - me
        roots = [pid for pid in roots if pid not in found]
        time.sleep(0.05)


def _guard() -> None:
    marker = sys.stdin.readline().strip()
    roots = []
    for line in sys.stdin:  # returns when stdin closes: the starter finished or died
        if line.strip().isdigit():
            roots.append(int(line))
    reap(roots, marker)


if __name__ == "__main__":
    _guard()
