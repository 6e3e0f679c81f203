# %% [markdown]
# # 6.3.1 Saving and loading a `state_dict`
#
# A `state_dict` maps each layer's name to its tensors. The chapter's code, as written (deeper:
# [`01b_big_models`](01b_big_models.ipynb), on `_metadata`, `map_location`'s forms and models
# too big to hold twice):

# %%
import torch
import torch.nn as nn

from course_lib import notebook

device, workdir = notebook.start("6.3.1")

# Create a simple model
model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 5))
# Look at the state_dict
print("The model's state_dict:")
for name, param in model.state_dict().items():
    print(f"  {name}: {param.shape}")

# %% [markdown]
# `0.weight` is the `weight` of the module at index `0`, shaped `[out, in]`; `ReLU` has no
# tensors. `BatchNorm1d` also keeps *buffers* (running statistics) that no optimizer updates but
# `eval()` uses, so they are in the `state_dict` too. Pick an entry (needs a running kernel):

# %% tags=["nbval-ignore-output"]
from course_lib.explore import layer_explorer

bn_model = nn.Sequential(nn.Linear(10, 20), nn.BatchNorm1d(20), nn.ReLU(), nn.Linear(20, 5))
layer_explorer(bn_model)

# %% [markdown]
# ## The recommended way: save only the `state_dict`
#
# Save the weights; to load, build the model in code, load the weights, call `eval()` (dropout
# and BatchNorm behave differently in training). `load_state_dict` returns the keys it could
# not match. `torch.load`'s `weights_only=True` default (PyTorch 2.6+) accepts a `state_dict`.

# %%
torch.save(model.state_dict(), workdir / "model_weights.pth")  # Save

model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 5))  # Load
result = model.load_state_dict(torch.load(workdir / "model_weights.pth"))
model.eval()  # switch to evaluation mode
print(result)

# %% [markdown]
# ## Another device: `map_location`; and the trap of `assign=True`
#
# `torch.load` puts tensors back on the device they were saved from, so a CPU-only machine
# refuses a GPU file; `map_location` (`"cpu"`, `"cuda:0"`, a `torch.device`) moves them. Then
# `load_state_dict(state, assign=True)` makes the model *take* the loaded tensors instead of
# copying them (`01b` needs it): an optimizer created before holds the old ones. Create it after:

# %%
from course_lib.device import save_as_if_on_gpu

save_as_if_on_gpu(model.state_dict(), workdir / "from_gpu.pth")  # tensors tagged cuda:0
state = torch.load(workdir / "from_gpu.pth", map_location="cpu")
print("devices:", {str(t.device) for t in state.values()})
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
_ = model.load_state_dict(state, assign=True)
print("made before, holds the weight:", optimizer.param_groups[0]["params"][0] is model[0].weight)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
print("made after, holds the weight: ", optimizer.param_groups[0]["params"][0] is model[0].weight)

# %% [markdown]
# ## Exercise
#
# Delete `"1.running_var"` from `bn_model.state_dict()` and load the rest back with
# `strict=False`. What does `load_state_dict` return?
#
# <details><summary>Solution (click to open)</summary>
#
# ```python
# state = {k: v for k, v in bn_model.state_dict().items() if k != "1.running_var"}
# result = bn_model.load_state_dict(state, strict=False)  # strict=True would raise, naming it
# assert result.missing_keys == ["1.running_var"] and result.unexpected_keys == []
# ```
# </details>
#
# ## Conclusion
#
# Save `model.state_dict()`; load it into a model built in code, then `eval()`; use
# `map_location` across machines. Next: [`02_whole_model`](02_whole_model.ipynb).
#
# ## Further reading
#
# - PyTorch recipe: [Tips for loading an `nn.Module` from a checkpoint](https://pytorch.org/tutorials/recipes/recipes/module_load_state_dict_tips.html)
#   (`assign=True` and the optimizer)
