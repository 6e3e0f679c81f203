# %% [markdown]
# # 6.3.5 Saving and loading data-parallel models
#
# Training on several devices wraps the model, and the wrapper shows up in the checkpoint: every
# key of a `DataParallel` (or `DistributedDataParallel`) model's `state_dict` starts with
# `module.`. This notebook follows the chapter through that prefix, fixes the chapter's recipe,
# and then goes where the chapter points next: `DistributedDataParallel` with two processes, and
# *sharded* checkpoints that each process writes a part of.
#
# ## What you will learn
#
# - where the `module.` prefix comes from, and the two ways to deal with it;
# - why the chapter's loading snippet fails as written, and a one-call loader for every
#   combination of plain/wrapped checkpoint and plain/wrapped model;
# - to train with `DistributedDataParallel` (DDP) on 2 processes started from this notebook, save
#   from rank 0 behind a barrier, and load on every rank with the right `map_location`;
# - to save a sharded checkpoint with `torch.distributed.checkpoint` (DCP) from 2 processes, load
#   it in 1, and convert it to one ordinary file.
#
# ## Prerequisites
#
# `state_dict`s (`01_state_dict`), optimizers in checkpoints (`03_checkpoints`), and notebook
# `04_mismatched_state_dict`. No GPU needed: everything runs on the CPU (DDP with the `gloo`
# backend); on a machine with a GPU per process the same code uses `nccl`.

# %%
from course_lib import notebook

device, workdir = notebook.start("6.3.5")

# %% [markdown]
# ## 1. `DataParallel` and its `module.` prefix
#
# `nn.DataParallel` keeps your model as its attribute `.module`, so the names of all parameters
# gain a `module.` in front. (Without a GPU it simply calls the model: the code runs anywhere.)
# The chapter's code, as written:

# %%
import torch
from torch import nn

from course_lib.models import make_mlp

model = make_mlp().to(device)

# DataParallel adds the prefix 'module.' to every key
model = nn.DataParallel(model)
torch.save(model.module.state_dict(), workdir / "model.pth")  # note .module

# or save the whole state_dict and deal with the prefix when loading
torch.save(model.state_dict(), workdir / "model_dp.pth")

print("model.pth:   ", list(torch.load(workdir / "model.pth")))
print("model_dp.pth:", list(torch.load(workdir / "model_dp.pth")))

# %% [markdown]
# The chapter then strips the prefix when loading and loads the result into `model`, which is still
# the `DataParallel` wrapper and so *expects* the prefix. This cell fails on purpose.


# %% tags=["raises-exception"]
# remove the 'module.' prefix when loading
def remove_module_prefix(state_dict):
    """Remove DataParallel's 'module.' prefix"""
    new_state_dict = {}
    for k, v in state_dict.items():
        if k.startswith("module."):
            new_state_dict[k[7:]] = v  # drop the first 7 characters
        else:
            new_state_dict[k] = v
    return new_state_dict


state_dict = torch.load(workdir / "model_dp.pth")
state_dict = remove_module_prefix(state_dict)
model.load_state_dict(state_dict)

# %% [markdown]
# The stripped `state_dict` is meant for the *plain* model: load it into `model.module` (or into a
# new, unwrapped model), and keep the prefixed one for the wrapper.

# %%
print(model.module.load_state_dict(state_dict))
fresh = make_mlp().to(device)
print(fresh.load_state_dict(state_dict))

# %% [markdown]
# The chapter's function also drops `_metadata` (see `04_mismatched_state_dict`), and the same
# problem comes back with `torch.compile`, whose wrapper adds `_orig_mod.`, or with both wrappers
# (`module._orig_mod.`). `course_lib.state_dict.remove_module_prefix` strips `module.` and
# `_orig_mod.`, nested in any order, keeps `_metadata`, and strips a prefix only when **every**
# key carries it, as a wrapper's keys do. So a key that merely starts with the letters "module"
# (`module_norm.weight`, `modules_list.0.weight`) is never cut short, the danger of the `k[7:]`
# idiom wherever it is used without its check. `add_module_prefix` does the reverse.
#
# `load_state_dict_any_prefix` is the one call for every combination: it unwraps the model, strips
# whatever wrapper prefix the checkpoint has, and loads strictly (with a report, as in notebook 04).

# %%
from course_lib.state_dict import (
    add_module_prefix,
    load_state_dict_any_prefix,
    remove_module_prefix,
)

plain_state = torch.load(workdir / "model.pth")
dp_state = torch.load(workdir / "model_dp.pth")
print("stripped:", list(remove_module_prefix(dp_state)))
compiled_layout = add_module_prefix(add_module_prefix(plain_state, "_orig_mod."), "module.")
print("DataParallel(torch.compile(model)) keys:", list(compiled_layout)[:2], "...")
print("stripped:", list(remove_module_prefix(compiled_layout))[:2], "...")
print(
    "a key that only looks prefixed:",
    list(remove_module_prefix({"module_norm.weight": 0, "module.fc.weight": 1})),
)

for checkpoint_name, checkpoint in [
    ("plain", plain_state),
    ("module.", dp_state),
    ("module._orig_mod.", compiled_layout),
]:
    for model_name, wrap in [("plain model", lambda m: m), ("DataParallel", nn.DataParallel)]:
        report = load_state_dict_any_prefix(wrap(make_mlp().to(device)), checkpoint)
        print(f"{checkpoint_name:18s} checkpoint -> {model_name:12s}: {report.summary()}")

# %% [markdown]
# And to know which prefix a file carries before building anything:

# %%
from course_lib.state_dict import inspect_checkpoint

print(inspect_checkpoint(workdir / "model_dp.pth").summary())

# %% [markdown]
# ## 2. `DistributedDataParallel`: the recommended replacement
#
# PyTorch's documentation recommends `DistributedDataParallel` over `DataParallel`, even on a
# single machine:
#
# - `DataParallel` is one process with one thread per GPU: the threads fight over Python's GIL, the
#   model is copied to every GPU on every forward pass, and inputs and outputs are gathered on the
#   first GPU, which runs out of memory first. It cannot span machines.
# - DDP runs one **process** per device. Each process keeps its own copy of the model, sees its own
#   part of the data (`DistributedSampler`), and during `backward()` the gradients are averaged
#   across processes (an *all-reduce*, overlapped with the computation), so every copy takes the
#   same optimizer step. The same code runs on one machine or many.
#
# DDP keeps the model as `.module` too: its keys carry the same `module.` prefix.
#
# Processes, not threads, means each *rank* is a fresh Python interpreter that imports the code it
# runs. A function defined in this notebook does not exist there: `torch.multiprocessing.spawn`
# fails with it (and a multiprocessing `Pool` can hang). `course_lib.distributed.launch` checks
# this first. This cell fails on purpose.

# %% tags=["raises-exception"]
from course_lib.distributed import launch


def train_here(rank, world_size):
    return rank


launch(train_here, nprocs=2)

# %% [markdown]
# The rank function therefore lives in a module, `course_lib/distributed.py` (open it to read it).
# `launch` starts 2 processes, joins them in a process group (gloo on a free port of 127.0.0.1),
# calls the function in each with its `rank`, returns what each returned, always destroys the
# process group, and kills the ranks instead of hanging if one fails or the timeout passes.
# The function we run trains, then saves three ways:

# %%
from course_lib.distributed import ddp_train_and_save

print(ddp_train_and_save.__doc__)

# %% [markdown]
# One launch does all of it (most of its time goes into starting two Python processes that import
# PyTorch):

# %%
results = launch(ddp_train_and_save, nprocs=2, args=(str(workdir),), timeout=180)
for r in results:
    print(
        f"rank {r['rank']} on {r['device']}: saw {r['samples_seen']} samples, epoch losses {r['losses']}"
    )
    print(
        f"    ddp.state_dict() keys start like {r['first_key_ddp']!r}, get_state_dict's like {r['first_key_get_state_dict']!r}"
    )
    print(f"    loaded rank 0's file and found its own weights: {r['reloaded_equal']}")
    print(f"    its rows of the sharded table: {r['table_local_shape']}")
print("files in the DCP checkpoint:", results[0]["dcp_files"])

# %% [markdown]
# The two ranks report the same losses: they hold the same weights throughout, which is why only
# **rank 0 saves** (two processes writing one file would race). The **barrier** after the save
# makes every rank wait until the file is complete before reading it, and each rank loads it with
# `map_location` set to *its own* device (`cuda:<rank>` under NCCL), not the device it was saved
# from.
#
# ## 3. A sharded checkpoint, saved by 2 ranks, loaded by 1
#
# `torch.distributed.checkpoint` (DCP) writes one file per rank plus a `.metadata` file that
# records every tensor's global shape and which piece (*chunk*) of it each file holds. The model
# and optimizer tensors are replicated, so DCP lets each rank write some of them; the `table` was
# split by rows across the ranks, so each rank wrote its own half: two chunks.

# %%
from course_lib.display import format_table

info = inspect_checkpoint(workdir / "dcp")
print(info.summary())
print(
    format_table(
        [r for r in info.rows if not r["key"].startswith("optim.param_groups")],
        ["key", "shape", "dtype", "chunks"],
    )
)

# %% [markdown]
# Loading needs a `state_dict` of the right structure to fill in place. `get_state_dict` gives it
# for model and optimizer (without the `module.` prefix, and with the optimizer state keyed by
# parameter *names* rather than numbers), `dcp.load` fills it from the files of both ranks, and
# `set_state_dict` puts it into the model and optimizer. Here in this one process, without any
# process group:

# %%
import warnings

import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from course_lib.safe_io import safe_load

# DCP warns that there is no process group; here that is the point.
warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process")

model = make_mlp().to(device)
optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
model_sd, optim_sd = get_state_dict(model, optimizer)
to_fill = {"model": model_sd, "optim": optim_sd, "table": torch.zeros(8, 6, device=device)}
dcp.load(to_fill, checkpoint_id=workdir / "dcp", no_dist=True)
set_state_dict(
    model, optimizer, model_state_dict=to_fill["model"], optim_state_dict=to_fill["optim"]
)

saved_by_rank0 = safe_load(workdir / "ddp_model.pth", map_location=device)
print(
    "parameters equal to the DDP model's:",
    all(torch.equal(saved_by_rank0[k], v) for k, v in model.state_dict().items()),
)
print("optimizer steps restored:", int(optimizer.state_dict()["state"][0]["step"].item()))
print("the table, both ranks' rows reassembled:")
print(to_fill["table"].cpu())

# %% [markdown]
# To hand a DCP checkpoint to someone who uses plain `torch.load`, convert it into one ordinary
# file with `dcp_to_torch_save` (the reverse is `torch_save_to_dcp`):

# %%
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

dcp_to_torch_save(workdir / "dcp", workdir / "full_checkpoint.pth")
full = safe_load(workdir / "full_checkpoint.pth", map_location=device)
print("entries:", list(full))
plain = make_mlp().to(device)
print(plain.load_state_dict(full["model"]))
print(
    "parameters equal:",
    all(torch.equal(saved_by_rank0[k], v) for k, v in plain.state_dict().items()),
)

# %% [markdown]
# ## Exercises
#
# - Load the sharded checkpoint on **2 ranks**, the table split by *columns* this time (a
#   different sharding from the one it was saved with): read `dcp_load_on_ranks` in
#   `course_lib/distributed.py`, then run
#   `launch(dcp_load_on_ranks, nprocs=2, args=(str(workdir),))`.
# - Write your own rank function in a `.py` file next to this notebook, import it, and launch it.
#   What does `launch` report when your function raises on rank 1 only?
#
# ## Conclusion
#
# - A wrapper's prefix (`module.` for DataParallel and DDP, `_orig_mod.` for `torch.compile`) is
#   part of every key. Save `model.module.state_dict()`, or strip the prefix when loading, and load
#   into the *plain* model; `load_state_dict_any_prefix` handles every combination.
# - Prefer `DistributedDataParallel` to `DataParallel`. Its ranks are processes, so their code must
#   be importable; rank 0 saves, a barrier keeps the others from reading early, and every rank
#   loads with its own `map_location`.
# - `torch.distributed.checkpoint` writes a checkpoint in pieces, from every rank at once, and
#   reads it back on any number of ranks, or in one process, or converts it to one ordinary file.
#
# Next: `06_torchscript`, exporting a model so that it runs without its Python code.
