# %% [markdown]
# # 6.3.2 Saving the whole model
#
# `torch.save(model)` pickles the model object itself, structure and parameters together. The
# chapter advises against it: the class must exist when loading, the file is tied to your code's
# import paths, and it is bigger. PyTorch 2.6 added a fourth reason: loading a pickle runs code.
# Deeper: [`02b_safe_formats`](02b_safe_formats.ipynb) (safetensors, training state without
# pickle, allow-lists in depth). The chapter's code, with its `MyModel`:

# %%
import torch
import torch.nn as nn

from course_lib import notebook

device, workdir = notebook.start("6.3.2")


class MyModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(10, 5)


model = MyModel()
path = workdir / "complete_model.pth"
torch.save(model, path)  # the whole model
torch.save(model.state_dict(), workdir / "weights.pth")  # for comparison
sizes = [p.stat().st_size for p in (path, workdir / "weights.pth")]
print(f"whole model, state_dict: {sizes} bytes; difference: {sizes[0] - sizes[1]} bytes")

# %% [markdown]
# The pickled structure costs 824 bytes here: that matters for a tiny model, not a large
# one. Loading is what bites. Since PyTorch 2.6, `torch.load` defaults to `weights_only=True`,
# which accepts tensors and plain containers only, so the chapter's load **fails on purpose**:

# %% tags=["raises-exception"]
model = torch.load(path)
model.eval()

# %% [markdown]
# The file holds instructions that name classes to import and call. Trust exactly those with an
# allow-list: `torch.serialization.safe_globals` for one block, `add_safe_globals` for the rest of
# the process (undone by `clear_safe_globals`). The course's `safe_load(allowed_globals=...)` wraps
# the scoped form, with errors that name the file and the fix:

# %%
from course_lib.safe_io import safe_load

with torch.serialization.safe_globals([MyModel, nn.Linear]):  # trusted in this block only
    print("scoped:      ", type(torch.load(path)).__name__)
torch.serialization.add_safe_globals([MyModel, nn.Linear])  # trusted from now on
print("process-wide:", type(torch.load(path)).__name__)
torch.serialization.clear_safe_globals()
print("safe_load:   ", type(safe_load(path, allowed_globals=[MyModel, nn.Linear])).__name__)

# %% [markdown]
# Trust does not bring back a class that is gone. In a process that never defined `MyModel` (or
# after it was renamed or moved), even `weights_only=False` **fails on purpose**:

# %% tags=["raises-exception"]
del MyModel  # as in a fresh process
torch.load(path, weights_only=False)

# %% [markdown]
# ## The security lesson: loading a pickle runs code
#
# A pickle may tell the loader "call this function with these arguments", any function. An
# attacker's checkpoint looks like ordinary weights; its payload here only writes a marker file.
# Today's default refuses it before anything runs (**fails on purpose**). With
# `weights_only=False`, what every `torch.load` did before PyTorch 2.6 and what old tutorials
# still show, the payload runs the moment the file is loaded (the cell after it):


# %% tags=["raises-exception"]
class Payload:
    def __reduce__(self):  # unpickling calls exec(code)
        return (exec, (f"open({str(workdir / 'PAYLOAD_RAN.txt')!r}, 'w')",))


torch.save({"weights": nn.Linear(10, 5).state_dict(), "note": Payload()}, workdir / "crafted.pth")
torch.load(workdir / "crafted.pth")

# %%
torch.load(workdir / "crafted.pth", weights_only=False)
print("payload ran:", (workdir / "PAYLOAD_RAN.txt").exists())

# %% [markdown]
# ## Exercise
#
# Which functions would `crafted.pth` call? List them without loading it, with
# `get_unsafe_globals_in_checkpoint`.
#
# <details><summary>Solution (click to open)</summary>
#
# ```python
# from torch.serialization import get_unsafe_globals_in_checkpoint
#
# found = get_unsafe_globals_in_checkpoint(workdir / "crafted.pth")
# assert found == ["builtins.exec"], found
# ```
# </details>
#
# ## Conclusion
#
# Share `state_dict`s and rebuild models in code; load with `weights_only=True` (the default)
# and trust more only for files you made, naming what you trust. An exported program (`.pt2`,
# chapters 6.3.6-6.3.7) needs no Python class, but it can itself carry pickles and native code:
# load programs only from a trusted source. For weights you do not trust, use safetensors or
# ONNX (see `02b_safe_formats`).
#
# ## Further reading
#
# - PyTorch docs: [Serialization semantics](https://pytorch.org/docs/stable/notes/serialization.html)
#   (`weights_only`, `safe_globals`, `add_safe_globals`, `get_unsafe_globals_in_checkpoint`)
# - Python docs: [`pickle`](https://docs.python.org/3/library/pickle.html) (its security warning)
