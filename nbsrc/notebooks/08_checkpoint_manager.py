# %% [markdown]
# # 6.3.8 A checkpoint manager
#
# A long run saves a checkpoint every epoch. Which one is the latest, which is the best, which can
# be deleted? A **checkpoint manager** answers, so the training loop only calls `save`.
# Prerequisite: `03_checkpoints`. Deeper: [08b_retention_async](08b_retention_async.ipynb) (the
# chapter's class as written, and live: one `chmod` makes its `load_latest` return an old epoch
# and its cleanup delete the wrong file, because it orders files by time; retention policies;
# damaged files; saving in the background; a widget to compare the kept models).

# %%
from course_lib import notebook

device, workdir = notebook.start("6.3.8")

import torch

from course_lib.manager import CheckpointManager

model = torch.nn.Linear(4, 1).to(device)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

# %% [markdown]
# ## The raw idea
#
# Put the epoch in the file name, keep the newest few *by name*, and find the latest by name, never
# by file time (a backup, a copy or a `chmod` changes that):

# %%
folder = workdir / "raw"
folder.mkdir()
for epoch in range(5):
    path = folder / f"checkpoint_epoch_{epoch:04d}.pth"
    torch.save({"epoch": epoch, "model": model.state_dict()}, path)
    for old in sorted(folder.glob("checkpoint_epoch_*.pth"))[:-3]:
        old.unlink()  # keep the newest 3
latest = sorted(folder.glob("checkpoint_epoch_*.pth"))[-1]
print(latest.name, "holds epoch", torch.load(latest, weights_only=True)["epoch"])

# %% [markdown]
# ## The helper
#
# `course_lib.manager.CheckpointManager` takes the chapter's calls (`save` with `is_best`,
# `load_latest`, `load_best`, `list_checkpoints`) and adds what a long run needs: a JSON manifest
# ordered by epoch, with a checksum per file; atomic writes (notebook 09); `best_model.pth` as a
# hard link, not a second copy; and retention as a union of policies (the latest N, the best K):

# %%
manager = CheckpointManager(workdir / "run", max_to_keep=3, keep_best=1)
for epoch, val_loss in enumerate([0.9, 0.5, 0.7, 0.6, 0.8]):
    manager.save(model, optimizer, None, epoch, {"val_loss": val_loss}, is_best=val_loss == 0.5)
print([(row["epoch"], row["kept_by"]) for row in manager.list_checkpoints()])
print("latest:", manager.load_latest(model)["epoch"], "| best:", manager.load_best(model)["epoch"])

# %% [markdown]
# ## Exercise
#
# A resumed run opens a new manager on the same folder: check that it finds the same latest and
# best epochs. (Graded, a manager of your own: `exercises/ex1_checkpoint_manager.ipynb`.)
#
# <details><summary>Solution (run it: the assert checks it)</summary>
#
# ```python
# again = CheckpointManager(workdir / "run", max_to_keep=3, keep_best=1)
# assert again.load_latest(model)["epoch"] == 4 and again.load_best(model)["epoch"] == 1
# ```
#
# </details>
#
# **Conclusion.** Order by epoch, never by file time; delete only after the new file is safe;
# keep the best without a second copy. Next: `09_safe_saving`, the atomic save underneath.
