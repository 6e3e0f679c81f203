# %% [markdown]
# # 6.3.3b Resuming in depth
#
# *Deeper material: read [`03_checkpoints`](03_checkpoints.ipynb) first, and write its exact
# resume yourself; this notebook goes further.*
#
# What you will see here:
#
# - what a full checkpoint holds, part by part, and what each missing part costs;
# - which NumPy objects make a checkpoint fail under `weights_only=True`, and what
#   `course_lib.checkpoint` stores instead;
# - a real training process killed with `SIGKILL` and resumed bit for bit, and the same run
#   resumed without its random number generators;
# - the chapter's `train_with_checkpoint`: its periodic save, its resume bug, and the fix.

# %%
from course_lib import notebook

device, workdir = notebook.start("6.3.3b")

# %%
import contextlib
import io
import os
import shutil

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

from course_lib import checkpoint, demo_job, interrupt, plots
from course_lib.safe_io import safe_load

# The models here are tiny: one thread is fastest, and gives the same numbers on every machine.
torch.set_num_threads(1)

# %% [markdown]
# ## Step 1: what a full checkpoint holds
#
# To continue training as if nothing happened, we need everything the next step depends on:
#
# | part | why it matters | without it |
# |---|---|---|
# | model `state_dict` | the weights and buffers (BatchNorm statistics) | nothing to resume |
# | optimizer `state_dict` | Adam's moments, momentum buffers, step counts | the first steps after resuming are different (and often a loss spike) |
# | scheduler `state_dict` | where the learning-rate schedule is | the learning rate jumps back to its start |
# | epoch and step | where to continue; logs and schedules count on them | epochs repeated or skipped |
# | best metric so far | decides whether the next model is "the best" | a worse model overwrites the best one (Step 4) |
# | RNG states: Python, NumPy, torch CPU, every CUDA device | the data order (shuffling), dropout masks, augmentations | a different run: the weights diverge (Step 3) |
# | GradScaler (mixed precision) | the current loss scale | a few skipped or overflowing steps |
#
# Everything must load under `torch.load(weights_only=True)`, the default since PyTorch 2.6:
# tensors, numbers, strings, lists and dicts only.

# %% [markdown]
# ## Step 2: the chapter's code, as written
#
# The chapter's two functions (its `print` messages translated):


# %%
def save_checkpoint(model, optimizer, scheduler, epoch, loss, path):
    """Save a full checkpoint"""
    checkpoint = {
        "epoch": epoch,
        "model_state_dict": model.state_dict(),
        "optimizer_state_dict": optimizer.state_dict(),
        "scheduler_state_dict": scheduler.state_dict() if scheduler else None,
        "loss": loss,
        "rng_state": torch.get_rng_state(),
        "cuda_rng_state": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
    }
    torch.save(checkpoint, path)
    print(f"Checkpoint saved: {path}")


def load_checkpoint(path, model, optimizer, scheduler=None, device="cpu"):
    """Load a checkpoint"""
    checkpoint = torch.load(path, map_location=device)

    model.load_state_dict(checkpoint["model_state_dict"])
    optimizer.load_state_dict(checkpoint["optimizer_state_dict"])

    if scheduler and checkpoint.get("scheduler_state_dict"):
        scheduler.load_state_dict(checkpoint["scheduler_state_dict"])

    # restore the random state (for reproducibility)
    if checkpoint.get("rng_state") is not None:
        torch.set_rng_state(checkpoint["rng_state"])
    if checkpoint.get("cuda_rng_state") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(checkpoint["cuda_rng_state"])

    epoch = checkpoint["epoch"]
    loss = checkpoint["loss"]

    print(f"Resuming from epoch {epoch}, loss: {loss:.4f}")

    return epoch, loss


# %% [markdown]
# 03 showed `load_checkpoint` failing on a loss that is an `np.float64`. The file is fine; the
# loader refuses it.

# %%
model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 5)).to(device)
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=10)
val_loss = np.mean([0.31, 0.29])
save_checkpoint(model, optimizer, scheduler, 4, val_loss, workdir / "chapter_np.pth")

# %% [markdown]
# Storing NumPy's random state (the natural next step for "reproducibility") fails the same
# way. `torch.serialization` can list what a file would need, without loading it:

# %%
torch.save({"numpy_rng": np.random.get_state()}, workdir / "numpy_rng.pth")
print(sorted(torch.serialization.get_unsafe_globals_in_checkpoint(workdir / "numpy_rng.pth")))
print(sorted(torch.serialization.get_unsafe_globals_in_checkpoint(workdir / "chapter_np.pth")))

# %% [markdown]
# The way out is not `weights_only=False` (that runs whatever code the file names, see 6.3.2)
# but storing plain values. Two more gaps: the chapter restores torch's RNG but not Python's or
# NumPy's, and `torch.set_rng_state` fails if `map_location` moved the state to a GPU.
#
# ## The course's version
#
# `course_lib.checkpoint` keeps the chapter's names and calls, and fixes all of this: every value
# is converted to a plain one, all four RNG families are stored, the write is atomic (6.3.9), and
# the file is read with `weights_only=True`:

# %%
checkpoint.save_checkpoint(model, optimizer, scheduler, 4, val_loss, workdir / "ours.pth")
epoch, loss = checkpoint.load_checkpoint(workdir / "ours.pth", model, optimizer, scheduler, device)
print(f"epoch {epoch}, loss {loss:.4f} ({type(loss).__name__})")

# %% [markdown]
# What is inside (loaded with `weights_only=True`, like every load in this course):

# %%
saved = safe_load(workdir / "ours.pth", map_location="cpu")
for key, value in saved.items():
    if isinstance(value, dict):
        shown = f"dict with keys {list(value)[:5]}"
    elif isinstance(value, torch.Tensor):
        shown = f"tensor {tuple(value.shape)}"
    else:
        shown = repr(value)
    print(f"{key:22} {shown}")
print("RNG state saved for:", list(saved["rng"]))

# %% [markdown]
# ## Step 3: kill a training run, and resume it
#
# `python -m course_lib.demo_job DIR` is a small, real training job: an MLP with dropout, a
# shuffling `DataLoader`, Adam and a step scheduler. It writes `DIR/latest.pth` after every epoch.
# First, the reference: the same job for 12 epochs, uninterrupted.

# %% tags=["nbval-ignore-output"]
straight_model, straight = demo_job.demo_training(workdir / "straight", 12, progress=True)

# %% [markdown]
# Now we start the job in **another process**, wait until it reports its 5th epoch (it prints
# that line once the epoch's checkpoint is on disk), and kill it with `SIGKILL` (`kill -9`: no
# clean-up, no `finally`, like a power cut or the out-of-memory killer). The job pauses 0.4 s
# between epochs, so we hit the same point every time. `course_lib.interrupt` holds the harness:
# `subprocess.Popen` of `python -m course_lib.demo_job`, a loop that reads the job's log, then
# `proc.kill()`.

# %%
run_dir = workdir / "interrupted"
KILL_AFTER = 5  # epochs done
killed = interrupt.kill_demo_job_after(run_dir, KILL_AFTER, workdir / "interrupted.log")
print("killed:", killed.killed)
print(killed.log)
last = safe_load(run_dir / "latest.pth", map_location="cpu")
print("last checkpoint on disk: epoch", last["epoch"])

# %% [markdown]
# The process is gone. Keep a copy of its folder (for the experiment after this one), then resume
# here, in this notebook's process, from `latest.pth`:

# %% tags=["nbval-ignore-output"]
shutil.copytree(run_dir, workdir / "interrupted_copy")
resumed_model, resumed = demo_job.demo_training(run_dir, 12, resume=True, progress=True)

# %% [markdown]
# What if the checkpoint had the weights, the optimizer and the scheduler, but we did not restore
# the random number generators? The next epoch shuffles the data differently and drops other
# units:

# %% tags=["nbval-ignore-output"]
no_rng_model, no_rng = demo_job.demo_training(
    workdir / "interrupted_copy", 12, resume=True, restore_rng=False, progress=True
)


# %%
def max_abs_difference(a: nn.Module, b: nn.Module) -> float:
    pairs = zip(a.parameters(), b.parameters(), strict=True)
    return max((p - q).abs().max().item() for p, q in pairs)


def all_equal(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


print(
    "resumed, RNG restored:      max |difference| =",
    max_abs_difference(straight_model, resumed_model),
)
print("   every parameter torch.equal:", all_equal(straight_model, resumed_model))
print("   loss history identical:     ", resumed == straight)
print(
    f"resumed, RNG not restored:  max |difference| = {max_abs_difference(straight_model, no_rng_model):.4f}"
)
print("   every parameter torch.equal:", all_equal(straight_model, no_rng_model))
print("   loss history identical:     ", no_rng == straight)

# %%
plots.plot_resume_curves(straight, resumed, no_rng, KILL_AFTER)
plt.show()

# %% [markdown]
# The restored run lies exactly on the uninterrupted curve; without the RNG state the run is a
# different run: plausible, but not the one you would have had, and not reproducible.
#
# ## Step 4: the chapter's `train_with_checkpoint`, its periodic save, and its resume bug
#
# The chapter's loop keeps `best_model.pth` by validation loss. Here it is as written (it calls
# the chapter's `save_checkpoint`/`load_checkpoint` from Step 2). It is one function, so it is one
# cell, in the chapter's own layout:


# %%
# fmt: off
def train_with_checkpoint(model, train_loader, val_loader, criterion,
                          optimizer, scheduler, num_epochs,
                          checkpoint_dir='checkpoints', resume_from=None):
    """Training with checkpoint resume"""

    os.makedirs(checkpoint_dir, exist_ok=True)

    start_epoch = 0
    best_val_loss = float('inf')

    # try to resume
    if resume_from and os.path.exists(resume_from):
        start_epoch, _ = load_checkpoint(
            resume_from, model, optimizer, scheduler
        )
        start_epoch += 1  # start from the next epoch

    device = next(model.parameters()).device

    for epoch in range(start_epoch, num_epochs):
        # training
        model.train()
        train_loss = 0.0
        for inputs, targets in train_loader:
            inputs, targets = inputs.to(device), targets.to(device)

            optimizer.zero_grad()
            outputs = model(inputs)
            loss = criterion(outputs, targets)
            loss.backward()
            optimizer.step()

            train_loss += loss.item()

        train_loss /= len(train_loader)

        # validation
        model.eval()
        val_loss = 0.0
        with torch.no_grad():
            for inputs, targets in val_loader:
                inputs, targets = inputs.to(device), targets.to(device)
                outputs = model(inputs)
                loss = criterion(outputs, targets)
                val_loss += loss.item()
        val_loss /= len(val_loader)

        # learning-rate schedule
        if scheduler:
            scheduler.step()

        print(f"Epoch {epoch}: Train Loss = {train_loss:.4f}, Val Loss = {val_loss:.4f}")

        # save the best model
        if val_loss < best_val_loss:
            best_val_loss = val_loss
            save_checkpoint(
                model, optimizer, scheduler, epoch, val_loss,
                os.path.join(checkpoint_dir, 'best_model.pth')
            )

        # save a checkpoint periodically
        if (epoch + 1) % 10 == 0:
            save_checkpoint(
                model, optimizer, scheduler, epoch, val_loss,
                os.path.join(checkpoint_dir, f'checkpoint_epoch_{epoch}.pth')
            )
# fmt: on


# %% [markdown]
# Its periodic save, `checkpoint_epoch_{epoch}.pth` every 10 epochs, needs a run of 10 epochs at
# least. Here is one (its per-epoch log is kept in `log`; we show the files it wrote):

# %%
with contextlib.redirect_stdout(io.StringIO()) as log:
    train_with_checkpoint(*demo_job.make_demo_job().values(), 10, str(workdir / "ten_epochs"))
print(log.getvalue().splitlines()[-2:])
print("files:", sorted(os.listdir(workdir / "ten_epochs")))

# %% [markdown]
# Now the resume bug. We train the demo job for 3 epochs (the best is epoch 2), "interrupt" it,
# and resume for one more epoch from the only file it has, `best_model.pth`. Epoch 3 is slightly
# worse than epoch 2:


# %%
def best_in(folder):
    best = safe_load(f"{folder}/best_model.pth", map_location="cpu")
    return f"best_model.pth holds epoch {best['epoch']}, val loss {best['loss']:.4f}"


chapter_dir = str(workdir / "chapter_run")
train_with_checkpoint(*demo_job.make_demo_job().values(), 3, chapter_dir)
print(best_in(chapter_dir))
train_with_checkpoint(
    *demo_job.make_demo_job().values(),
    4,
    chapter_dir,
    resume_from=f"{chapter_dir}/best_model.pth",
)
print(best_in(chapter_dir), " <- overwritten by a worse model")

# %% [markdown]
# On resume the chapter sets `best_val_loss = float('inf')`, so the first resumed epoch is always
# "the best" and replaces a better model. The course's `train_with_checkpoint` (same arguments)
# stores the best metric in every checkpoint and restores it; it also writes `latest.pth` every
# epoch, restores all RNGs, and returns the loss history:

# %%
ours_dir = workdir / "ours_run"
job = demo_job.make_demo_job()
history = checkpoint.train_with_checkpoint(*job.values(), 3, ours_dir, progress=False)
print(best_in(ours_dir))
job = demo_job.make_demo_job()
history = checkpoint.train_with_checkpoint(
    *job.values(), 4, ours_dir, resume_from=ours_dir / "latest.pth", progress=False
)
print(best_in(ours_dir), " <- kept")
print("files:", sorted(p.name for p in ours_dir.iterdir()))

# %% [markdown]
# With `progress=True` (the default) it shows a progress bar (`verbose=False` keeps the
# per-epoch lines out of it); pointing `resume_from` at
# `latest.pth` works on the first launch too (a missing file starts a fresh run), so the same
# command starts and restarts a job:

# %% tags=["nbval-ignore-output"]
job = demo_job.make_demo_job()
history = checkpoint.train_with_checkpoint(
    *job.values(),
    12,
    workdir / "with_bar",
    resume_from=workdir / "with_bar" / "latest.pth",
    verbose=False,
)

# %% [markdown]
# ## Exercises
#
# The chapter's exercise 1 is "implement a complete checkpoint management system" (its full form
# is `exercises/ex1_checkpoint_manager.ipynb`, checked by `./course check`). Start small:
#
# 1. The demo job saves at the end of each epoch. What else would a checkpoint saved *in the
#    middle* of an epoch need, to resume exactly?
# 2. Read `course_lib/checkpoint.py` (`build_checkpoint`, `apply_checkpoint`) and
#    `course_lib/rng.py` (`capture_rng_state`): they are short. 6.3.8 builds a checkpoint manager
#    on them. (Reading only: no solution.)
#
# <details><summary>Solution 1</summary>
#
# The position inside the epoch: the number of batches already done, and the order of this
# epoch's samples (the sampler's permutation, or the RNG state from *before* the epoch began, so
# the same permutation can be drawn again and its first batches skipped). Plus the global step
# for the scheduler and logging. `torchdata`'s `StatefulDataLoader` stores exactly this in its
# own `state_dict()`.
#
# </details>
#
# ## Conclusion
#
# - Every part of the training state has a visible cost when it is missing; the RNG states decide
#   whether a resumed run is *the* run or merely a plausible one.
# - A killed process resumes bit for bit from its last checkpoint when all of it is restored.
# - The chapter's loop forgets its best metric on resume; the course's keeps it, and writes
#   `latest.pth` every epoch.

# ## Further reading
#
# - PyTorch tutorial: [Saving and loading a general checkpoint](https://pytorch.org/tutorials/recipes/recipes/saving_and_loading_a_general_checkpoint.html)
# - PyTorch docs: [`torch.save`](https://pytorch.org/docs/stable/generated/torch.save.html),
#   [`torch.load`](https://pytorch.org/docs/stable/generated/torch.load.html) and its
#   [`weights_only` allowlist](https://pytorch.org/docs/stable/notes/serialization.html#weights-only)
# - PyTorch docs: [Reproducibility](https://pytorch.org/docs/stable/notes/randomness.html) (RNG
#   states, `DataLoader` generators and workers)
# - PyTorch docs: [`torch.get_rng_state`](https://pytorch.org/docs/stable/generated/torch.get_rng_state.html),
#   [`torch.Generator`](https://pytorch.org/docs/stable/generated/torch.Generator.html),
#   [optimizer `state_dict`](https://pytorch.org/docs/stable/generated/torch.optim.Optimizer.state_dict.html)
