"""Asks a notebook of exercise 7 the judge's questions (runs inside the sandbox, untrusted).

The training loop is the exercise's, copied here (the notebook's copy may have been edited); only
the student's ``save`` and ``resume`` come from the notebook. Every run happens in a process of
its own, forked from this one before any training, that builds everything afresh with
``make_job`` (which re-seeds every RNG, as a restarted script does). A run to be killed sends
itself SIGKILL at the step the judge drew; the next run, in a new process that never shared the
killed one's memory, can only resume from the file the student's ``save`` wrote.
"""

import random
import signal
from os import _exit, fork, getpid, waitpid
from os import kill as _kill

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

# Bound when this module is imported, before the notebook's cells run: a cell that replaces
# os.kill or os.fork does not change what the runs below do.
SIGKILL = signal.SIGKILL
EPOCHS = 6


def make_job(seed):
    random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)
    data = TensorDataset(torch.randn(256, 8), torch.randn(256, 1))
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    return model, DataLoader(data, batch_size=32, shuffle=True), optimizer, scheduler


def _train(save, resume, path, job, kill_at_step=None, must_resume=False):
    """The exercise's ``train``, with a real SIGKILL where the notebook's returns."""
    model, loader, optimizer, scheduler = job
    if must_resume and not path.exists():
        raise FileNotFoundError("after the kill there was no checkpoint file: save wrote nothing")
    start = int(resume(path, model, optimizer, scheduler)) if path.exists() else 0
    step = start * len(loader)
    for epoch in range(start, EPOCHS):
        for x, y in loader:
            if step == kill_at_step:
                _kill(getpid(), SIGKILL)
            x = x.flip(1) if random.random() < 0.5 else x
            x = x + torch.from_numpy(np.random.normal(0, 0.05, x.shape)).float()
            optimizer.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()
            step += 1
        scheduler.step()
        save(path, model, optimizer, scheduler, epoch)
    return model, start


def _in_a_fresh_process(ask, qid, run):
    child = fork()
    if child == 0:
        try:
            torch.set_num_threads(1)  # the same bits in every run
            ask.run(qid, run)
        finally:
            _exit(0)
    waitpid(child, 0)


def answer(questions, ask):
    save, resume = ask.function("save"), ask.function("resume")
    for question in questions:
        qid, seed = question["id"], question["seed"]
        path = ask.folder(qid) / "checkpoint.pt"
        if save is None or resume is None:
            ask.call(qid, "save" if save is None else "resume")  # records the NameError
            continue
        for index, step in enumerate(question["kill_at"]):
            run = _Run(save, resume, path, seed, step)
            _in_a_fresh_process(ask, f"{qid}.run{index}", run)
        last = _Run(save, resume, path, seed, None, bool(question["kill_at"]), (ask, qid))
        _in_a_fresh_process(ask, qid, last)


class _Run:
    """One run of the loop in its process; the last one keeps its final weights as the answer."""

    def __init__(self, save, resume, path, seed, kill_at_step, after_a_kill=False, answer=None):
        self.args = (save, resume, path, make_job, seed, kill_at_step, after_a_kill)
        self.answer = answer

    def __call__(self):
        save, resume, path, build, seed, kill_at_step, after_a_kill = self.args
        model, start = _train(save, resume, path, build(seed), kill_at_step, after_a_kill)
        if self.answer is not None:
            ask, qid = self.answer
            ask.save_json(f"{qid}.start", start)  # the epoch the last run began with
            ask.save_tensors(qid, model.state_dict())
