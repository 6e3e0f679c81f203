# %% [markdown]
# # 6.3.2 Saving the whole model
#
# `torch.save(model)` pickles the model object itself. The chapter advises against it: the class
# must exist when loading, the file is tied to your import paths, and it is bigger. PyTorch 2.6
# added a fourth reason: loading a pickle runs code. Deeper:
# [`02b_safe_formats`](02b_safe_formats.ipynb) (a class gone or changed, safetensors,
# allow-lists in depth). The chapter's code:

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
print(f"difference: {path.stat().st_size - (workdir / 'weights.pth').stat().st_size} bytes")

# %% [markdown]
# The pickled structure costs 824 bytes: nothing for a large model. Loading is what bites:
# `torch.load` now defaults to `weights_only=True` (tensors and plain containers only), so the
# chapter's load **fails on purpose**:

# %% tags=["raises-exception"]
model = torch.load(path)
model.eval()

# %% [markdown]
# The file names classes to import and call. Trust exactly those: `safe_globals` for one block,
# `add_safe_globals` for the process. The course's `safe_load(allowed_globals=...)` wraps the
# scoped form, with errors that name the file and the fix:

# %%
from course_lib.safe_io import safe_load

with torch.serialization.safe_globals([MyModel, nn.Linear]):  # trusted in this block only
    print("scoped:      ", type(torch.load(path)).__name__)
torch.serialization.add_safe_globals([MyModel, nn.Linear])  # trusted from now on
print("process-wide:", type(torch.load(path)).__name__)
torch.serialization.clear_safe_globals()
print("safe_load:   ", type(safe_load(path, allowed_globals=[MyModel, nn.Linear])).__name__)

# %% [markdown]
# ## The security lesson: loading a pickle runs code
#
# A pickle may tell the loader to call any function. An attacker's checkpoint looks like
# ordinary weights; this payload only writes a marker file. Today's default refuses it
# (**fails on purpose**); with `weights_only=False`, what `torch.load` did before PyTorch 2.6 and
# old tutorials still show, it runs the moment the file is loaded (the cell after):


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
# found = torch.serialization.get_unsafe_globals_in_checkpoint(workdir / "crafted.pth")
# assert found == ["builtins.exec"], found
# ```
# </details>
#
# ## Conclusion
#
# Share `state_dict`s and rebuild models in code; load with `weights_only=True` (the default)
# and trust more only for files you made, naming what you trust. An exported program (`.pt2`,
# 6.3.6) can carry pickles and native code too: load it only from a trusted source. For weights
# you do not trust, use safetensors or ONNX (`02b_safe_formats`).
#
# ## Further reading
#
# - PyTorch docs: [Serialization semantics](https://pytorch.org/docs/stable/notes/serialization.html)
#   (`weights_only`, `safe_globals`, `add_safe_globals`, `get_unsafe_globals_in_checkpoint`)
# - Python docs: [`pickle`](https://docs.python.org/3/library/pickle.html) (its security warning)
