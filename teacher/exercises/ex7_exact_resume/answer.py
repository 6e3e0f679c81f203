"""Asks a notebook of exercise 7 the judge's questions (runs inside the sandbox, untrusted).

The training loop is the exercise's, copied here (the notebook's copy may have been edited); only
the student's ``save`` and ``resume`` come from the notebook. ``witness`` runs in the grader's
witness (``teacher/grading/witness.py``), a process forked before the notebook's cells run: every
run of the loop happens in a fresh child of the student's process (``train``), which builds
everything afresh with ``make_job`` (re-seeding every RNG, as a restarted script does). A run to be
killed writes a mark into a folder the witness watches when it reaches the step the judge drew,
and waits there; the witness then SIGKILLs it (``kill_after=0``) and keeps the checkpoint file as
the kill left it. Nothing in the student's process can move or switch off that kill: a run that
does not write the mark is not "killed" (no points), one that goes on past it is killed anyway.
The next run, in a new process that never shared the killed one's memory, can only resume from
the file the student's ``save`` wrote; the witness keeps its final weights as the answer.
"""

import random
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

EPOCHS = 6


def make_job(seed):
    random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)
    data = TensorDataset(torch.randn(256, 8), torch.randn(256, 1))
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    return model, DataLoader(data, batch_size=32, shuffle=True), optimizer, scheduler


def _train(save, resume, path, job, mark=None, kill_at_step=None, must_resume=False):
    """The exercise's ``train``; at ``kill_at_step`` it writes ``mark`` and waits for the witness's
    SIGKILL where the notebook's returns."""
    model, loader, optimizer, scheduler = job
    if must_resume and not path.exists():
        raise FileNotFoundError("after the kill there was no checkpoint file: save wrote nothing")
    start = int(resume(path, model, optimizer, scheduler)) if path.exists() else 0
    step = start * len(loader)
    for epoch in range(start, EPOCHS):
        for x, y in loader:
            if step == kill_at_step:
                mark.write_text(str(step))
                time.sleep(3600)  # the witness kills this process now
            x = x.flip(1) if random.random() < 0.5 else x
            x = x + torch.from_numpy(np.random.normal(0, 0.05, x.shape)).float()
            optimizer.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()
            step += 1
        scheduler.step()
        save(path, model, optimizer, scheduler, epoch)
    return model, start


# --- in the witness -----------------------------------------------------------------------------


def witness(questions, w):
    for question in questions:
        qid, seed, kills = question["id"], question["seed"], question["kill_at"]
        path = w.folder(qid) / "checkpoint.pt"
        path.unlink(missing_ok=True)  # a file written in advance is not a save
        if not w.ask("ready", qid):
            continue  # no save or no resume: the NameError is recorded
        for index, step in enumerate(kills):
            marks = w.folder(f"{qid}.run{index}")
            for old in marks.iterdir():
                old.unlink()
            with w.in_child(
                "train", f"{qid}.run{index}", seed, str(path), str(marks / "at_step"), step,
                kill_after=0, watch=marks,
            ) as outcome:  # fmt: skip
                if outcome == "killed" and not (marks / "at_step").is_file():
                    outcome = "ended before its step"  # it raised, or never reached the step
                w.record(f"{qid}.kill_{index}", outcome)
                w.keep(path, f"kept/{qid}/after_kill_{index}.pt")
            if outcome != "killed":
                break  # the run never reached its drawn step: no resume to ask for
        else:
            answers = w.folder(qid).parent
            for name in (f"{qid}.safetensors", f"{qid}.start.json"):
                (answers / name).unlink(missing_ok=True)
            with w.in_child("train", qid, seed, str(path), None, None, bool(kills)) as outcome:
                w.record(f"{qid}.last", outcome)
                w.keep(answers / f"{qid}.safetensors", f"kept/{qid}.safetensors")
                w.keep(answers / f"{qid}.start.json", f"kept/{qid}.start.json")


# --- in the student's process (a fresh child of it for each run) --------------------------------


def ready(ask, qid):
    """Whether the notebook defines ``save`` and ``resume`` (if not, record the NameError)."""
    for name in ("save", "resume"):
        if ask.function(name) is None:
            ask.call(qid, name)
            return False
    return True


def train(ask, qid, seed, path, mark, kill_at_step, after_a_kill=False):
    """One run of the loop; a run that is not to be killed keeps its final weights as the answer."""
    torch.set_num_threads(1)  # the same bits in every run
    save, resume = ask.function("save"), ask.function("resume")
    if save is None or resume is None:
        return
    mark = None if mark is None else Path(mark)

    def run():
        job = make_job(seed)
        model, start = _train(save, resume, Path(path), job, mark, kill_at_step, after_a_kill)
        if kill_at_step is None:
            ask.save_json(f"{qid}.start", start)  # the epoch the last run began with
            ask.save_tensors(qid, model.state_dict())

    ask.run(qid, run)
    if mark is not None:
        mark.with_name("ended").write_text("")  # not killed: the witness need not wait for it
