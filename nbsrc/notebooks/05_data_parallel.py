# %% [markdown]
# # 6.3.5 Saving and loading data-parallel models
#
# Training on several devices wraps the model, and every key of a `DataParallel` (or
# `DistributedDataParallel`) model's `state_dict` starts with `module.`. No GPU needed:
# `DataParallel` without one simply calls the model. Deeper:
# [`05b_torchrun_elastic`](05b_torchrun_elastic.ipynb) (why DDP, every prefix combination, a job
# that survives a killed worker, two nodes, sharded checkpoints resharded). The chapter's code:

# %%
import os

import torch
from torch import nn

from course_lib import distributed, notebook, prefixes
from course_lib.models import make_mlp

device, workdir = notebook.start("6.3.5")
model = make_mlp().to(device)

# DataParallel adds the prefix 'module.' to every key
model = nn.DataParallel(model)
torch.save(model.module.state_dict(), workdir / "model.pth")  # note .module

# or save the whole state_dict and deal with the prefix when loading
torch.save(model.state_dict(), workdir / "model_dp.pth")
print("model_dp.pth:", list(torch.load(workdir / "model_dp.pth")))

# %% [markdown]
# The chapter then strips the prefix (its function, its `if`/`else` in one line) and loads the
# result into `model`, still the `DataParallel` wrapper that *expects* it. **Fails on purpose**:


# %% tags=["raises-exception"]
def remove_module_prefix(state_dict):
    new_state_dict = {}
    for k, v in state_dict.items():
        new_state_dict[k[7:] if k.startswith("module.") else k] = v
    return new_state_dict


state_dict = remove_module_prefix(torch.load(workdir / "model_dp.pth"))
model.load_state_dict(state_dict)

# %% [markdown]
# The stripped `state_dict` is for the *plain* model: load it into `model.module`.
# `torch.compile` adds `_orig_mod.`. The course's `load_state_dict_any_prefix` strips any wrapper
# prefix (only when *every* key has it) and loads into a plain or wrapped model:

# %%
print(model.module.load_state_dict(state_dict))
compiled = torch.compile(make_mlp().to(device))
print("torch.compile keys:", list(compiled.state_dict())[:2])
print(prefixes.load_state_dict_any_prefix(model, compiled.state_dict()).summary())

# %% [markdown]
# ## `DistributedDataParallel`
#
# PyTorch recommends DDP over `DataParallel`: one **process** per device (not one thread, held
# back by the GIL), gradients averaged in `backward()`. A minimal script: rank 0 alone saves (two
# writers would race), a barrier holds the others until the file exists, then each rank writes
# its part of a `dcp.save` checkpoint (for models split across ranks, see 05b):

# %%
SCRIPT = """
import sys

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.nn.parallel import DistributedDataParallel as DDP

from course_lib.models import make_mlp

out = sys.argv[1]
dist.init_process_group("gloo")  # torchrun set RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT
model = DDP(make_mlp())  # rank 0's initial weights are broadcast to every rank
model(torch.randn(8, 10)).square().mean().backward()  # own batch; gradients averaged
torch.optim.SGD(model.parameters(), lr=0.1).step()  # so every rank takes the same step
if dist.get_rank() == 0:
    torch.save(model.module.state_dict(), f"{out}/final.pth")  # one writer, no prefix
dist.barrier()  # the others wait until final.pth is written
dcp.save({"model": model.state_dict()}, checkpoint_id=f"{out}/dcp")  # each rank writes its part
del model  # DDP holds the group: left alive, it can abort the worker at exit (SIGABRT)
dist.destroy_process_group()
"""
_ = (workdir / "ddp_minimal.py").write_text(SCRIPT)
os.environ["PYTHONPATH"] = str(workdir)  # where the workers import ddp_minimal from
distributed.run_torchrun("ddp_minimal", [str(workdir)], nproc_per_node=2, timeout=120)
print("dcp files:", sorted(p.name for p in (workdir / "dcp").iterdir()))
print(make_mlp().to(device).load_state_dict(torch.load(workdir / "final.pth", map_location=device)))

# %% [markdown]
# `run_torchrun` runs `torchrun --standalone --nproc-per-node=2 -m ddp_minimal ...` with a
# deadline and names a failed rank.
# The `dcp/` folder's `.metadata` is a **pickle**, which `dcp.load` unpickles without
# restriction: load a DCP folder from elsewhere with the course's
# `course_lib.distributed.load_dcp`, which reads it from an allow-list (05b).
#
# ## Exercise
#
# Load `model_dp.pth` (with the prefix) into a fresh, unwrapped `make_mlp()` using only PyTorch:
# `torch.nn.modules.utils.consume_prefix_in_state_dict_if_present` strips a prefix in place.
#
# <details><summary>Solution (click to open)</summary>
#
# ```python
# state = torch.load(workdir / "model_dp.pth")
# torch.nn.modules.utils.consume_prefix_in_state_dict_if_present(state, "module.")
# print(make_mlp().load_state_dict(state))
# ```
# </details>
#
# ## Conclusion
#
# A wrapper's prefix (`module.`, `_orig_mod.`) is part of every key: save
# `model.module.state_dict()`, or strip the prefix and load into the plain model. Prefer DDP,
# launched with `torchrun`; rank 0 saves. Next: [`06_torchscript`](06_torchscript.ipynb).
#
# ## Further reading
#
# - PyTorch tutorial: [Getting started with DDP](https://pytorch.org/tutorials/intermediate/ddp_tutorial.html)
#   and the recipe [Getting started with DCP](https://pytorch.org/tutorials/recipes/distributed_checkpoint_recipe.html)
