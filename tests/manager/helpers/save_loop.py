"""Child process for tests/manager/test_faults.py: resume from the latest checkpoint, then save in a loop.

Prints ``STARTED <epoch>`` before the first save and ``COMMITTED <epoch>`` after each save returns,
so the test knows what it had committed. FORMAT ``torch-async`` saves with ``async_save=True`` and
prints ``SUBMITTED <epoch>`` instead: the save of that epoch is in flight, the previous one is
committed.

The kill point is chosen by the test, not by a clock: with ``PAUSE_AT`` = n the n-th file-system
step after ``STARTED`` (an ``os.fsync``, ``os.replace``, ``os.rename``, ``os.link``, ``os.unlink``,
or the middle of a ``torch.save`` file, half of its bytes written) blocks for good after printing
``PAUSED <n> <step>``, and the test SIGKILLs the process there. The same n stops the save at the
same point on a slow laptop and on a fast GPU machine (a delay did not: a fast machine finished
the save first).

Usage: ``python save_loop.py CHECKPOINT_DIR FORMAT PAUSE_AT`` runs one saving process. ``python
save_loop.py --zygote`` imports torch once, then for each ``RUN CHECKPOINT_DIR FORMAT PAUSE_AT``
line on stdin forks a saving process, prints ``PID <pid>``, and once it has died prints ``REAPED
<pid> <status>``: importing torch afresh for each of 20+ kills would take most of a minute.
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
import threading
import time
import traceback
import warnings
from pathlib import Path

import torch

import course_lib.manager.files as files_module
from course_lib.manager import CheckpointManager
from course_lib.safe_io import CheckpointNotFoundError

POLICY = {"max_to_keep": 2, "keep_best": 1, "keep_every": 4}
_STEPS = ("fsync", "replace", "rename", "link", "unlink")
_say_lock = threading.Lock()


def say(*words: object) -> None:
    """One whole line on stdout (the saving thread and the main thread both report)."""
    with _say_lock:
        sys.stdout.write(" ".join(str(w) for w in words) + "\n")
        sys.stdout.flush()


def metric(epoch: int) -> float:
    """A deterministic, jumpy validation loss, so the best epoch is not simply the latest."""
    return ((epoch * 7919) % 101) / 101 + 1.0 / (epoch + 1)


def is_best(epoch: int) -> bool:
    return metric(epoch) < min((metric(e) for e in range(epoch)), default=float("inf"))


def pause_at(n: int) -> None:
    """From now on, count the file-system steps of this process; block forever at the n-th."""
    count = 0
    lock = threading.Lock()

    def step(name: str) -> None:
        nonlocal count
        with lock:
            count += 1
            here = count
        if here == n:
            say("PAUSED", n, name)
            while True:  # until the test's SIGKILL
                time.sleep(3600)

    def hooked(name: str, real):
        def call(*args, **kwargs):
            step(name)
            return real(*args, **kwargs)

        return call

    for name in _STEPS:
        setattr(os, name, hooked(name, getattr(os, name)))

    def torch_save_in_two_halves(obj, path) -> None:
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        data = buffer.getbuffer()
        with open(path, "wb") as handle:
            handle.write(data[: len(data) // 2])
            handle.flush()
            step("half-written")
            handle.write(data[len(data) // 2 :])

    files_module.torch_save = torch_save_in_two_halves


def save_forever(directory: str, fmt: str, pause: int) -> None:
    asynchronous = fmt.endswith("-async")
    fmt = fmt.removesuffix("-async")
    warnings.simplefilter("ignore")  # untracked leftovers of the previous kill are reported
    torch.manual_seed(0)
    model = torch.nn.Linear(512, 512)  # about 1 MB of weights, 3 MB with Adam's moments
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    manager = CheckpointManager(directory, format=fmt, async_save=asynchronous, **POLICY)
    try:
        start = manager.load_latest(model, optimizer)["epoch"] + 1
    except CheckpointNotFoundError:
        start = 0
    say("STARTED", start)
    pause_at(pause)
    for epoch in range(start, start + 100_000):
        loss = model(torch.randn(8, 512)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        manager.save(
            model, optimizer, None, epoch, {"val_loss": metric(epoch)}, is_best=is_best(epoch)
        )
        say("SUBMITTED" if asynchronous else "COMMITTED", epoch)
    say("NEVER PAUSED")


def zygote() -> None:
    # Warm up what the first Adam step and save import lazily (seconds), once, before forking.
    with tempfile.TemporaryDirectory() as scratch:
        model = torch.nn.Linear(4, 4)
        optimizer = torch.optim.Adam(model.parameters())
        model(torch.randn(2, 4)).sum().backward()
        optimizer.step()
        for fmt in ("torch", "safetensors"):
            manager = CheckpointManager(Path(scratch) / fmt, format=fmt, async_save=True)
            manager.save(model, optimizer, None, 0, {"val_loss": 1.0}, is_best=True)
            manager.load_latest(model, optimizer)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        # A forked child cannot use CUDA once its parent did: it would die at its first load.
        say("ERROR the zygote initialised CUDA: run it with COURSE_DEVICE=cpu")
        return
    say("READY")
    for line in sys.stdin:
        _, directory, fmt, pause = line.split()
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            try:
                save_forever(directory, fmt, int(pause))
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stderr.flush()
                os._exit(1)
        say("PID", pid)
        _, status = os.waitpid(pid, 0)
        say("REAPED", pid, status)


if __name__ == "__main__":
    if sys.argv[1] == "--zygote":
        zygote()
    else:
        save_forever(sys.argv[1], sys.argv[2], int(sys.argv[3]))
