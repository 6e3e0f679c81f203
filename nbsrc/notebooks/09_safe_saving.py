# %% [markdown]
# # 6.3.9 Safe saving
#
# `torch.save(obj, "model.pth")` first empties `model.pth`, then writes. If the process dies in
# between (a time limit, the out-of-memory killer, a full disk), the good checkpoint is gone.
# Prerequisite: `03_checkpoints`. Deeper: [09b_durability_in_depth](09b_durability_in_depth.ipynb)
# (the chapter's `safe_save` as written and its holes, backups, what `fsync` costs, flipped bits).
#
# A helper saves a 64 MB state over a good `model.pth` in another process and kills it
# (`SIGKILL`, like a crash) half-way. Loading what is left **fails, on purpose**:

# %%
from course_lib import notebook

device, workdir = notebook.start("6.3.9")

import torch

from course_lib.interrupt import kill_while_saving

path = workdir / "model.pth"
torch.save({"generation": 0, "weights": torch.zeros(16_000_000)}, path)
print("killed:", kill_while_saving("plain", path) != 0)

# %% tags=["raises-exception"]
torch.load(path)

# %% [markdown]
# ## The raw recipe
#
# Write to a unique temporary file **in the same folder**, `fsync` it (the bytes reach the disk,
# not only the page cache), `os.replace` it over the target (atomic: the target is the old file or
# the new one, never a mixture), and `fsync` the folder (the rename itself reaches the disk):

# %%
import os
import tempfile


def atomic_save(obj, path):
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "wb") as f:  # a unique name: two savers never share it
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())  # the bytes are on the disk
    os.replace(tmp, path)  # atomic on Linux, macOS and Windows
    folder = os.open(path.parent, os.O_RDONLY)
    os.fsync(folder)  # the rename is on the disk
    os.close(folder)


atomic_save({"generation": 0, "weights": torch.zeros(16_000_000)}, path)

# %% [markdown]
# ## The helper
#
# `course_lib.safe_io.safe_save` is this recipe, plus removing the temporary file when the save
# fails and the permissions a plain save would give. Killed the same way, it leaves one complete
# save (and a harmless hidden `.tmp` file, since `SIGKILL` allows no clean-up):

# %%
from course_lib.safe_io import safe_load

kill_while_saving("safe", path)
print("one complete save:", safe_load(path, map_location="cpu")["weights"].unique().numel() == 1)

# %% [markdown]
# ## Exercise
#
# Make `atomic_save` fail half-way over `path` (a `lambda` cannot be pickled) and check that the
# previous file still loads. Graded: `exercises/ex6_atomic_save.ipynb`.
#
# <details><summary>Solution (run it: the assert checks it)</summary>
#
# ```python
# try:
#     atomic_save({"lr_rule": lambda epoch: 0.1**epoch}, path)
# except Exception as error:
#     print("refused:", type(error).__name__)
# assert safe_load(path, map_location="cpu")["weights"].shape == (16_000_000,)
# ```
#
# </details>
#
# **Conclusion.** Never save over your only good checkpoint: temporary file, `fsync`,
# `os.replace`, folder `fsync`, or `safe_save`. Next: `10_summary`.
