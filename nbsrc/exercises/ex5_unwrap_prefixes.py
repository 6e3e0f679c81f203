# %% [markdown]
# # Exercise 5: load a checkpoint saved from a wrapped model
#
# Chapter 6.3.5 showed that wrappers rename every weight: `DataParallel` and
# `DistributedDataParallel` keep the model as `.module`, so its keys start with `module.`, and
# `torch.compile` keeps it as `._orig_mod`, so they start with `_orig_mod.`. Wrappers can be
# nested (a compiled DDP model saves `module._orig_mod.` or `_orig_mod.module.` keys), and the
# chapter's `key.replace("module.", "")` also damages names that merely contain the word.
#
# **Your task.** Complete `load_unwrapped(model, state_dict)` so that it loads `state_dict` into the
# plain, unwrapped `model` with `strict=True`, after removing from the **start** of every key any
# sequence of the wrapper prefixes `module.` and `_orig_mod.` (repeated, in any order), and
# nothing else:
#
# - `"module.features.0.weight"`, `"_orig_mod.features.0.weight"` and
#   `"_orig_mod.module.features.0.weight"` all become `"features.0.weight"`;
# - `"submodule.weight"`, `"module_list.0.weight"`, `"encoder.module.weight"` and
#   `"orig_mod_head.weight"` stay exactly as they are;
# - a checkpoint without prefixes loads as it is.
#
# Do not change the caller's `state_dict` (build a new dict). The function returns `None`.
# (A model whose own first attribute is called `module` cannot be told from a wrapped one by its
# keys alone; this exercise, like the wrappers themselves, treats a leading `module.` as a wrapper.)
#
# Run all cells; the last one checks your work. The grader tries more models and prefixes.
# `course_lib.prefixes.remove_module_prefix` is the course's version: compare only afterwards.

# %%
import re

import torch
from torch import nn


# %%
def load_unwrapped(model: nn.Module, state_dict: dict) -> None:
    """Load state_dict into the unwrapped model, stripping leading 'module.'/'_orig_mod.' prefixes."""
    # BEGIN SOLUTION
    wrappers = re.compile(r"^(?:module\.|_orig_mod\.)+")  # any run of them, at the start only
    unwrapped = {wrappers.sub("", key): value for key, value in state_dict.items()}
    model.load_state_dict(unwrapped, strict=True)
    # END SOLUTION


# %% [markdown]
# ## Try it: a model with a tricky attribute name, saved from four wrappers


# %%
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
        self.submodule = nn.Linear(8, 2)  # a name that contains "module."


torch.manual_seed(0)
trained = Net().state_dict()
saved = {
    "DataParallel": {"module." + key: value for key, value in trained.items()},
    "torch.compile": {"_orig_mod." + key: value for key, value in trained.items()},
    "compiled DDP": {"_orig_mod.module." + key: value for key, value in trained.items()},
    "DDP, compiled": {"module._orig_mod." + key: value for key, value in trained.items()},
}
print(list(saved["compiled DDP"]))

# %% [markdown]
# The chapter's `replace` also turns `submodule.weight` into `subweight`, so the load fails:

# %%
naive = {key.replace("module.", ""): value for key, value in saved["DataParallel"].items()}
try:
    Net().load_state_dict(naive)
except RuntimeError as error:
    print(error)

# %% [markdown]
# With `load_unwrapped`, every checkpoint loads, the plain one included:

# %%
for wrapper, state_dict in [*saved.items(), ("no wrapper", trained)]:
    model = Net()
    load_unwrapped(model, state_dict)
    same = all(torch.equal(model.state_dict()[k], v) for k, v in trained.items())
    print(f"{wrapper:15} loaded, same weights: {same}")

# %% [markdown]
# ## Self-check

# %%
for state_dict in [*saved.values(), trained]:
    keys_before = list(state_dict)
    model = Net()
    load_unwrapped(model, state_dict)
    assert list(state_dict) == keys_before, "the caller's state_dict was modified"
    assert torch.equal(model.submodule.weight, trained["submodule.weight"])
    assert torch.equal(model.features[0].bias, trained["features.0.bias"])
print("self-check passed")
