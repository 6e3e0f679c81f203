"""Child process for tests/test_manager_faults.py: resume from the latest checkpoint, then save in a loop.

Prints ``STARTED <epoch>`` before the first save and ``COMMITTED <epoch>`` after each save returns,
so the test knows when to kill it and what it had committed. FORMAT ``torch-async`` saves with
``async_save=True`` and prints ``SUBMITTED <epoch>`` instead: the save of that epoch is in flight,
the previous one is committed. The test SIGKILLs it at a random
moment.

Usage: ``python save_loop.py CHECKPOINT_DIR FORMAT`` runs one saving process. ``python save_loop.py
--zygote`` imports torch once, then for each ``RUN CHECKPOINT_DIR FORMAT`` line on stdin forks a
saving process, prints ``PID <pid>``, and once it has died prints ``REAPED <pid> <status>``:
importing torch afresh for each of 20+ kills would take most of a minute.
"""

from __future__ import annotations

import os
import sys
import tempfile
import warnings
from pathlib import Path

import torch

from course_lib.manager import CheckpointManager
from course_lib.safe_io import CheckpointNotFoundError

POLICY = {"max_to_keep": 2, "keep_best": 1, "keep_every": 4}


def metric(epoch: int) -> float:
    """A deterministic, jumpy validation loss, so the best epoch is not simply the latest."""
    return ((epoch * 7919) % 101) / 101 + 1.0 / (epoch + 1)


def is_best(epoch: int) -> bool:
    return metric(epoch) < min((metric(e) for e in range(epoch)), default=float("inf"))


def save_forever(directory: str, fmt: str) -> None:
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
    print("STARTED", start, flush=True)
    for epoch in range(start, start + 100_000):
        loss = model(torch.randn(8, 512)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        manager.save(
            model, optimizer, None, epoch, {"val_loss": metric(epoch)}, is_best=is_best(epoch)
        )
        print("SUBMITTED" if asynchronous else "COMMITTED", epoch, flush=True)


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
    print("READY", flush=True)
    for line in sys.stdin:
        _, directory, fmt = line.split()
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            try:
                save_forever(directory, fmt)
            finally:
                os._exit(1)
        print("PID", pid, flush=True)
        _, status = os.waitpid(pid, 0)
        print("REAPED", pid, status, flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "--zygote":
        zygote()
    else:
        save_forever(sys.argv[1], sys.argv[2])
