# %% [markdown]
# # 6.3.2 Saving the whole model
#
# ## What you will learn
#
# - how `torch.save(model)` pickles a whole model, and why loading it fails on PyTorch 2.6+;
# - the chapter's three reasons not to save whole models, each shown live: the class must exist
#   when loading, the file is tied to the code's import paths, and it is bigger;
# - the security lesson: unpickling a file runs code named in the file. `weights_only=True`
#   refuses a crafted checkpoint before its payload can run;
# - the explicit opt-ins (`safe_globals`, `weights_only=False`) and what each one trusts.
#
# ## Prerequisites
#
# Chapter 6.3.1 (`01_state_dict.ipynb`). Python's `pickle` helps but is not required.

# %%
from course_lib import notebook

device, workdir = notebook.start("6.3.2")

# %% [markdown]
# ## Pickling the whole model
#
# The chapter's code saves the model object itself, structure and parameters together:

# %%
import torch
import torch.nn as nn

from course_lib.models import make_mlp

model = make_mlp()

# Save the whole model (structure and parameters)
torch.save(model, workdir / "complete_model.pth")
print("saved", workdir / "complete_model.pth")

# %% [markdown]
# And loads it back. Since PyTorch 2.6, `torch.load` defaults to `weights_only=True`, which accepts
# tensors and plain containers only, so the chapter's load **fails on purpose** in this cell:

# %% tags=["raises-exception"]
# Load
model = torch.load(workdir / "complete_model.pth")
model.eval()

# %% [markdown]
# The file does not hold "a model": it holds instructions for rebuilding one, which name the classes
# to import and call. `torch.serialization` can list them without running anything:

# %%
from torch.serialization import get_unsafe_globals_in_checkpoint

for name in sorted(get_unsafe_globals_in_checkpoint(workdir / "complete_model.pth")):
    print(name)

# %% [markdown]
# Two ways to load it anyway, each an explicit statement of trust:
#
# - `weights_only=False` trusts **everything** in the file: any function it names will be called.
#   Only for files you made yourself or got from a source you trust completely.
# - an allow-list (`torch.serialization.safe_globals`, or `allowed_globals` in the course's
#   `safe_load`) trusts just the classes you list; anything else in the file is still refused.

# %%
from course_lib.safe_io import safe_load

# For a file you made yourself a minute ago:
trusted = torch.load(workdir / "complete_model.pth", weights_only=False)
print("weights_only=False:", type(trusted).__name__)

# Trusting three named classes, and nothing else:
allowed = safe_load(
    workdir / "complete_model.pth", allowed_globals=[nn.Sequential, nn.Linear, nn.ReLU]
)
print("allow-list:        ", type(allowed).__name__)

# %% [markdown]
# ## Why the chapter advises against it
#
# 1. **It depends on the class definition.** The class must exist, under the same module and name,
#    wherever the file is loaded.
# 2. **Poor portability.** The file records import paths (`torch.nn.modules.linear.Linear`, or your
#    `__main__.MyModel`); moving or renaming the code, or a library refactor, breaks old files.
# 3. **Bigger files.** The file also holds the pickled structure.
#
# The chapter's example, run for real. First, save a whole `MyModel`, defined here in the notebook:


# %%
class MyModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(10, 5)

    def forward(self, x):
        return self.fc(x)


model = MyModel()
torch.save(model, workdir / "model.pth")
torch.save(model.state_dict(), workdir / "model_state_dict.pth")
print(sorted(get_unsafe_globals_in_checkpoint(workdir / "model.pth")))

# %% [markdown]
# ### When the class is missing
#
# Imagine loading the file in another notebook, or after the class was removed from your code. Even
# with `weights_only=False`, the load **fails on purpose** here: pickle cannot find `MyModel`.

# %% tags=["raises-exception"]
del MyModel  # the class is gone, as in a fresh process that never defined it
model = torch.load(workdir / "model.pth", weights_only=False)  # may fail!

# %% [markdown]
# ### When the class has changed
#
# Worse is a class that still exists but has changed. Say a colleague renamed the attribute `fc` to
# `linear`. The load *succeeds*, because pickle restores the old attributes without running
# `__init__`, and the model breaks only later, when it is used (the second cell below **fails on purpose**):


# %%
class MyModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(10, 5)  # renamed from `fc`

    def forward(self, x):
        return self.linear(x)


model = torch.load(workdir / "model.pth", weights_only=False)
print("loaded without complaint:", type(model).__name__)

# %% tags=["raises-exception"]
model(torch.randn(2, 10))

# %% [markdown]
# The `state_dict` route fails too, but at load time, with a message that says exactly what differs
# (this cell **fails on purpose**). Chapter 6.3.4 shows how to map old names to new ones.

# %% tags=["raises-exception"]
model = MyModel()
model.load_state_dict(torch.load(workdir / "model_state_dict.pth"))

# %% [markdown]
# ### File size
#
# The pickled structure costs a few kilobytes. That matters for this tiny model and not for a large
# one; the first two reasons are the ones that bite.

# %%
whole = (workdir / "model.pth").stat().st_size
weights = (workdir / "model_state_dict.pth").stat().st_size
print(
    f"whole model: {whole} bytes, state_dict: {weights} bytes, difference: {whole - weights} bytes"
)

# %% [markdown]
# ## The security lesson: loading a pickle runs code
#
# A pickle may tell the loader "call this function with these arguments". That is how it rebuilds
# objects, and it works for any function: `os.system`, `exec`, ... Below, an attacker builds a
# checkpoint that looks like ordinary weights. Its payload is harmless: it only writes a marker file.


# %%
class Payload:
    """Unpickling this object calls exec() on a string of the attacker's choosing."""

    def __reduce__(self):
        code = f"open({str(workdir / 'PAYLOAD_RAN.txt')!r}, 'w').write('this ran when the file was loaded')"
        return (exec, (code,))


crafted = workdir / "pretrained_weights.pth"
torch.save({"model_state_dict": make_mlp().state_dict(), "note": Payload()}, crafted)
marker = workdir / "PAYLOAD_RAN.txt"
print("saved", crafted, "| marker exists:", marker.exists())

# %% [markdown]
# A user downloads it and loads it the normal way. Today's default, `weights_only=True`, refuses it
# before anything runs (this cell **fails on purpose**):

# %% tags=["raises-exception"]
state = torch.load(crafted)

# %%
print("payload ran:", marker.exists())

# %% [markdown]
# You can see what a file would call without running it, and the course's `safe_load` says it in
# one message with the options:

# %%
from course_lib.safe_io import UnsafeCheckpointError

print(sorted(get_unsafe_globals_in_checkpoint(crafted)))
try:
    safe_load(crafted)
except UnsafeCheckpointError as error:
    print(error)
print("payload ran:", marker.exists())

# %% [markdown]
# With `weights_only=False` (what every `torch.load` did before PyTorch 2.6, and what old tutorials
# still show) the payload runs the moment the file is loaded:

# %%
state = torch.load(crafted, weights_only=False)
print("payload ran:", marker.exists(), "->", marker.read_text())

# %% [markdown]
# ## What the opt-ins trust
#
# Real checkpoints sometimes carry more than tensors, a configuration object for example. An
# allow-list names exactly the classes you trust to be rebuilt; anything else still fails:

# %%
from dataclasses import asdict, dataclass


@dataclass
class TrainConfig:
    lr: float = 0.1
    epochs: int = 10


torch.save({"model": make_mlp().state_dict(), "config": TrainConfig()}, workdir / "with_config.pth")
try:
    safe_load(workdir / "with_config.pth")
except UnsafeCheckpointError as error:
    print("refused, needs:", error.unsafe_globals)

checkpoint = safe_load(workdir / "with_config.pth", allowed_globals=[TrainConfig])
print("with allowed_globals=[TrainConfig]:", checkpoint["config"])

# %% [markdown]
# Better still, store plain data, which needs no trust at all: `dataclasses.asdict(config)`, floats
# rather than NumPy scalars, ISO strings rather than `datetime` objects.

# %%
torch.save(
    {"model": make_mlp().state_dict(), "config": asdict(TrainConfig())}, workdir / "plain.pth"
)
print(safe_load(workdir / "plain.pth")["config"])

# %% [markdown]
# | opt-in | what it trusts | use it for |
# |---|---|---|
# | nothing (`weights_only=True`, the default) | nothing: tensors, numbers, strings, lists, dicts only | everything you can |
# | `safe_globals([...])` / `safe_load(..., allowed_globals=[...])` | the listed classes' reconstruction, nothing else | files with a few known classes |
# | `weights_only=False` | all code the file names | only files you made yourself |
#
# (`torch.serialization.add_safe_globals` is the process-wide form of the allow-list; the context
# manager `safe_globals` keeps the trust scoped to one load.)

# %% [markdown]
# ## A format that cannot carry code: safetensors
#
# `weights_only=True` makes the unpickler refuse what it does not know; the file format itself
# can still ask for code to run. A `.safetensors` file cannot: it is an 8-byte header length, a
# JSON header (each tensor's name, dtype, shape and byte offsets), then the raw bytes. Loading
# parses the JSON and maps the bytes; there is no instruction to call anything. The same weights
# as the crafted file's, in that format:

# %%
import json

from safetensors.torch import load_file, save_file

weights = workdir / "pretrained_weights.safetensors"
save_file(make_mlp().state_dict(), weights)
with open(weights, "rb") as f:
    header_length = int.from_bytes(f.read(8), "little")
    header = json.loads(f.read(header_length))
for name, entry in header.items():
    print(f"{name:<9}", entry)

# %%
model = make_mlp()
print(model.load_state_dict(load_file(weights)))

# %% [markdown]
# The attacker's trick does not fit in: `save_file` takes tensors and nothing else (this cell
# **fails on purpose**):

# %% tags=["raises-exception"]
save_file({**make_mlp().state_dict(), "note": Payload()}, workdir / "crafted.safetensors")

# %% [markdown]
# ### What safetensors cannot hold
#
# Everything that is not a tensor. A training checkpoint holds an optimizer's `state_dict`:
# nested dictionaries with integer keys, `param_groups` of learning rates, tuples and lists, step
# counts (this cell **fails on purpose**):

# %% tags=["raises-exception"]
model = make_mlp()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
model(torch.randn(4, 10)).square().mean().backward()
optimizer.step()
save_file(optimizer.state_dict(), workdir / "optimizer.safetensors")

# %% [markdown]
# Two ways out:
#
# 1. Keep the training state in a `torch.save` file and load it with `weights_only=True`: an
#    optimizer's or scheduler's state is tensors, numbers, strings, lists and dicts, which the safe
#    loader accepts (chapter 6.3.3 does this). Weights can go to a safetensors file beside it:
#    chapter 6.3.8's manager does exactly that with `format="safetensors"`.
# 2. Put everything in one safetensors file: tensors under flattened names, the rest of the
#    structure as JSON in the file's metadata (which holds strings).
#    `course_lib.tensor_state.save_state_safetensors` does this; loading parses JSON and maps
#    tensors, nothing else:

# %%
from course_lib.tensor_state import load_state_safetensors, save_state_safetensors

checkpoint = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 1}
save_state_safetensors(checkpoint, workdir / "checkpoint.safetensors")
flat = sorted(load_file(workdir / "checkpoint.safetensors"))  # the tensor part alone
print(len(flat), "tensors under flat names, e.g.", flat[0], flat[-1])

loaded = load_state_safetensors(workdir / "checkpoint.safetensors")
resumed_model = make_mlp()
resumed_model.load_state_dict(loaded["model"])
resumed = torch.optim.Adam(resumed_model.parameters())
resumed.load_state_dict(loaded["optimizer"])
print("epoch:", loaded["epoch"])
before, after = optimizer.state_dict(), resumed.state_dict()
print("param_groups restored:", after["param_groups"] == before["param_groups"])
moments = [(i, k) for i in before["state"] for k in before["state"][i]]  # exp_avg, step, ...
print(
    "Adam's state restored:",
    all(torch.equal(before["state"][i][k], after["state"][i][k]) for i, k in moments),
)

# %% [markdown]
# A value that only pickle could store is refused when saving, with its place in the structure:

# %%
try:
    save_state_safetensors({"config": TrainConfig()}, workdir / "config.safetensors")
except TypeError as error:
    print(error)

# %% [markdown]
# Use safetensors for weights you share or download; a `torch.save` file loaded with
# `weights_only=True` (or the JSON route above) for training state you resume yourself.
#
# ## Exercises
#
# 1. Save a model that stores a NumPy scalar loss (`np.float64(0.5)`) in its checkpoint. Which
#    globals does `get_unsafe_globals_in_checkpoint` report? Fix the checkpoint so that it loads
#    without any opt-in.
# 2. Write a `Payload` that would delete a file. Confirm that `safe_load` refuses it and names the
#    function it would call.
#
# Try them in a new cell first. Each solution ends with its check: `assert` lines that pass for
# any correct answer.
#
# <details><summary>Solution 1 (click to open)</summary>
#
# ```python
# import numpy as np
# import torch
# from torch.serialization import get_unsafe_globals_in_checkpoint
#
# from course_lib.models import make_mlp
#
# model = make_mlp()
# torch.save({"model": model.state_dict(), "loss": np.float64(0.5)}, workdir / "numpy_loss.pth")
# print(get_unsafe_globals_in_checkpoint(workdir / "numpy_loss.pth"))  # NumPy's scalar and dtype
#
# fixed = {"model": model.state_dict(), "loss": float(np.float64(0.5))}  # a plain float
# torch.save(fixed, workdir / "plain_loss.pth")
# checkpoint = torch.load(workdir / "plain_loss.pth")  # weights_only=True, no opt-in
# # Check: nothing left to trust, and the loss is a plain float
# assert get_unsafe_globals_in_checkpoint(workdir / "plain_loss.pth") == []
# assert type(checkpoint["loss"]) is float
# print("exercise 1: checked")
# ```
# </details>
#
# <details><summary>Solution 2 (click to open)</summary>
#
# ```python
# import os
#
# from course_lib.safe_io import UnsafeCheckpointError, safe_load
#
# victim = workdir / "precious.txt"
# victim.write_text("keep me")
#
#
# class DeletingPayload:
#     def __reduce__(self):
#         return (os.remove, (str(victim),))  # unpickling would call os.remove(victim)
#
#
# torch.save({"model": make_mlp().state_dict(), "note": DeletingPayload()}, workdir / "del.pth")
# try:
#     safe_load(workdir / "del.pth")
# except UnsafeCheckpointError as error:
#     refused = error
# print(refused)
# # Check: refused, the function named (posix.remove on Linux and macOS), the file still there
# assert any(name.endswith(".remove") for name in refused.unsafe_globals)
# assert victim.exists()
# print("exercise 2: checked")
# ```
# </details>
#
# ## Conclusion
#
# A whole-model pickle ties the file to your code's exact layout and can run arbitrary code when
# loaded. Share `state_dict`s and rebuild models in code; load with `weights_only=True` (the
# default), and opt in to more only for files you trust, naming what you trust. For weights you
# share or download, safetensors cannot carry code at all. For a model file that needs no Python
# class at all, export it (chapters 6.3.6 and 6.3.7).

# %% [markdown]
# ## Further reading
#
# - PyTorch tutorial: [Saving and loading models](https://pytorch.org/tutorials/beginner/saving_loading_models.html)
#   (whole model versus `state_dict`)
# - PyTorch docs: [`torch.load`](https://pytorch.org/docs/stable/generated/torch.load.html) and
#   [Serialization semantics](https://pytorch.org/docs/stable/notes/serialization.html)
#   (`weights_only`, `safe_globals`, `add_safe_globals`, `get_unsafe_globals_in_checkpoint`)
# - Python docs: [`pickle`](https://docs.python.org/3/library/pickle.html) (its security warning,
#   `__reduce__`)
# - [safetensors documentation](https://huggingface.co/docs/safetensors/index) and its
#   [torch API](https://huggingface.co/docs/safetensors/api/torch) (`save_file`, `load_file`,
#   metadata)
