# %% [markdown]
# # Exercise 6: an atomic, durable `torch.save`
#
# Chapter 6.3.9 showed what a crash, a full disk or a kill in the middle of `torch.save(obj, path)`
# leaves behind: a truncated file, and the previous checkpoint gone with it. The cure is to never
# write onto `path` itself.
#
# **Your task.** Write `atomic_save(obj, path)` (it returns `None`) so that `path` always holds
# either its old content or the complete new checkpoint, even if the process is killed:
#
# 1. create a temporary file **in the same folder** as `path` (a rename is atomic only within one
#    file system): `tempfile.mkstemp(dir=folder, prefix="." + name + ".", suffix=".tmp")`;
# 2. `torch.save` into it, flush it and `os.fsync` it (the bytes on disk before the rename);
# 3. `os.replace` it onto `path` (atomic on POSIX and Windows);
# 4. fsync the folder, so that the rename survives a power cut (`os.open(folder, os.O_RDONLY)`,
#    skipped where the system cannot open folders, as on Windows);
# 5. if anything fails (an object that cannot be pickled, such as a lambda), remove the temporary
#    file and re-raise: the old file stays untouched and nothing else is left in the folder.
#
# Use `os`, `tempfile` and `torch` only; the last cell checks your work. The grader also **kills**
# your save with `SIGKILL` part-way through, several times, and checks that the file still loads
# as the old or the new checkpoint. The course's version: `course_lib.safe_io.safe_save`.

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
# Try it: two saves, then one that fails half-way (a lambda cannot be pickled). A plain
# `torch.save` would have destroyed the previous checkpoint (6.3.9); yours keeps it:

# %%
folder = Path(tempfile.mkdtemp(prefix="ex6-"))
path = folder / "model.pt"
atomic_save({"step": 1, "weights": torch.zeros(3)}, path)
atomic_save({"step": 2, "weights": torch.ones(3)}, path)
try:
    atomic_save({"step": 3, "weights": torch.ones(3), "callback": lambda: None}, path)
except Exception as error:
    print("the save failed:", type(error).__name__)
print("the file still holds step", torch.load(path)["step"], "; folder:", os.listdir(folder))

# %%
assert torch.load(path)["step"] == 2 and torch.equal(torch.load(path)["weights"], torch.ones(3))
assert os.listdir(folder) == ["model.pt"], "a temporary file was left behind"
atomic_save({"step": 4}, str(path))  # a str path works too
assert torch.load(path) == {"step": 4} and os.listdir(folder) == ["model.pt"]
print("self-check passed")
