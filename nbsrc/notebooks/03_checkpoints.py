# %% [markdown]
# # 6.3.3 Checkpoints
#
# A **checkpoint** is the whole training state, so that a run killed by a time limit, a crash
# or a preempted machine resumes where it stopped, ending with *exactly* the weights of a run
# that never stopped. You will write one yourself and prove it bit for bit. Deeper:
# [`03b_resume_in_depth`](03b_resume_in_depth.ipynb) (the chapter's full code, a real process
# killed, `train_with_checkpoint` fixed). The chapter's `save_checkpoint`, without its `print`:

# %%
import random

import numpy as np
import torch

from course_lib import checkpoint, demo_job, notebook

device, workdir = notebook.start("6.3.3")
torch.set_num_threads(1)  # tiny models: one thread is fastest and gives the same bits everywhere


def save_checkpoint(model, optimizer, scheduler, epoch, loss, path):
    torch.save({"epoch": epoch, "model_state_dict": model.state_dict(),
                "optimizer_state_dict": optimizer.state_dict(),
                "scheduler_state_dict": scheduler.state_dict() if scheduler else None,
                "loss": loss, "rng_state": torch.get_rng_state(),
                "cuda_rng_state": torch.cuda.get_rng_state() if torch.cuda.is_available() else None},
               path)  # fmt: skip


# %% [markdown]
# The loss comes from NumPy (`np.mean`): an `np.float64`. The chapter's `load_checkpoint`
# starts with `torch.load(path, map_location=device)`, which since PyTorch 2.6
# (`weights_only=True` by default) refuses such objects. **Fails on purpose:**

# %% tags=["raises-exception"]
job = demo_job.make_demo_job()
model, optimizer, scheduler = job["model"], job["optimizer"], job["scheduler"]
save_checkpoint(model, optimizer, scheduler, 4, np.mean([0.31, 0.29]), workdir / "chapter.pth")
torch.load(workdir / "chapter.pth", map_location=device)

# %% [markdown]
# Three more gaps: Python's and NumPy's RNGs are not saved, nor is the best metric, and on a
# GPU `map_location="cuda"` moves the saved RNG state, a `ByteTensor`, where
# `torch.set_rng_state` refuses it.
#
# ## Your checkpoint, written out
#
# Everything the next step depends on, as plain values that load with `weights_only=True`; RNG
# states as lists of numbers, which `map_location` leaves alone:


# %%
def save(path, model, optimizer, scheduler, epoch, best):
    version, internal, gauss_next = random.getstate()
    name, key, *rest = np.random.get_state()
    cuda = [s.tolist() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else []
    rng = {"python": [version, list(internal), gauss_next], "numpy": [name, key.tolist(), *rest],
           "torch": torch.get_rng_state().tolist(), "cuda": cuda}  # fmt: skip
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "start_epoch": epoch + 1,
                "best": float(best), "rng": rng}, path)  # fmt: skip


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
# A loop using them on the demo job (dropout, a shuffling `DataLoader`, Adam, a scheduler;
# seeded as a restarted script is). Twelve epochs straight; then twelve stopped after the 5th
# (as if killed) and resumed by fresh objects:


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

# %% [markdown]
# That is the whole skill; exercise `ex7_exact_resume` grades it with a real kill.
#
# ## The course's version
#
# `course_lib.checkpoint` keeps the chapter's names and adds: NumPy numbers stored as floats
# (the failing call works), every RNG stored as here, an optional `GradScaler`, the atomic
# write of 6.3.9, a `weights_only=True` load, and errors that name the file and the fix:

# %%
checkpoint.save_checkpoint(model, optimizer, scheduler, 4, np.mean([0.31, 0.29]), workdir / "c.pth")
epoch, loss = checkpoint.load_checkpoint(workdir / "c.pth", model, optimizer, scheduler, device)
print(f"epoch {epoch}, loss {loss:.4f} ({type(loss).__name__})")

# %% [markdown]
# ## Exercise
#
# A `DataLoader` with its own `generator=` shuffles with it, not with the global RNG: save,
# load (`map_location=device`) and restore its state, and check the epoch's order.
#
# <details><summary>Solution (run it: the last line checks it)</summary>
#
# ```python
# from torch.utils.data import DataLoader
#
# generator = torch.Generator().manual_seed(0)
# loader = DataLoader(range(8), batch_size=4, shuffle=True, generator=generator)
# torch.save({"loader_rng": generator.get_state().tolist()}, workdir / "loader_rng.pth")
# expected = [batch.tolist() for batch in loader]  # the epoch an uninterrupted run sees
# saved = torch.load(workdir / "loader_rng.pth", map_location=device, weights_only=True)
# generator.set_state(torch.tensor(saved["loader_rng"], dtype=torch.uint8))  # a CPU ByteTensor
# assert [batch.tolist() for batch in loader] == expected, "the resumed epoch saw another order"
# ```
#
# </details>
#
# ## Conclusion
#
# A checkpoint is the *whole* training state, as plain values; restored, a run resumes bit for
# bit. Next: 6.3.4, a `state_dict` that does not quite match.
#
# Further reading: the PyTorch recipe [Saving and loading a general checkpoint](https://pytorch.org/tutorials/recipes/recipes/saving_and_loading_a_general_checkpoint.html)
# and the notes on [Reproducibility](https://pytorch.org/docs/stable/notes/randomness.html).
