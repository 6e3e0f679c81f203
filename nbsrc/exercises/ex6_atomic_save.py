# %% [markdown]
# # Exercise 6: an atomic, durable `torch.save`
#
# Chapter 6.3.9 showed what a crash, a full disk or a kill in the middle of `torch.save(obj, path)`
# leaves behind: a truncated file, and the previous checkpoint gone with it. The cure is to never
# write onto `path` itself.
#
# **Your task.** Write `atomic_save(obj, path)` (it returns `None`) so that `path` always holds
# either its old content or the complete new checkpoint, even if the process is killed at any
# moment:
#
# 1. create a temporary file **in the same folder** as `path` (a rename is atomic only within one
#    file system), for example with
#    `tempfile.mkstemp(dir=folder, prefix="." + name + ".", suffix=".tmp")`;
# 2. `torch.save` into it, then flush it and `os.fsync` it (the bytes must be on disk before the
#    rename makes them the checkpoint);
# 3. `os.replace` it onto `path` (atomic on POSIX and Windows);
# 4. fsync the folder, so that the rename itself survives a power cut: `os.open(folder,
#    os.O_RDONLY)` and `os.fsync`, skipped silently where the system cannot open folders (Windows);
# 5. if anything fails (for example an object that cannot be pickled, such as a lambda), remove the
#    temporary file and re-raise the error: the old file at `path` stays untouched and nothing else
#    is left in the folder.
#
# Write it with `os`, `tempfile` and `torch` only. Run all cells; the last one checks your work. The
# grader also **kills** your save with `SIGKILL` part-way through, several times, and checks that
# the file still loads as the old or the new checkpoint. `course_lib.safe_io.safe_save` is the
# course's version (it also keeps the permissions a plain save would give): compare afterwards.

# %%
import os
import tempfile
from pathlib import Path

import torch


# %%
def atomic_save(obj, path) -> None:
    """torch.save(obj, path) so that path holds either its old or the complete new content."""
    # BEGIN SOLUTION
    path = Path(path)
    folder = path.parent
    fd, temp_name = tempfile.mkstemp(dir=folder, prefix="." + path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_name, path)
    except BaseException:  # KeyboardInterrupt too: never leave the temporary file behind
        Path(temp_name).unlink(missing_ok=True)
        raise
    try:
        folder_fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows cannot open a folder; the rename is all it offers
        return
    try:
        os.fsync(folder_fd)
    finally:
        os.close(folder_fd)
    # END SOLUTION


# %% [markdown]
# ## Try it: two saves, then one that fails

# %%
folder = Path("scratch") / "ex6"
folder.mkdir(parents=True, exist_ok=True)
for stale in folder.iterdir():
    stale.unlink()
path = folder / "model.pt"

atomic_save({"step": 1, "weights": torch.zeros(3)}, path)
atomic_save({"step": 2, "weights": torch.ones(3)}, path)
print(torch.load(path))
print(sorted(p.name for p in folder.iterdir()))

# %% [markdown]
# A lambda cannot be pickled, so this save fails half-way. The old checkpoint survives it:

# %%
try:
    atomic_save({"step": 3, "weights": torch.ones(3), "callback": lambda: None}, path)
except Exception as error:
    print("the save failed:", type(error).__name__)
print("the file still holds step", torch.load(path)["step"])
print(sorted(p.name for p in folder.iterdir()))

# %% [markdown]
# For comparison, the same failure with a plain `torch.save` destroys the previous checkpoint:

# %%
plain = folder / "plain.pt"
torch.save({"step": 2, "weights": torch.ones(3)}, plain)
try:
    torch.save({"step": 3, "weights": torch.ones(3), "callback": lambda: None}, plain)
except Exception as error:
    print("the save failed:", type(error).__name__)
try:
    torch.load(plain)
except RuntimeError as error:
    print("and the old file is gone:", str(error).split(":")[0])
plain.unlink()

# %% [markdown]
# ## Self-check

# %%
assert torch.load(path)["step"] == 2 and torch.equal(torch.load(path)["weights"], torch.ones(3))
assert sorted(p.name for p in folder.iterdir()) == ["model.pt"], "a temporary file was left behind"
atomic_save({"step": 4}, path)
assert torch.load(path) == {"step": 4}
atomic_save({"step": 5}, str(path))  # a str path works too
assert torch.load(path) == {"step": 5}
assert sorted(p.name for p in folder.iterdir()) == ["model.pt"]
print("self-check passed")
