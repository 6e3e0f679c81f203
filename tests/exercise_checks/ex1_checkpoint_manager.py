"""Hidden checks for exercise 1 (checkpoint management). Each check gets the notebook's namespace."""

from __future__ import annotations

import os
import time

import torch

MAX_POINTS = 5


def _manager(ns, workdir, name, max_to_keep=3):
    cls = ns.get("SimpleCheckpointManager")
    assert cls is not None, "SimpleCheckpointManager is not defined"
    return cls(workdir / name, max_to_keep=max_to_keep)


def _state(epoch):
    return {"epoch": epoch, "weights": torch.full((2,), float(epoch))}


def check_names_and_retention(ns, workdir):
    manager = _manager(ns, workdir, "retention", max_to_keep=2)
    for epoch in (1, 2, 3, 10, 11):
        manager.save(_state(epoch), epoch)
    names = sorted(p.name for p in manager.directory.iterdir())
    assert names == ["checkpoint_epoch_0010.pth", "checkpoint_epoch_0011.pth"], (
        f"with max_to_keep=2 after epochs 1, 2, 3, 10, 11 the folder should hold epochs 10 and 11; it holds {names}"
    )
    assert manager.epochs() == [10, 11], f"epochs() returned {manager.epochs()}"


def check_latest_by_epoch_not_file_time(ns, workdir):
    manager = _manager(ns, workdir, "times", max_to_keep=5)
    for epoch in (1, 2, 3):
        manager.save(_state(epoch), epoch)
    oldest = manager.directory / "checkpoint_epoch_0001.pth"
    time.sleep(0.05)  # file times tick coarsely (a few ms): make the change below visible
    future = time.time() + 3600
    os.utime(oldest, (future, future))
    os.chmod(oldest, 0o644)  # changes the ctime, as the chapter's manager relied on
    assert manager.load_latest()["epoch"] == 3, (
        "load_latest must pick the highest epoch, whatever the file times say"
    )


def check_failed_save_loses_nothing(ns, workdir):
    manager = _manager(ns, workdir, "failure", max_to_keep=3)
    manager.save(_state(1), 1)
    try:
        manager.save({"epoch": 1, "bad": lambda: None}, 1)  # cannot be pickled: the save fails
    except Exception:
        pass
    else:
        raise AssertionError("saving an object that cannot be pickled should raise")
    leftovers = [
        p.name for p in manager.directory.iterdir() if p.name != "checkpoint_epoch_0001.pth"
    ]
    assert not leftovers, f"a failed save left files behind: {leftovers}"
    assert manager.load_latest()["epoch"] == 1, "a failed save destroyed the previous checkpoint"


def check_refuses_code_in_checkpoints(ns, workdir):
    manager = _manager(ns, workdir, "malicious", max_to_keep=3)
    manager.save(_state(1), 1)
    marker = workdir / "PAYLOAD_RAN"

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('x')",))

    torch.save({"epoch": 2, "x": Payload()}, manager.directory / "checkpoint_epoch_0002.pth")
    try:
        manager.load_latest()
    except Exception:
        pass
    assert not marker.exists(), (
        "load_latest ran code from a checkpoint: load with weights_only=True"
    )


def check_empty_directory_raises_file_not_found(ns, workdir):
    manager = _manager(ns, workdir, "empty", max_to_keep=3)
    try:
        manager.load_latest()
    except FileNotFoundError:
        return
    except Exception as exc:
        raise AssertionError(
            f"an empty folder should raise FileNotFoundError, not {type(exc).__name__}"
        ) from None
    raise AssertionError("load_latest on an empty folder should raise FileNotFoundError")


CHECKS = [
    (check_names_and_retention, 1),
    (check_latest_by_epoch_not_file_time, 1),
    (check_failed_save_loses_nothing, 1),
    (check_refuses_code_in_checkpoints, 1),
    (check_empty_directory_raises_file_not_found, 1),
]
