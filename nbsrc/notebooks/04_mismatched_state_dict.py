# %% [markdown]
# # 6.3.4 Mismatched `state_dict`s: partial loading and renaming keys
#
# In **transfer learning** you keep a pretrained *backbone* and give it a new *head* with another
# number of classes; after a **refactoring** the same weights live under new names. Either way the
# checkpoint must be adapted before it loads. Prerequisite: `01_state_dict`. Deeper:
# [04b_partial_loading_in_depth](04b_partial_loading_in_depth.ipynb) (the chapter's functions as
# written, a real transfer, regex renaming, looking inside a file).
#
# `SmallCNN` has a backbone (`features`, with BatchNorm) and a head (`classifier`). We save a
# 10-class one as the pretrained checkpoint and load it into a 2-class one with `strict=False`.
# **This cell fails on purpose**: `strict=False` forgives missing and unexpected keys, never a shape.

# %%
from course_lib import notebook

device, workdir = notebook.start("6.3.4")

import torch

from course_lib.models import SmallCNN

torch.save(SmallCNN(num_classes=10).state_dict(), workdir / "pretrained_model.pth")
pretrained_state = torch.load(workdir / "pretrained_model.pth", map_location=device)

# %% tags=["raises-exception"]
SmallCNN(num_classes=2).load_state_dict(pretrained_state, strict=False)

# %% [markdown]
# ## The raw PyTorch way, then the helper
#
# Keep the entries whose name and shape match, and load those with
# `strict=False`, which returns the keys it did not fill. `course_lib.state_dict`'s
# `load_partial_state_dict` does the same, checks everything before it touches the model, and
# returns a report a program can check (and logs what it skipped):

# %%
model = SmallCNN(num_classes=2).to(device)
own = model.state_dict()
matching = {k: v for k, v in pretrained_state.items() if k in own and v.shape == own[k].shape}
print(model.load_state_dict(matching, strict=False))

from course_lib.state_dict import load_partial_state_dict, rename_state_dict_keys

print(load_partial_state_dict(SmallCNN(num_classes=2).to(device), pretrained_state).table())

# %% [markdown]
# ## Freezing the backbone
#
# `requires_grad_(False)` stops the gradients but not BatchNorm: in `train()` mode it replaces the
# pretrained running statistics with those of the new data. Put the backbone back in `eval()`
# after `model.train()`:

# %%
model.features.requires_grad_(False)
before = model.features[1].running_mean.clone()
model.train()
model.features.eval()  # without this line the forward pass below changes running_mean
model(torch.randn(8, 3, 32, 32, device=device))
print("running_mean unchanged:", torch.equal(before, model.features[1].running_mean))

# %% [markdown]
# ## Renaming keys
#
# A refactoring renamed `features` to `backbone`. A dict comprehension renames the keys but drops
# `_metadata` (the module versions BatchNorm reads when loading); the helper keeps it, and refuses
# two keys mapped to one name:

# %%
raw = {k.replace("features.", "backbone.", 1): v for k, v in pretrained_state.items()}
renamed = rename_state_dict_keys(pretrained_state, prefixes={"features.": "backbone."})
print("_metadata kept (comprehension, helper):", [hasattr(s, "_metadata") for s in (raw, renamed)])

# %% [markdown]
# ## Exercise
#
# Load the checkpoint into a 3-class `SmallCNN`: check that only the head was skipped and that
# every loaded tensor equals the file's. (Graded: `exercises/ex3_partial_loading.ipynb`.)
#
# <details><summary>Solution (run it: the asserts check it)</summary>
#
# ```python
# three = SmallCNN(num_classes=3).to(device)
# report = load_partial_state_dict(three, pretrained_state)
# assert [k for k, _, _ in report.shape_mismatched] == ["classifier.2.weight", "classifier.2.bias"]
# assert all(torch.equal(three.state_dict()[k].cpu(), pretrained_state[k].cpu()) for k in report.loaded)
# ```
#
# </details>
#
# **Conclusion.** Load what fits and check what was skipped; freeze with `eval()` too; rename with
# rules that keep `_metadata`. Next: `05_data_parallel`, where every key starts with `module.`.
