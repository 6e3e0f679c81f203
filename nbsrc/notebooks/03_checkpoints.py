# %% [markdown]
# # 6.3.3 Checkpoints
#
# A **checkpoint** is a snapshot of the whole training state, so that a run killed by a time
# limit, a crash or a preempted machine resumes where it stopped. Done right, the resumed run
# ends with *exactly* the weights of a run that never stopped. You will run the chapter's code,
# see it fail on current PyTorch, write a correct checkpoint yourself, and prove it bit for bit.
# Deeper: [`03b_resume_in_depth`](03b_resume_in_depth.ipynb) kills a real training process,
# shows a run resumed without its RNGs, and fixes the chapter's `train_with_checkpoint`.

# %%
import random

import numpy as np
import torch

from course_lib import checkpoint, demo_job, notebook

device, workdir = notebook.start("6.3.3")
torch.set_num_threads(1)  # tiny models: one thread is fastest and gives the same bits everywhere

# %% [markdown]
# ## The chapter's code
#
# The chapter's two functions, without their docstrings and `print`s (the full text is in 03b):


# %%
# fmt: off
def save_checkpoint(model, optimizer, scheduler, epoch, loss, path):
    torch.save({"epoch": epoch, "model_state_dict": model.state_dict(),
                "optimizer_state_dict": optimizer.state_dict(),
                "scheduler_state_dict": scheduler.state_dict() if scheduler else None,
                "loss": loss, "rng_state": torch.get_rng_state(),
                "cuda_rng_state": torch.cuda.get_rng_state() if torch.cuda.is_available() else None},
               path)


def load_checkpoint(path, model, optimizer, scheduler=None, device="cpu"):
    state = torch.load(path, map_location=device)
    model.load_state_dict(state["model_state_dict"])
    optimizer.load_state_dict(state["optimizer_state_dict"])
    if scheduler and state.get("scheduler_state_dict"):
        scheduler.load_state_dict(state["scheduler_state_dict"])
    torch.set_rng_state(state["rng_state"])
    return state["epoch"], state["loss"]
# fmt: on


# %% [markdown]
# The loss comes from NumPy, as it often does (`np.mean` of the batch losses). It prints like a
# float but is an `np.float64`, and since PyTorch 2.6 `torch.load` (now `weights_only=True` by
# default) refuses to rebuild objects it does not know. **This cell fails on purpose:**

# %% tags=["raises-exception"]
job = demo_job.make_demo_job()
model, optimizer, scheduler = job["model"], job["optimizer"], job["scheduler"]
save_checkpoint(model, optimizer, scheduler, 4, np.mean([0.31, 0.29]), workdir / "chapter.pth")
load_checkpoint(workdir / "chapter.pth", model, optimizer, scheduler, device)

# %% [markdown]
# Three more gaps hide behind that error. Python's and NumPy's RNGs are not saved (a data
# pipeline that uses them resumes differently). Neither is the best metric, so a resumed run
# forgets what "best" was. And on a GPU, `map_location="cuda"` moves the saved RNG state, a
# `ByteTensor`, to the GPU, where `torch.set_rng_state` refuses it: *RNG state must be a
# torch.ByteTensor*.
#
# ## Your checkpoint, written out
#
# Everything the next step depends on, as plain values (numbers, lists, dicts, tensors of
# weights), so that it loads with `weights_only=True`. The RNG states are lists of numbers,
# which `map_location` leaves alone; `resume` turns them back into CPU tensors:


# %%
def save(path, model, optimizer, scheduler, epoch, best):
    version, internal, gauss_next = random.getstate()
    name, key, *rest = np.random.get_state()
    cuda = [s.tolist() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else []
    rng = {"python": [version, list(internal), gauss_next], "numpy": [name, key.tolist(), *rest],
           "torch": torch.get_rng_state().tolist(), "cuda": cuda}  # fmt: skip
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "start_epoch": epoch + 1,
             "best": float(best), "rng": rng}  # fmt: skip
    torch.save(state, path)


def resume(path, model, optimizer, scheduler):
    state = torch.load(path, map_location=device, weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    model.train()  # a fresh model is in train mode already; one that evaluated is not
    rng = state["rng"]
    version, internal, gauss_next = rng["python"]
    random.setstate((version, tuple(internal), gauss_next))
    name, key, *rest = rng["numpy"]
    np.random.set_state((name, np.array(key, dtype=np.uint32), *rest))
    torch.set_rng_state(torch.tensor(rng["torch"], dtype=torch.uint8))
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in rng["cuda"]])
    return state["start_epoch"], state["best"]


# %% [markdown]
# A training loop that uses them, on the demo job (dropout, a shuffling `DataLoader`, Adam, a
# step scheduler; `demo_job.train_one_epoch` trains and validates one epoch). `make_demo_job`
# seeds every RNG and builds the same model and data each time, as a restarted script does.
# Twelve epochs straight; then twelve epochs stopped after the 5th (`stop_after`, like a kill
# after that epoch's checkpoint) and resumed from the file by fresh objects:


# %%
def train(path, epochs, stop_after=None):
    job = demo_job.make_demo_job()
    model, optimizer, scheduler = job["model"], job["optimizer"], job["scheduler"]
    start_epoch, best = 0, float("inf")
    if path.exists():
        start_epoch, best = resume(path, model, optimizer, scheduler)
        print(f"resumed from {path.name} at epoch {start_epoch}, best so far {best:.4f}")
    for epoch in range(start_epoch, stop_after or epochs):
        best = min(best, demo_job.train_one_epoch(job))
        save(path, model, optimizer, scheduler, epoch, best)
    return model


straight = train(workdir / "straight.pth", 12)
train(workdir / "run.pth", 12, stop_after=5)
resumed = train(workdir / "run.pth", 12)
pairs = zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True)
print("every weight bitwise equal:", all(torch.equal(a, b) for a, b in pairs))
saved = torch.load(workdir / "run.pth", weights_only=True)
print("the file holds", list(saved), "with the RNGs of", list(saved["rng"]))

# %% [markdown]
# That is the whole skill: exercise `ex7_exact_resume` has you write it again for another
# training loop, and its grader kills your run with `SIGKILL` and resumes it in a fresh process.
#
# ## The course's version
#
# `course_lib.checkpoint` keeps the chapter's names and calls, and adds what a real project
# needs: NumPy numbers become plain floats (the chapter's failing call above works), every RNG is
# stored as here (and every CUDA device's), an optional `GradScaler`, the atomic write of 6.3.9,
# a `weights_only=True` load, and errors that name the file and the fix (its
# `train_with_checkpoint`, the chapter's loop fixed, is in 03b). The call that failed above:

# %%
ours = workdir / "ours.pth"
checkpoint.save_checkpoint(model, optimizer, scheduler, 4, np.mean([0.31, 0.29]), ours)
epoch, loss = checkpoint.load_checkpoint(ours, model, optimizer, scheduler, device)
print(f"epoch {epoch}, loss {loss:.4f} ({type(loss).__name__})")

# %% [markdown]
# ## Exercise
#
# A `DataLoader` given its own `generator=torch.Generator()` no longer draws its order from the
# global torch RNG that `save` stores, so a resumed epoch would see another order. Save
# `generator.get_state()` in a file, load it back with `map_location=device`, restore it into a
# new generator, and check that the resumed epoch sees the uninterrupted epoch's order.
#
# <details><summary>Solution (run it: the last line checks it)</summary>
#
# ```python
# from torch.utils.data import DataLoader
#
# generator = torch.Generator().manual_seed(0)
# loader = DataLoader(range(8), batch_size=4, shuffle=True, generator=generator)
# first_epoch = [batch.tolist() for batch in loader]
# torch.save({"loader_rng": generator.get_state().tolist()}, workdir / "loader_rng.pth")
# second_epoch = [batch.tolist() for batch in loader]  # the uninterrupted run goes on
#
# saved = torch.load(workdir / "loader_rng.pth", map_location=device, weights_only=True)
# restored = torch.Generator()  # a new process: a new generator, its state from the file
# restored.set_state(torch.tensor(saved["loader_rng"], dtype=torch.uint8))  # a CPU ByteTensor
# resumed = DataLoader(range(8), batch_size=4, shuffle=True, generator=restored)
# assert [batch.tolist() for batch in resumed] == second_epoch, "the resumed epoch saw another order"
# print("the resumed epoch sees the same order:", second_epoch)
# ```
#
# </details>
#
# ## Conclusion
#
# - A checkpoint is the *whole* training state: weights, optimizer, scheduler, the epoch to start
#   from, the best metric, and the RNG states that decide the data order and dropout.
# - Store plain values: anything else fails under `weights_only=True`, and RNG states kept as
#   tensors are moved by `map_location`.
# - Restoring everything makes a resumed run equal, bit for bit, to one never interrupted.
# - Deeper: [`03b_resume_in_depth`](03b_resume_in_depth.ipynb). Next: 6.3.4, loading a
#   `state_dict` that does not quite match the model.
#
# Further reading: the PyTorch recipe [Saving and loading a general checkpoint](https://pytorch.org/tutorials/recipes/recipes/saving_and_loading_a_general_checkpoint.html)
# and the notes on [Reproducibility](https://pytorch.org/docs/stable/notes/randomness.html).
