"""Asks a notebook of exercise 6 the judge's questions (runs inside the sandbox, untrusted).

``witness`` runs in the grader's witness (``teacher/grading/witness.py``), a process forked before
the notebook's cells run. Every save runs in a child of the student's process (``save``); the
witness lets some finish and kills the others with SIGKILL part-way through, at points drawn by
the judge as fractions of the time a plain ``torch.save`` of the same state takes here (measured by
the witness itself), counted from the moment the save starts writing into its folder. The student's
code cannot tell which saves will be killed. After each save the witness keeps a copy of the file
(and of the folder's listing) for the judge.
"""

from pathlib import Path
from time import perf_counter

import torch


def _state(seed, step, numel):
    generator = torch.Generator().manual_seed(seed * 1000 + step)
    return {"step": step, "weights": torch.randn(numel, generator=generator)}


def _plain_save_seconds(state, folder):
    """How long torch.save of ``state`` takes in ``folder`` (the fastest of three, so that a busy
    machine does not push the kill points past the end of a plain save): their scale."""
    probe = folder / "witness_timing.pt"
    times = []
    for _ in range(3):
        started = perf_counter()
        torch.save(state, probe)
        times.append(perf_counter() - started)
    probe.unlink()
    return min(times)


# --- in the witness -----------------------------------------------------------------------------


def witness(questions, w):
    for question in questions:
        qid, seed, numel = question["id"], question["seed"], question["numel"]
        folder = w.folder(qid)
        path = folder / "model.pt"
        path.unlink(missing_ok=True)  # a file written in advance is not a save
        with w.in_child("save", f"{qid}.first", seed, 0, numel, str(path), watch=folder) as done:
            w.record(f"{qid}.first", done)
            w.keep(path, f"kept/{qid}/first.pt")
        if not path.is_file():
            continue  # no first save (a stub): nothing to kill, nothing to keep
        if question["kind"] == "unpicklable":
            with w.in_child("save", f"{qid}.bad", seed, None, numel, str(path), watch=folder):
                w.keep(path, f"kept/{qid}/after_failure.pt")
                w.listing(qid)
        kills = question.get("kill_at", [])
        if not kills:
            continue
        one_save = _plain_save_seconds(_state(seed, 0, numel), folder)
        for index, fraction in enumerate(kills):
            step = index + 1
            with w.in_child(
                "save", f"{qid}.{step}", seed, step, numel, str(path),
                kill_after=fraction * one_save, watch=folder,
            ) as outcome:  # fmt: skip
                w.record(f"{qid}.kill_{index}", outcome)
                w.keep(path, f"kept/{qid}/after_kill_{index}.pt")
            if outcome != "killed":
                break  # a save that does not start, or a process that is gone: no more kills
        last = len(kills) + 1
        with w.in_child("save", f"{qid}.last", seed, last, numel, str(path), watch=folder):
            w.keep(path, f"kept/{qid}/last.pt")


# --- in the student's process (a child of it, for each save) -----------------------------------


def save(ask, key, seed, step, numel, path):
    """``atomic_save`` of state ``step`` (None: an object that cannot be pickled) to ``path``."""
    if step is None:
        state = {"step": 1, "bad": lambda: None}
    else:
        state = _state(seed, step, numel)
    ask.call(key, "atomic_save", state, Path(path))
