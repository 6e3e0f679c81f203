# %% [markdown]
# # Exercise 4: make an old checkpoint load with `weights_only=True`
#
# Chapter 6.3.2 showed why `torch.load` has defaulted to `weights_only=True` since PyTorch 2.6: it
# unpickles tensors and plain Python values only, never arbitrary objects. Checkpoints written by
# older code are often full of NumPy and Python objects, and the safe loader refuses them. The fix
# is not `weights_only=False` but converting the checkpoint to plain values before saving it.
#
# **Your task.** Complete `make_weights_only_loadable(checkpoint)`. It returns a **new** dict
# (the `checkpoint` you are given must not change) that `torch.load(path)` accepts after
# `torch.save`, converting every value recursively:
#
# | value | becomes |
# |---|---|
# | NumPy array (`np.ndarray`) | a tensor with the same dtype and values: `torch.from_numpy(a.copy())` |
# | NumPy scalar (`np.generic`: `np.float32`, `np.int64`, ...) | the Python number: `.item()` |
# | `datetime.datetime` | its ISO-8601 string: `.isoformat()` |
# | `pathlib.Path` (any `PurePath`) | `str(path)` |
# | `argparse.Namespace` | the dict of its attributes, `vars(ns)`, itself converted |
# | `dict`, `list`, `tuple` | the **same container type** with converted contents |
# | anything else (tensors, `str`, `int`, `float`, `bool`, `None`) | unchanged |
#
# The same container type means: a dict stays a dict, an `OrderedDict` stays an `OrderedDict` (a
# model's `state_dict()` is one), a list stays a list and a tuple stays a tuple; dict keys are kept
# as they are.
#
# Run all cells; the last one checks your work. The grader checks more checkpoints of this kind.
# `course_lib.checkpoint.to_plain` is the course's (shorter) version: compare only afterwards.

# %%
import argparse
import datetime
import pickle
from pathlib import Path, PurePath

import numpy as np
import torch


# %%
def make_weights_only_loadable(checkpoint: dict) -> dict:
    """A converted copy of checkpoint that torch.load(weights_only=True) can load."""

    # BEGIN SOLUTION
    def convert(value):
        if isinstance(value, np.ndarray):
            return torch.from_numpy(value.copy())
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, datetime.datetime):
            return value.isoformat()
        if isinstance(value, PurePath):
            return str(value)
        if isinstance(value, argparse.Namespace):
            return convert(vars(value))
        if isinstance(value, dict):  # dict, OrderedDict: keep the type, convert the values
            return type(value)((key, convert(item)) for key, item in value.items())
        if isinstance(value, (list, tuple)):
            return type(value)(convert(item) for item in value)
        return value

    return convert(checkpoint)
    # END SOLUTION


# %% [markdown]
# ## Try it: a checkpoint as 2019-era training code wrote it

# %%
torch.manual_seed(0)
old_checkpoint = {
    "epoch": 12,
    "model_state_dict": torch.nn.Linear(3, 2).state_dict(),
    "loss": np.float32(0.25),
    "history": np.array([0.9, 0.5, 0.25], dtype=np.float32),
    "steps": [np.int64(100), np.int64(200)],
    "numpy_rng": np.random.RandomState(0).get_state(),
    "saved_at": datetime.datetime(2019, 5, 17, 12, 30),
    "config": argparse.Namespace(lr=0.01, batch_size=32),
    "data_dir": Path("data") / "cifar10",
}
Path("scratch").mkdir(exist_ok=True)
torch.save(old_checkpoint, "scratch/ex4_old.pt")

# %% [markdown]
# The file is fine, but the safe loader refuses it. `torch.serialization` lists, without loading
# anything, the classes the file would make `torch.load` import and call:

# %%
try:
    torch.load("scratch/ex4_old.pt")
except pickle.UnpicklingError as refused:
    print("torch.load refused the file:", type(refused).__name__)
for name in sorted(torch.serialization.get_unsafe_globals_in_checkpoint("scratch/ex4_old.pt")):
    print("  it needs", name)

# %% [markdown]
# Converted, it saves and loads with the default `weights_only=True`:

# %%
converted = make_weights_only_loadable(old_checkpoint)
torch.save(converted, "scratch/ex4_converted.pt")
loaded = torch.load("scratch/ex4_converted.pt")
for key, value in loaded.items():
    print(f"{key:17} {type(value).__name__}")
print(loaded["loss"], loaded["steps"], loaded["saved_at"], loaded["config"], loaded["data_dir"])

# %% [markdown]
# Nothing was lost: NumPy's random state, for one, still restores.

# %%
name, keys, *rest = loaded["numpy_rng"]
restored = np.random.RandomState()
restored.set_state((name, keys.numpy(), *rest))
print(restored.randint(1000, size=3), np.random.RandomState(0).randint(1000, size=3))

# %% [markdown]
# ## Self-check

# %%
from collections import OrderedDict

assert isinstance(old_checkpoint["loss"], np.float32), "the input checkpoint was modified"
assert isinstance(old_checkpoint["config"], argparse.Namespace), "the input checkpoint was modified"
assert type(loaded) is dict and type(loaded["model_state_dict"]) is OrderedDict
assert type(loaded["loss"]) is float and loaded["loss"] == 0.25
assert loaded["history"].dtype == torch.float32
assert torch.equal(loaded["history"], torch.tensor([0.9, 0.5, 0.25]))
assert loaded["steps"] == [100, 200] and all(type(s) is int for s in loaded["steps"])
assert type(loaded["numpy_rng"]) is tuple
assert loaded["saved_at"] == "2019-05-17T12:30:00"
assert loaded["config"] == {"lr": 0.01, "batch_size": 32}
assert loaded["data_dir"] == str(Path("data") / "cifar10")
assert torch.equal(
    loaded["model_state_dict"]["weight"], old_checkpoint["model_state_dict"]["weight"]
)
print("self-check passed")
