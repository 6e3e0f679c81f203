# %% [markdown]
# # 6.3.4b Partial loading in depth
#
# *Deeper material.* Read `04_mismatched_state_dict` first; this notebook takes its topics further:
# the chapter's `load_partial_state_dict` and `rename_state_dict_keys` as written, a real transfer
# (pretrain, freeze the backbone, train the head), the half-loaded model that a failed
# `load_state_dict` leaves, regex renaming rules and collisions, and looking inside a checkpoint.

# %%
from course_lib import notebook

device, workdir = notebook.start("6.3.4b")

# %% [markdown]
# ## 1. A pretrained backbone
#
# We pretrain a small classifier in a few seconds: a *backbone* that turns an image into 32
# features, and a *head* that turns the features into scores for 10 classes. The data are
# synthetic 3×8×8 images from `course_lib.data`, whose class is a colour pattern plus noise.

# %%
import torch
import torch.nn.functional as F
from torch import nn

from course_lib.data import make_image_data


class Classifier(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Flatten(),
            nn.Linear(3 * 8 * 8, 64),
            nn.BatchNorm1d(64),
            nn.ReLU(),
            nn.Linear(64, 32),
            nn.ReLU(),
        )
        self.head = nn.Linear(32, num_classes)

    def forward(self, x):
        return self.head(self.backbone(x))


# %% [markdown]
# Two small helpers: a training loop (over the parameters that require gradients; a `frozen`
# part of the model is put back in `eval()` mode after `model.train()`, so that its BatchNorm
# layers keep their running statistics) and the accuracy on held-out images.


# %%
def train(model, x, y, epochs, frozen=None):
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=0.01)
    model.train()
    if frozen is not None:
        frozen.eval()  # a frozen part's BatchNorm keeps its running statistics (notebook 01)
    for _ in range(epochs):
        order = torch.randperm(len(x))
        for i in range(0, len(x), 64):
            batch = order[i : i + 64]
            optimizer.zero_grad()
            F.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()


@torch.no_grad()
def accuracy(model, x, y):
    model.eval()
    return round((model(x).argmax(dim=1) == y).float().mean().item(), 2)


# %% [markdown]
# Pretrain on the first 256 images, measure on the last 128, and save the `state_dict`:

# %%
images, labels = make_image_data(512, num_classes=10, image_size=8, seed=0).tensors
images, labels = images.to(device), labels.to(device)

pretrained = Classifier(num_classes=10).to(device)
train(pretrained, images[:256], labels[:256], epochs=5)
print("pretrained accuracy on held-out images:", accuracy(pretrained, images[384:], labels[384:]))
torch.save(pretrained.state_dict(), workdir / "pretrained_model.pth")

# %% [markdown]
# The new task has **2 classes** (is the original class below 5 or not?) and only 64 labelled
# images. The new model has the same backbone and a head with 2 outputs, so its `head.weight` is
# `[2, 32]` where the checkpoint's is `[10, 32]`.

# %%
new_labels = (labels >= 5).long()
torch.manual_seed(1)
model = Classifier(num_classes=2).to(device)
for key, value in model.state_dict().items():
    print(f"{key:28s} {list(value.shape)}")

# %% [markdown]
# ## 2. The chapter's partial loading, as written
#
# The chapter keeps the keys that exist in the model with the same shape and prints the rest
# (its messages are translated here).


# %%
def load_partial_state_dict(model, state_dict, strict=False):
    """
    Load a state_dict partially

    For transfer learning or a changed architecture
    """
    model_state = model.state_dict()

    # keep the matching keys
    pretrained_dict = {}
    for k, v in state_dict.items():
        if k in model_state:
            if v.shape == model_state[k].shape:
                pretrained_dict[k] = v
            else:
                print(f"Skipping {k}: shape mismatch {v.shape} vs {model_state[k].shape}")
        else:
            print(f"Skipping {k}: not in the model")

    # update the state_dict
    model_state.update(pretrained_dict)
    model.load_state_dict(model_state)

    print(f"Loaded {len(pretrained_dict)}/{len(state_dict)} parameters")


# usage
pretrained_state = torch.load(workdir / "pretrained_model.pth")
load_partial_state_dict(model, pretrained_state)

# %% [markdown]
# It works, and the printout is right. But a program cannot act on a printout: the function
# returns nothing, so a script that loaded 0 of 14 tensors after a renaming carries on training
# from random weights. Its `strict` argument is never used, keys the model has but the checkpoint
# lacks are not mentioned, and it says "parameters" for what are also buffers (BatchNorm's
# running statistics).
#
# ## 3. Partial loading with a report
#
# `course_lib.state_dict.load_partial_state_dict` keeps the chapter's name and signature and
# returns a `LoadReport`: which keys were loaded, and which were missing, unexpected or of the
# wrong shape (with both shapes). When it skips something it also logs a warning (the line on
# stderr below), so ignoring the report still leaves a trace.

# %%
from course_lib.state_dict import load_partial_state_dict

torch.manual_seed(1)
model = Classifier(num_classes=2).to(device)
report = load_partial_state_dict(model, pretrained_state)
print(report.table())

# %%
print(
    "loaded:", len(report.loaded), "| missing:", report.missing, "| unexpected:", report.unexpected
)
print("shape-mismatched:", report.shape_mismatched)
same = all(torch.equal(model.state_dict()[k], pretrained_state[k]) for k in report.loaded)
print("backbone (weights and BatchNorm buffers) equals the pretrained one:", same)

# %% [markdown]
# With `strict=True` it refuses instead, *before* touching the model, and the error carries the
# same report (`error.report`). This cell fails on purpose.

# %% tags=["raises-exception"]
fresh = Classifier(num_classes=2).to(device)
before = {k: v.clone() for k, v in fresh.state_dict().items()}
load_partial_state_dict(fresh, pretrained_state, strict=True)

# %%
print(
    "after the refused load, the model is unchanged:",
    all(torch.equal(before[k], v) for k, v in fresh.state_dict().items()),
)

# %% [markdown]
# Now the transfer: freeze the pretrained backbone and train only the new head on the 64 labelled
# images. For comparison, the same with a randomly initialised backbone. Freezing is two things:
# `requires_grad_(False)` stops the gradients, and `eval()` on the backbone (after `train()`'s
# `model.train()`) stops its BatchNorm from replacing the pretrained running statistics with
# those of the 64 new images; the last column checks it.

# %%
for name, backbone_state in [("pretrained", pretrained_state), ("random", None)]:
    torch.manual_seed(1)
    candidate = Classifier(num_classes=2).to(device)
    if backbone_state is not None:
        load_partial_state_dict(candidate, backbone_state)
    candidate.backbone.requires_grad_(False)
    stats = candidate.backbone[2].running_mean.clone()
    train(candidate, images[256:320], new_labels[256:320], epochs=5, frozen=candidate.backbone)
    kept = torch.equal(stats, candidate.backbone[2].running_mean)
    print(
        f"{name:10s} backbone: accuracy {accuracy(candidate, images[384:], new_labels[384:])}, "
        f"BatchNorm running_mean unchanged: {kept}"
    )

# %% [markdown]
# ## 4. What `load_state_dict(strict=False)` tolerates
#
# PyTorch's own loader has a `strict` flag. With `strict=False` it accepts **missing** and
# **unexpected** keys, and returns them:

# %%
backbone_only = {k: v for k, v in pretrained_state.items() if k.startswith("backbone.")}
backbone_only["old_head.weight"] = torch.zeros(3)
result = Classifier(num_classes=2).to(device).load_state_dict(backbone_only, strict=False)
print("missing:   ", result.missing_keys)
print("unexpected:", result.unexpected_keys)

# %% [markdown]
# It does **not** tolerate a **shape mismatch**, whatever `strict` says: loading the pretrained
# 10-class checkpoint into the 2-class model raises. This cell fails on purpose.

# %% tags=["raises-exception"]
victim = Classifier(num_classes=2).to(device)
victim.load_state_dict(pretrained_state, strict=False)

# %% [markdown]
# Worse, the failed call has already changed the model: PyTorch copies every tensor it can, then
# raises with the list of errors. The model is now half-loaded.

# %%
print(
    "after the error, victim's backbone equals the pretrained one:",
    all(torch.equal(victim.state_dict()[k], pretrained_state[k]) for k in report.loaded),
)

# %% [markdown]
# `load_partial_state_dict` checks everything first, and if copying fails midway (running out of
# memory, say) it puts back what it had already copied: the model is never left half-loaded.
#
# ## 5. Renaming keys: an old layout, a new one
#
# A refactoring moved `fc1` into an `encoder` and `fc2` into a `decoder`. The weights are the
# same; their names are not.


# %%
class OldModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(10, 20)
        self.fc2 = nn.Linear(20, 5)


class NewModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Module()
        self.encoder.fc1 = nn.Linear(10, 20)
        self.decoder = nn.Module()
        self.decoder.fc2 = nn.Linear(20, 5)


torch.save(OldModel().state_dict(), workdir / "old_model.pth")
print("old keys:", list(torch.load(workdir / "old_model.pth")))
print("new keys:", list(NewModel().state_dict()))

# %% [markdown]
# The chapter's renaming function, as written:


# %%
def rename_state_dict_keys(state_dict, key_mapping):
    """
    Rename the keys of a state_dict

    Args:
        state_dict: the original state_dict
        key_mapping: a dict {old_key: new_key}
    """
    new_state_dict = {}
    for k, v in state_dict.items():
        new_key = key_mapping.get(k, k)
        new_state_dict[new_key] = v
    return new_state_dict


# example: migrating an old model to a new one
key_mapping = {
    "fc1.weight": "encoder.fc1.weight",
    "fc1.bias": "encoder.fc1.bias",
    "fc2.weight": "decoder.fc2.weight",
    "fc2.bias": "decoder.fc2.bias",
}

model = NewModel()
old_state = torch.load(workdir / "old_model.pth")
new_state = rename_state_dict_keys(old_state, key_mapping)
print(model.load_state_dict(new_state))
print("the renamed state_dict kept _metadata:", hasattr(new_state, "_metadata"))

# %% [markdown]
# It loads. It lost `_metadata`, though: the per-module version numbers that `torch.save` stores
# beside the tensors and that some layers read when loading (BatchNorm uses them to handle
# checkpoints from before it had `num_batches_tracked`). And if two old keys map to one new name,
# the later silently overwrites the earlier.
#
# `course_lib.state_dict.rename_state_dict_keys` takes the same exact mapping, plus **prefix**
# rules (one line per module instead of one per tensor) and **regex** rules; it keeps
# `_metadata`, with module names renamed the same way:

# %%
from course_lib.state_dict import rename_state_dict_keys

new_state = rename_state_dict_keys(
    old_state, prefixes={"fc1.": "encoder.fc1.", "fc2.": "decoder.fc2."}
)
print(list(new_state))
print("_metadata modules:", list(new_state._metadata))
print(NewModel().load_state_dict(new_state))

# %% [markdown]
# A regex rule, here `fcN.` → `layers.N.`, uses `re.sub` syntax:

# %%
print(list(rename_state_dict_keys(old_state, patterns=[(r"^fc(\d+)\.", r"layers.\1.")])))

# %% [markdown]
# A mapping that sends two keys to one name is refused, naming both. This cell fails on purpose.

# %% tags=["raises-exception"]
rename_state_dict_keys(old_state, patterns=[(r"^fc\d\.", "fc.")])

# %% [markdown]
# ## 6. Looking inside a checkpoint without its model
#
# Before adapting a checkpoint you need to know what is in it. `inspect_checkpoint` reads a file
# (with `weights_only=True`, memory-mapped, on the CPU) and lists keys, shapes, dtypes and sizes;
# it also says whether every key carries a wrapper prefix such as `module.` (notebook
# `05_data_parallel`).

# %%
from course_lib.inspection import inspect_checkpoint

print(inspect_checkpoint(workdir / "pretrained_model.pth"))

# %% [markdown]
# ## Exercises
#
# The chapter's exercise 3, *load weights partially from a pretrained model* (its graded form is
# `exercises/ex3_partial_loading.ipynb`, checked by `./course check`):
#
# 1. Give `Classifier` a wider head (`nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 2))`),
#    load the pretrained checkpoint into it and read the report.
# 2. Rename the checkpoint's `backbone.*` keys to `features.*` with a prefix rule and load it into
#    a model that uses that name.
#
# <details><summary>Solutions (run them: the asserts check them)</summary>
#
# ```python
# import torch
# from torch import nn
# from course_lib.state_dict import load_partial_state_dict, rename_state_dict_keys
#
# class WideHead(Classifier):
#     def __init__(self) -> None:
#         super().__init__(num_classes=2)
#         self.head = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 2))
#
# wide = WideHead()
# report = load_partial_state_dict(wide, torch.load(workdir / "pretrained_model.pth", map_location="cpu"))
# print(report.table())
# assert all(k.startswith("backbone.") for k in report.loaded)  # the whole backbone, no head
# assert sorted(report.unexpected) == ["head.bias", "head.weight"]  # the old head has no place
#
# class Renamed(nn.Module):
#     def __init__(self) -> None:
#         super().__init__()
#         self.features = Classifier(num_classes=10).backbone
#         self.head = nn.Linear(32, 10)
#
#     def forward(self, x):
#         return self.head(self.features(x))
#
# renamed_state = rename_state_dict_keys(
#     torch.load(workdir / "pretrained_model.pth", map_location="cpu"),
#     prefixes={"backbone.": "features."},
# )
# renamed = Renamed()
# print(renamed.load_state_dict(renamed_state))  # strict: every key matched
# assert torch.equal(renamed.features[1].weight.cpu(), renamed_state["features.1.weight"].cpu())
# ```
#
# </details>
#
# ## Conclusion
#
# - Adapting a checkpoint is a normal part of transfer learning and refactoring; do it with a
#   function that tells you, in a form a program can check, what it loaded and what it skipped.
# - `load_state_dict(strict=False)` forgives missing and unexpected keys but never a shape
#   mismatch, and a failed load can leave the model half-loaded.
# - Rename keys with rules, keep `_metadata`, and refuse collisions.
# - `inspect_checkpoint` shows what a file holds before you build anything.
#
# Back to the core path: `05_data_parallel`, where every key suddenly starts with `module.`.

# %% [markdown]
# ## Further reading
#
# - PyTorch docs: [`Module.load_state_dict`](https://pytorch.org/docs/stable/generated/torch.nn.Module.html#torch.nn.Module.load_state_dict)
#   (`strict`, `assign`, the returned missing and unexpected keys)
# - PyTorch tutorial: [Warmstarting a model using parameters from a different model](https://pytorch.org/tutorials/recipes/recipes/warmstarting_model_using_parameters_from_a_different_model.html)
# - PyTorch tutorial: [Transfer learning for computer vision](https://pytorch.org/tutorials/beginner/transfer_learning_tutorial.html)
# - PyTorch docs: [Serialization semantics](https://pytorch.org/docs/stable/notes/serialization.html)
#   (what a `state_dict` holds, `_metadata` and versions)
