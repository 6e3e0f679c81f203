"""Asks a notebook of exercise 1 the judge's questions (runs inside the sandbox, untrusted).

``witness`` runs in the grader's witness (``teacher/grading/witness.py``), a process forked before
the notebook's cells run: it moves file times and plants the malicious checkpoint itself, and
records what the folders hold. The other functions are the steps it asks the student's process
to take, one by one: they call the notebook's manager and save what its methods return.
"""

from os import chmod, utime
from pathlib import Path
from time import sleep, time

import torch


def _state(epoch, seed):
    generator = torch.Generator().manual_seed(seed + epoch)
    return {"epoch": epoch, "weights": torch.randn(3, generator=generator)}


class _Payload:
    """Unpickling this runs code: what a malicious checkpoint does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('payload ran')",))


def _age_oldest(folder):
    files = sorted(p for p in folder.iterdir() if p.suffix == ".pth") if folder.is_dir() else []
    if not files:
        return
    oldest = files[0]
    sleep(0.05)  # file times tick coarsely: make the change visible
    future = time() + 3600
    utime(oldest, (future, future))
    chmod(oldest, 0o644)  # changes the ctime, as the chapter's manager relied on


# --- in the witness: the questions, and what it does and sees itself -------------------------


def witness(questions, w):
    for question in questions:
        qid, seed = question["id"], question["seed"]
        folder = w.folder(qid) / "checkpoints"
        if w.ask("init", qid, str(folder), question["max_to_keep"]) is not True:
            continue
        for step, (operation, *args) in enumerate(question["steps"]):
            if operation == "age_oldest":
                _age_oldest(folder)
            elif operation == "plant_payload":
                epoch, marker = args
                payload = {"epoch": epoch, "x": _Payload(str(w.folder(qid) / marker))}
                folder.mkdir(parents=True, exist_ok=True)
                torch.save(payload, folder / f"checkpoint_epoch_{epoch:04d}.pth")
            else:
                w.ask(operation, qid, f"{qid}.{step}", seed, *args)
        w.listing(f"{qid}/checkpoints")
        w.listing(qid)


# --- in the student's process: the steps -------------------------------------------------------


def init(ask, qid, folder, max_to_keep):
    ok, manager = ask.call(
        f"{qid}.init", "SimpleCheckpointManager", Path(folder), max_to_keep=max_to_keep
    )
    if ok:
        ask.kept[qid] = manager
    return ok


def save(ask, qid, key, seed, epoch):
    ask.run(key, ask.kept[qid].save, _state(epoch, seed), epoch)


def save_unpicklable(ask, qid, key, seed, epoch):
    ask.run(key, ask.kept[qid].save, {"epoch": epoch, "bad": lambda: None}, epoch)


def epochs(ask, qid, key, seed):
    ok, found = ask.run(key, ask.kept[qid].epochs)
    if ok:
        ask.save_json(key, [repr(e) for e in found])


def load_latest(ask, qid, key, seed):
    ok, loaded = ask.run(key, ask.kept[qid].load_latest)
    if ok:
        epoch = loaded.get("epoch") if isinstance(loaded, dict) else None
        ask.save_json(key, {"epoch": repr(epoch)})
        weights = loaded.get("weights") if isinstance(loaded, dict) else None
        if isinstance(weights, torch.Tensor):
            ask.save_tensors(key, {"weights": weights})
