# %% [markdown]
# # 6.3.1 in depth: `state_dict` details and big models
#
# *Deeper material.* Read [`01_state_dict`](01_state_dict.ipynb) first; nothing on the core path
# depends on this notebook. It covers what a `state_dict` carries besides weights (`_metadata`,
# buffers), that it is a view of the model, every form of `map_location`, the course's
# `safe_load`, and loading a model too big to hold twice (`meta` + `mmap` + `assign`,
# safetensors, peak memory measured).

# %%
from course_lib import notebook

device, workdir = notebook.start("6.3.1b")

# %%
import torch
import torch.nn as nn

model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 5))
torch.save(model.state_dict(), workdir / "model_weights.pth")

# %% [markdown]
# The names are paths through the module tree: `0.weight` is the `weight` attribute of the module at
# index `0` of the `Sequential`. The `ReLU` at index `1` has no tensors, so it has no entries.
# A `Linear(10, 20)` stores its weight as `[out_features, in_features] = [20, 10]`.
#
# ## The passenger you do not see: `_metadata`
#
# `state_dict()` returns an `OrderedDict` with an extra attribute, `_metadata`: a version number
# for each module. `load_state_dict` hands it to each module so that a newer PyTorch can upgrade a
# file written by an older one (BatchNorm's `num_batches_tracked`, for example, arrived in its
# version 2). Building a new plain `dict` from a `state_dict` silently drops it.

# %%
state = model.state_dict()
print(type(state).__name__)
print(dict(state._metadata))
print("kept by a dict comprehension:", hasattr({k: v for k, v in state.items()}, "_metadata"))

# %% [markdown]
# ## Parameters and buffers
#
# Not everything in a `state_dict` is learned by gradient descent. A `BatchNorm1d` layer keeps
# *buffers*: the running mean and variance of its inputs, and a counter. They are not in
# `model.parameters()` (the optimizer never sees them) but they are in the `state_dict`, because
# `eval()` mode uses them: a model saved without them would predict differently.

# %%
from course_lib.display import show_table
from course_lib.explore import state_dict_rows

torch.manual_seed(0)
bn_model = nn.Sequential(nn.Linear(10, 20), nn.BatchNorm1d(20), nn.ReLU(), nn.Linear(20, 5))
show_table(state_dict_rows(bn_model))
print()
print(f"parameters(): {len(list(bn_model.parameters()))} tensors")
print(f"buffers():    {len(list(bn_model.buffers()))} tensors")
print(f"state_dict(): {len(bn_model.state_dict())} entries")

# %% [markdown]
# A forward pass in training mode updates the buffers, without any optimizer step:

# %%
before = bn_model.state_dict()["1.running_mean"].clone()
bn_model.train()
bn_model(torch.randn(64, 10))
print(
    "running_mean changed by one training-mode forward:",
    not torch.equal(before, bn_model.state_dict()["1.running_mean"]),
)
print("num_batches_tracked:", bn_model.state_dict()["1.num_batches_tracked"].item())

# %% [markdown]
# ## A `state_dict` is a view, not a copy
#
# The tensors in a `state_dict` share memory with the model. A "snapshot" taken with
# `state_dict()` changes when the model trains on. To keep a snapshot in memory (for example the
# best weights so far), copy it: `copy.deepcopy(model.state_dict())`.

# %%
import copy

view = model.state_dict()
snapshot = copy.deepcopy(model.state_dict())
with torch.no_grad():
    model[0].weight.add_(1.0)  # stands for an optimizer step
print("the view followed the model:    ", torch.equal(view["0.weight"], model[0].weight))
print("the deep copy kept the old value:", not torch.equal(snapshot["0.weight"], model[0].weight))
_ = model.load_state_dict(snapshot)  # undo the change


# %% [markdown]
# ## The layer summary in plain text
#
# `01_state_dict`'s panel shows an entry's shape, size and histogram; for one entry, the same
# summary in plain text:

# %%
from course_lib.explore import layer_summary, plot_layer_histogram

print(layer_summary(bn_model, "0.weight"))
print(layer_summary(bn_model, "1.running_var"))

# %% [markdown]
# A freshly initialised `Linear` layer draws its weights uniformly from
# $[-1/\sqrt{\text{in}}, 1/\sqrt{\text{in}}]$; the histogram shows it:

# %%
import matplotlib.pyplot as plt

plot_layer_histogram(bn_model, "0.weight")
plt.show()

# %% [markdown]
# ## A reloaded model computes what the saved one did

# %%
x = torch.randn(4, 10)
reloaded = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 5))
reloaded.load_state_dict(torch.load(workdir / "model_weights.pth"))
print("same outputs:", torch.equal(model(x), reloaded(x)))
# %% [markdown]
# This still works with PyTorch 2.6 and later, where `torch.load` defaults to `weights_only=True`:
# a `state_dict` holds only tensors in an ordered dictionary, which the safe loader accepts.
# (Chapter 6.3.2 shows what it refuses, and why.)
#
# ### Why `eval()`?
#
# Dropout and BatchNorm behave differently in training and in evaluation. Forget `eval()` and
# predictions become random (dropout) and depend on the batch (BatchNorm):

# %%
torch.manual_seed(0)
net = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Dropout(0.5), nn.Linear(20, 5))
x = torch.randn(4, 10)
net.train()
print("training mode, two calls agree:  ", torch.equal(net(x), net(x)))
net.eval()
print("evaluation mode, two calls agree:", torch.equal(net(x), net(x)))

# %% [markdown]
# ## Loading onto another device: `map_location`
#
# A saved tensor remembers the device it lived on, and `torch.load` puts it back there. A file saved
# on a GPU machine therefore asks for a GPU. Since you may not have one, `course_lib` can write a
# file exactly as a GPU machine would (its tensors tagged `cuda:0`):

# %%
from course_lib.device import save_as_if_on_gpu

gpu_file = workdir / "model_weights_from_gpu.pth"
save_as_if_on_gpu(model.state_dict(), gpu_file)
print("saved", gpu_file)

# %% [markdown]
# Without `map_location`, a CPU-only machine refuses such a file with a `RuntimeError` that names the
# fix; a machine with CUDA loads it onto `cuda:0`. The output of this cell depends on your machine
# (it is excluded from the notebook's output check):

# %% tags=["nbval-ignore-output"]
try:
    state = torch.load(gpu_file)
    print("loaded onto", {t.device for t in state.values()})
except RuntimeError as error:
    print("RuntimeError:", error)

# %% [markdown]
# The chapter's three ways, run here. Loading onto the CPU works everywhere:

# %%
# Load onto the CPU
model.load_state_dict(torch.load(gpu_file, map_location="cpu"))
print("devices:", {str(t.device) for t in torch.load(gpu_file, map_location="cpu").values()})

# %% [markdown]
# Loading onto a chosen GPU needs that GPU (on a CPU-only machine the same `RuntimeError` as above):

# %% tags=["nbval-ignore-output"]
# Load onto a chosen GPU
if torch.cuda.is_available():
    model.load_state_dict(torch.load(gpu_file, map_location="cuda:0"))
    print("loaded onto cuda:0")
else:
    print("no CUDA device here: map_location='cuda:0' would raise")

# %%
# Choose the device automatically
# (named `target`: `device` stays the course device that notebook.start chose, used below)
target = torch.device("cuda" if torch.cuda.is_available() else "cpu")
model.load_state_dict(torch.load(gpu_file, map_location=target))
model.to(target)
print("model is on the chosen device:", next(model.parameters()).device.type == target.type)

# %% [markdown]
# Two more forms of `map_location`: a dictionary that renames devices (here: whatever was on
# `cuda:0` goes to the CPU), and the fact that `load_state_dict` *copies* values into the model's
# existing tensors, so the model keeps its device whatever device the loaded tensors were on:

# %%
state = torch.load(gpu_file, map_location={"cuda:0": "cpu"})
print("renamed devices:", {str(t.device) for t in state.values()})
model.load_state_dict(state)  # CPU tensors into a model on `target`
print("model stayed on its device:", next(model.parameters()).device.type == target.type)

# %% [markdown]
# ## The course's loader: `safe_load`
#
# The rest of the course loads files through `course_lib.safe_io.safe_load`. It always uses
# `weights_only=True`, maps to the course's device unless told otherwise, and turns every bad file
# (missing, empty, truncated, not a PyTorch file, needing code to unpickle) into an error that names
# the file and the fix:

# %%
from course_lib.safe_io import CheckpointError, safe_load

state = safe_load(gpu_file)  # onto the course device
print("on the course device:", all(t.device.type == device.type for t in state.values()))

truncated = workdir / "truncated.pth"
truncated.write_bytes(gpu_file.read_bytes()[:1000])  # what an interrupted copy leaves behind
try:
    safe_load(truncated)
except CheckpointError as error:
    print(error)

# %% [markdown]
# ## Loading a model bigger than you would like to copy twice
#
# This belongs here, in 6.3.1, because it is the same recipe (build the model in code,
# `torch.load` the `state_dict`, `load_state_dict`) with three arguments changed. A whole pickled
# model (6.3.2) cannot use it: unpickling creates every tensor itself.
#
# The recipe above holds the weights twice at its peak: the constructor allocates and
# initialises one copy, `torch.load` reads a second, and `load_state_dict` copies the second into
# the first. For a 7-billion-parameter model in `bfloat16` that is 28 GB instead of 14 GB. Three
# tools avoid the second copy:
#
# - building the model on the `meta` device: tensors with a shape and no data, so the
#   constructor allocates nothing;
# - `torch.load(path, mmap=True)`: the file is memory-mapped, and tensors are views of it whose
#   pages are read when first used;
# - `load_state_dict(state, assign=True)`: the model *takes* the loaded tensors as its
#   parameters instead of copying them into its own.
#
# A model of a few hundred MB, made in code and saved both with `torch.save` and with
# `safetensors` (a format of raw tensors that chapter 6.3.2 returns to):

# %%
from safetensors.torch import save_file

from course_lib.big_models import wide_mlp

big = wide_mlp()  # 12 x Linear(2048, 2048)
big_file, big_safetensors = workdir / "big.pth", workdir / "big.safetensors"
torch.save(big.state_dict(), big_file)
save_file(big.state_dict(), big_safetensors)
print(f"{sum(p.numel() for p in big.parameters()):,} parameters")
print(f"{big_file.name}: {big_file.stat().st_size / 1e6:.0f} MB")
del big

# %% [markdown]
# The raw PyTorch calls. On `meta` a parameter has a shape and no data:

# %%
with torch.device("meta"):
    empty = wide_mlp()
print(empty[0].weight.device, tuple(empty[0].weight.shape))

# %%
state = torch.load(big_file, mmap=True, weights_only=True)  # views of the file, read on use
empty.load_state_dict(state, assign=True)  # the model takes these tensors: no copy
print("parameter is the loaded tensor:", empty[0].weight.data_ptr() == state["0.weight"].data_ptr())
print("still trainable:", empty[0].weight.requires_grad)

# %% [markdown]
# `safetensors.torch.load_file` maps its file the same way. The course's `load_big_model` does
# the three steps for either format (through `safe_load(..., mmap=True)` for a `torch.save` file)
# and checks that no tensor was left without data:

# %%
from course_lib.big_models import load_big_model

from_pth = load_big_model(wide_mlp, big_file)
from_safetensors = load_big_model(wide_mlp, big_safetensors)
x = torch.randn(2, 2048)
print("same outputs:", torch.equal(from_pth(x), from_safetensors(x)))
del empty, state, from_pth, from_safetensors

# %% [markdown]
# ### Measuring it
#
# What is measured: each load runs in a fresh Python process that has already imported `torch`.
# Its resident memory (RSS) at that point is the baseline; the figure is the peak RSS during the
# load (Linux's `VmHWM`, reset just before) minus that baseline, divided by the checkpoint's size.
# Each load ends by reading every weight once, as a forward pass would, so a lazy load is not
# flattered by pages it never touched. RSS counts memory the process allocated *and* pages of a
# memory-mapped file it touched; the last column says how much of the end state is such file
# pages (the kernel's page cache: shared, and dropped and re-read under memory pressure). This
# takes a few seconds (the processes run side by side, one per CPU core, each measuring only
# itself); the figures vary a little from run to run (this cell's output is not
# compared by the notebook check), and the verdict below them does not:

# %% tags=["nbval-ignore-output"]
from course_lib.display import show_table
from course_lib.load_memory import measure_loads, memory_rows, memory_verdict

results = measure_loads(big_file, big_safetensors)  # naive, mmap, meta + assign, ... each alone
show_table(memory_rows(results))

# %%
for line in memory_verdict(results):
    print(line)

# %% [markdown]
# Reading the verdict: the `naive` load holds two copies at its peak, and `mmap` alone does not
# help, because the model built normally already owns one copy and the mapped file becomes the
# second while it is copied in. Building on `meta` with `assign=True` is what removes the copy;
# `mmap` then makes that one copy the file's own pages, read as they are used (the file-pages
# column of the table). On a GPU, pass `map_location="cuda"` and the tensors go from the mapping
# straight to the device.
#
# The catch: a buffer registered with `persistent=False` is not in any file, so it stays on
# `meta`. The raw recipe then fails at the first forward pass; `load_big_model` refuses at once
# and names it (this cell **fails on purpose**):


# %% tags=["raises-exception"]
class Masked(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.register_buffer("mask", torch.ones(4), persistent=False)


torch.save(Masked().state_dict(), workdir / "masked.pth")
load_big_model(Masked, workdir / "masked.pth")

# %%
for path in (big_file, big_safetensors):
    path.unlink()  # 400 MB of scratch files
print("removed the big files")


# %% [markdown]
# ## Exercise
#
# Add a `BatchNorm1d` to the chapter's model, train it for a few steps, save its `state_dict`,
# load it into a fresh model and check that `eval()` predictions agree exactly. Try it in a new
# cell first; the solution ends with its check: `assert` lines that pass for any correct answer.
#
# <details><summary>Solution (click to open)</summary>
#
# ```python
# import torch
# import torch.nn as nn
#
#
# def make():
#     return nn.Sequential(nn.Linear(10, 20), nn.BatchNorm1d(20), nn.ReLU(), nn.Linear(20, 5))
#
#
# trained = make()
# optimizer = torch.optim.SGD(trained.parameters(), lr=0.1)
# for _ in range(5):  # training mode: the BatchNorm buffers move too
#     optimizer.zero_grad()
#     trained(torch.randn(32, 10)).square().mean().backward()
#     optimizer.step()
# torch.save(trained.state_dict(), workdir / "bn_weights.pth")
#
# fresh = make()
# fresh.load_state_dict(torch.load(workdir / "bn_weights.pth"))
# x = torch.randn(8, 10)
# # Check: identical in eval mode, because the running statistics came along with the weights
# assert torch.equal(trained.eval()(x), fresh.eval()(x))
# assert torch.equal(trained[1].running_var, fresh[1].running_var)
# print("exercise: checked")
# ```
# </details>
#
# ## Conclusion
#
# A `state_dict` carries buffers and `_metadata` as well as parameters, and it is a view of the
# model (copy it to keep a snapshot). `map_location` takes a device, a string or a renaming
# dictionary. For a model you would rather not hold twice, build it on `meta`, load with
# `mmap=True` and `load_state_dict(..., assign=True)`, and create the optimizer afterwards.
# Back to the core path: [`02_whole_model`](02_whole_model.ipynb).

# %% [markdown]
# ## Further reading
#
# - PyTorch tutorial: [Saving and loading models](https://pytorch.org/tutorials/beginner/saving_loading_models.html)
#   and [What is a `state_dict`?](https://pytorch.org/tutorials/recipes/recipes/what_is_state_dict.html)
# - PyTorch docs: [`torch.load`](https://pytorch.org/docs/stable/generated/torch.load.html)
#   (`map_location`, `weights_only`, `mmap`) and [Serialization semantics](https://pytorch.org/docs/stable/notes/serialization.html)
#   (the `weights_only` allowlist, `mmap`)
# - PyTorch docs: [`Module.load_state_dict`](https://pytorch.org/docs/stable/generated/torch.nn.Module.html#torch.nn.Module.load_state_dict)
#   (`strict`, `assign`) and the [meta device](https://pytorch.org/docs/stable/meta.html)
# - PyTorch tutorial: [Tips for loading an `nn.Module` from a checkpoint](https://pytorch.org/tutorials/recipes/recipes/module_load_state_dict_tips.html)
#   (`mmap`, `meta`, `assign`)
# - [safetensors documentation](https://huggingface.co/docs/safetensors/index) (the format, `load_file`, `safe_open`)
