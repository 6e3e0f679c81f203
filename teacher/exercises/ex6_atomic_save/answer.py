"""Asks a notebook of exercise 6 the judge's questions (runs inside the sandbox, untrusted).

The save is killed with SIGKILL part-way through, at points drawn by the judge as fractions of the
time one save takes here; after each kill a snapshot of the file is kept for the judge.
"""

import signal
from os import _exit, fork, waitpid
from os import kill as _kill
from os.path import exists
from shutil import copyfile
from time import perf_counter, sleep

import torch

# Bound when this module is imported, before the notebook's cells run: a cell that replaces
# os.kill or time.sleep does not change what the kills below do.
SIGKILL = signal.SIGKILL


def _state(seed, step, numel):
    generator = torch.Generator().manual_seed(seed * 1000 + step)
    return {"step": step, "weights": torch.randn(numel, generator=generator)}


def answer(questions, ask):
    for question in questions:
        qid, seed, numel = question["id"], question["seed"], question["numel"]
        folder = ask.folder(qid)
        path = folder / "model.pt"
        first = _state(seed, 0, numel)
        started = perf_counter()
        ok, _ = ask.call(f"{qid}.first", "atomic_save", first, path)
        one_save = perf_counter() - started  # the save alone: kills land inside a save
        if not ok:
            continue
        save = ask.function("atomic_save")
        if question["kind"] == "unpicklable":
            ask.run(f"{qid}.bad", save, {"step": 1, "bad": lambda: None}, path)
        for index, fraction in enumerate(question.get("kill_at", [])):
            state = _state(seed, index + 1, numel)  # built before the fork: the child only saves
            child = fork()
            if child == 0:
                try:
                    save(state, path)
                finally:
                    _exit(0)
            sleep(fraction * one_save)
            _kill(child, SIGKILL)
            waitpid(child, 0)
            if exists(path):
                copyfile(path, folder / f"after_kill_{index}.pt")
