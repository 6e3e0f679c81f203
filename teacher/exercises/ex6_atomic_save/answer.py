"""Asks a notebook of exercise 6 the judge's questions (runs inside the sandbox, untrusted).

The save is killed with SIGKILL part-way through, at points drawn by the judge as fractions of the
time one save takes here; after each kill a snapshot of the file is kept for the judge.
"""

import os
import shutil
import signal
import time

import torch


def _state(seed, step, numel):
    generator = torch.Generator().manual_seed(seed * 1000 + step)
    return {"step": step, "weights": torch.randn(numel, generator=generator)}


def answer(questions, ask):
    for question in questions:
        qid, seed, numel = question["id"], question["seed"], question["numel"]
        folder = ask.folder(qid)
        path = folder / "model.pt"
        first = _state(seed, 0, numel)
        started = time.perf_counter()
        ok, _ = ask.call(f"{qid}.first", "atomic_save", first, path)
        one_save = time.perf_counter() - started  # the save alone: kills land inside a save
        if not ok:
            continue
        save = ask.function("atomic_save")
        if question["kind"] == "unpicklable":
            ask.run(f"{qid}.bad", save, {"step": 1, "bad": lambda: None}, path)
        for index, fraction in enumerate(question.get("kill_at", [])):
            state = _state(seed, index + 1, numel)  # built before the fork: the child only saves
            child = os.fork()
            if child == 0:
                try:
                    save(state, path)
                finally:
                    os._exit(0)
            time.sleep(fraction * one_save)
            os.kill(child, signal.SIGKILL)
            os.waitpid(child, 0)
            if path.exists():
                shutil.copyfile(path, folder / f"after_kill_{index}.pt")
