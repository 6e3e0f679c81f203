# %% [markdown]
# # 6.3.2 in depth: safe formats and what an allow-list trusts
#
# *Deeper material.* Read [`02_whole_model`](02_whole_model.ipynb) first; nothing on the core
# path depends on this notebook. It covers a class that changed under a pickled model, what
# `safe_load` says about a crafted file, allow-lists for configuration objects, and the
# safetensors format, including a whole training state stored without pickle.

# %%
from course_lib import notebook

device, workdir = notebook.start("6.3.2b")

# %%
import torch
import torch.nn as nn
from torch.serialization import get_unsafe_globals_in_checkpoint

from course_lib.models import make_mlp
from course_lib.safe_io import safe_load


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
# ### When the class is gone
#
# Trust does not bring back a class that is gone. In a process that never defined `MyModel` (or
# after it was renamed or moved), even `weights_only=False` **fails on purpose**:

# %% tags=["raises-exception"]
del MyModel  # as in a fresh process
torch.load(workdir / "model.pth", weights_only=False)

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
# `weights_only=True` refuses it before anything runs. You can see what a file would call without
# running it, and the course's `safe_load` says it in one message with the options:

# %%
from course_lib.safe_io import UnsafeCheckpointError

print(sorted(get_unsafe_globals_in_checkpoint(crafted)))
try:
    safe_load(crafted)
except UnsafeCheckpointError as error:
    print(error)
print("payload ran:", marker.exists())

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
#
# ## Conclusion
#
# An allow-list names exactly the classes you trust; plain data needs no trust at all. A
# safetensors file cannot carry code: use it for weights you share or download, and a
# `torch.save` file loaded with `weights_only=True` (or `tensor_state`'s JSON route) for training
# state you resume yourself. Back to the core path: [`03_checkpoints`](03_checkpoints.ipynb).

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
