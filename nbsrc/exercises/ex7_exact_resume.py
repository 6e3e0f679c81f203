# %% [markdown]
# # Exercise 7: a training run that resumes exactly
#
# Chapter 6.3.3 (notebook 03): a checkpoint holds the whole training state, and a run resumed
# from it ends with exactly the weights of a run that never stopped. Here you write that
# checkpoint for a training loop you are given. Every part of the state matters in it: the
# `DataLoader` shuffles and dropout draws masks (torch's RNG), each batch is augmented with
# Python's `random` and NumPy's `np.random`, SGD keeps momentum buffers, and `StepLR` halves the
# learning rate every 2 epochs.
#
# **Your task.** Write
#
# - `save(path, model, optimizer, scheduler, epoch)`: after epoch `epoch` (counted from 0), write
#   to `path` everything the next epoch depends on;
# - `resume(path, model, optimizer, scheduler)`: put all of it back into the freshly built
#   objects and the process's RNGs, and return the epoch to start from.
#
# The file must load with `torch.load(path, weights_only=True)`: store plain values (numbers,
# lists, dicts, tensors). Run all cells; the last one checks your work in this process. The
# grader runs the loop uninterrupted, then kills it with `SIGKILL` at steps it draws (once, and
# twice), resumes it each time in a fresh process, and compares the final weights bit for bit.

# %%
import random
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

EPOCHS = 6


def make_job(seed=0):
    """Seed every RNG, build the model, data and optimizer: the same in every process."""
    random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)
    data = TensorDataset(torch.randn(256, 8), torch.randn(256, 1))
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    return model, DataLoader(data, batch_size=32, shuffle=True), optimizer, scheduler


def train(path, job, stop_at_step=None):
    """Train to EPOCHS, resuming from path if it exists; stop at step stop_at_step (a 'kill')."""
    model, loader, optimizer, scheduler = job
    start = resume(path, model, optimizer, scheduler) if path.exists() else 0
    step = start * len(loader)
    for epoch in range(start, EPOCHS):
        for x, y in loader:
            if step == stop_at_step:
                return model
            x = x.flip(1) if random.random() < 0.5 else x  # augmentation: Python's RNG,
            x = x + torch.from_numpy(np.random.normal(0, 0.05, x.shape)).float()  # NumPy's
            optimizer.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()
            step += 1
        scheduler.step()
        save(path, model, optimizer, scheduler, epoch)
    return model


# %% [markdown]
# ## Your code


# %%
def save(path, model, optimizer, scheduler, epoch):
    # BEGIN SOLUTION
    version, internal, gauss_next = random.getstate()
    name, key, *rest = np.random.get_state()
    rng = {"python": [version, list(internal), gauss_next], "numpy": [name, key.tolist(), *rest],
           "torch": torch.get_rng_state().tolist()}  # fmt: skip
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "start_epoch": epoch + 1, "rng": rng}  # fmt: skip
    torch.save(state, path)
    # END SOLUTION


def resume(path, model, optimizer, scheduler):
    # BEGIN SOLUTION
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    version, internal, gauss_next = state["rng"]["python"]
    random.setstate((version, tuple(internal), gauss_next))
    name, key, *rest = state["rng"]["numpy"]
    np.random.set_state((name, np.array(key, dtype=np.uint32), *rest))
    torch.set_rng_state(torch.tensor(state["rng"]["torch"], dtype=torch.uint8))
    return state["start_epoch"]
    # END SOLUTION


# %% [markdown]
# ## Self-check
#
# The run uninterrupted, then the same run stopped at step 20 (in epoch 2, after epoch 1's
# checkpoint) and resumed by fresh objects, from epoch 2. `make_job` re-seeds every RNG, as a
# restarted script does: only your checkpoint can bring back their states at the end of epoch 1.

# %%
folder = Path(tempfile.mkdtemp(prefix="ex7-"))
straight = train(folder / "straight.pt", make_job())
train(folder / "run.pt", make_job(), stop_at_step=20)
model, _, optimizer, scheduler = make_job()
assert resume(folder / "run.pt", model, optimizer, scheduler) == 2, "resume must return 2 here"
resumed = train(folder / "run.pt", make_job())

torch.load(folder / "run.pt", weights_only=True)  # plain values only, or this fails
pairs = zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True)
assert all(torch.equal(a, b) for a, b in pairs), "the resumed run ended with other weights"
print("self-check passed")
