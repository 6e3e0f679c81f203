# %% [markdown]
# # Exercise 1: a complete checkpoint management system
#
# The chapter's first exercise, sharpened by what chapters 6.3.8 and 6.3.9 showed can go wrong.
#
# **Your task.** Complete `SimpleCheckpointManager`:
#
# - `save(state, epoch)` writes `state` to `checkpoint_epoch_{epoch:04d}.pth` in the manager's
#   directory, **atomically** (an interrupted or failed save must leave the previous checkpoints
#   intact and no temporary file behind), then deletes the oldest checkpoints beyond `max_to_keep`.
#   It returns the path written.
# - `epochs()` returns the sorted list of epochs present, read from the **file names** (never from
#   file times: copying, restoring or `chmod` changes those).
# - `load_latest()` loads the checkpoint with the highest epoch onto the CPU, **safely** (a file that
#   would run code when unpickled must be refused), and raises `FileNotFoundError` when there is none.
#
# `course_lib.safe_io` has `safe_save` (atomic) and `safe_load` (weights only): use them.
# Run all cells; the last one checks your work. The grader checks more cases of the same rules.

# %%
import re
from pathlib import Path

import torch

from course_lib.safe_io import safe_load, safe_save


# %%
class SimpleCheckpointManager:
    def __init__(self, directory, max_to_keep=3):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_to_keep = max_to_keep

    def path_for(self, epoch):
        return self.directory / f"checkpoint_epoch_{epoch:04d}.pth"

    def epochs(self):
        # BEGIN SOLUTION
        pattern = re.compile(r"checkpoint_epoch_(\d+)\.pth")
        found = (pattern.fullmatch(p.name) for p in self.directory.iterdir())
        return sorted(int(m.group(1)) for m in found if m)
        # END SOLUTION

    def save(self, state, epoch):
        # BEGIN SOLUTION
        path = safe_save(state, self.path_for(epoch))
        for old in self.epochs()[: -self.max_to_keep]:
            self.path_for(old).unlink()
        return path
        # END SOLUTION

    def load_latest(self):
        # BEGIN SOLUTION
        epochs = self.epochs()
        if not epochs:
            raise FileNotFoundError(f"no checkpoints in {self.directory}")
        return safe_load(self.path_for(epochs[-1]), map_location="cpu")
        # END SOLUTION


# %% [markdown]
# ## Try it

# %%
manager = SimpleCheckpointManager("scratch/ex1", max_to_keep=3)
for stale in manager.directory.glob("*"):
    stale.unlink()
model = torch.nn.Linear(4, 2)
for epoch in range(1, 7):
    manager.save({"epoch": epoch, "model_state_dict": model.state_dict()}, epoch)
print("epochs kept:", manager.epochs())
print("latest:", manager.load_latest()["epoch"])

# %% [markdown]
# ## Self-check

# %%
assert manager.epochs() == [4, 5, 6]
assert manager.load_latest()["epoch"] == 6
assert not list(manager.directory.glob("*.tmp")), "temporary files left behind"
print("self-check passed")
