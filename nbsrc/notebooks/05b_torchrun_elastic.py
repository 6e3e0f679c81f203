# %% [markdown]
# # 6.3.5 in depth: prefixes, torchrun, elastic restarts, resharding, two nodes
#
# *Deeper material.* Read [`05_data_parallel`](05_data_parallel.ipynb) first (the `module.`
# prefix, DDP and its minimal script); nothing on the core path depends on this notebook. Here a
# real multi-machine job's tools: every prefix combination, `torchrun` running the course's
# `elastic_job.py` with sharded checkpoints (`torch.distributed.checkpoint`, DCP), a worker
# killed and the job restarted to the same bits, two torchrun "nodes", and resharding.
#
# **Run time**: about a minute on 2 CPU cores. Sections 2, 3 and 5 each start a real torchrun
# job, and every worker is a new Python process that imports PyTorch (several seconds each); the
# heavier runs (faults, resharding on 3 ranks, the asynchronous save) live in the tests and in
# `benchmarks/bench_distributed.py`.

# %%
from course_lib import notebook

device, workdir = notebook.start("6.3.5b")

# %% [markdown]
# ## 1. Every prefix combination
#
# Two files as the chapter writes them: without the prefix (`model.module.state_dict()`) and
# with it (the wrapper's `state_dict()`).

# %%
import torch
from torch import nn

from course_lib.models import make_mlp

model = nn.DataParallel(make_mlp().to(device))
torch.save(model.module.state_dict(), workdir / "model.pth")
torch.save(model.state_dict(), workdir / "model_dp.pth")

# %% [markdown]
# The chapter's function also drops `_metadata` (see `04_mismatched_state_dict`), and the same
# problem comes back with `torch.compile`, whose wrapper adds `_orig_mod.`, or with both wrappers
# (`module._orig_mod.`). `course_lib.prefixes.remove_module_prefix` strips `module.` and
# `_orig_mod.`, nested in any order, keeps `_metadata`, and strips a prefix only when **every**
# key carries it, as a wrapper's keys do. So a key that merely starts with the letters "module"
# (`module_norm.weight`, `modules_list.0.weight`) is never cut short, the danger of the `k[7:]`
# idiom wherever it is used without its check. `add_module_prefix` does the reverse.
#
# `load_state_dict_any_prefix` is the one call for every combination: it unwraps the model, strips
# whatever wrapper prefix the checkpoint has, and loads strictly (with a report, as in notebook 04).

# %%
from course_lib.prefixes import (
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
from course_lib.inspection import inspect_checkpoint

print(inspect_checkpoint(workdir / "model_dp.pth").summary())

# %% [markdown]
# ## 2. A real job under `torchrun`
#
# Why DDP rather than `DataParallel`, in full: `DataParallel` is one process with a thread per
# GPU (they contend for Python's GIL), copies the model to every GPU on every forward pass,
# gathers the outputs on the first GPU, and cannot span machines. DDP runs one **process** per
# device; `backward()` averages the gradients across them, so every copy takes the same step.
#
# `05_data_parallel` ran a minimal DDP script with `torchrun`
# (`python -m torch.distributed.run`), PyTorch's launcher: it starts one fresh Python process per
# rank, tells each its *rank*, and lets them find each other (the *rendezvous*). Here the job is
# `course_lib/distributed/elastic_job.py` (open it beside this notebook). It trains the chapter's
# MLP with DDP for 12 steps, writes a sharded checkpoint every 4 steps, and at the end rank 0
# saves `ddp.module.state_dict()` (no prefix) as `final.pth` while the others wait at a barrier.
#
# The command, exactly as you could type it in a terminal:

# %%
import sys

from course_lib.distributed import torchrun_command

job = "course_lib.distributed.elastic_job"
straight_args = ["--workdir", str(workdir / "straight"), "--steps", "12", "--save-every", "4"]
print(
    " ".join(torchrun_command(job, straight_args, nproc_per_node=2)).replace(
        sys.executable, "python"
    )
)

# %% [markdown]
# `--standalone` runs the rendezvous on this machine; `--nproc-per-node=2` starts two workers and
# gives them `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR` and `MASTER_PORT` in their
# environment, which is all `init_process_group()` needs. From a notebook, `run_torchrun` starts
# that command as a subprocess, waits with a deadline, kills torchrun's whole process group when
# it ends (no worker is left behind, even if this kernel dies), and turns a failure into an error
# that names the rank and what it did. It shows the job's own `[job]` lines, printed by rank 0,
# rather than torchrun's logs:

# %%
from course_lib.distributed import run_torchrun

straight = run_torchrun(job, straight_args, nproc_per_node=2, timeout=180, echo=True)
print(f"torchrun ran for {straight.seconds:.1f} s")

# %% [markdown]
# Only **rank 0 saves** `final.pth` (every rank holds the same weights; two processes writing one
# file would race), and the **barrier** after it keeps the others from reading it too early. Load
# it with `map_location` set to *your* device (under NCCL, rank *r* would use `cuda:r`), into a
# plain model: the job saved `ddp.module.state_dict()`, without the prefix.

# %%
from course_lib.safe_io import safe_load

final_straight = safe_load(workdir / "straight" / "final.pth", map_location=device)
print(list(final_straight))
print(make_mlp().to(device).load_state_dict(final_straight))

# %% [markdown]
# ## 3. A worker dies, the job carries on
#
# Checkpoints exist for this moment. `--fault kill:1:10` makes rank 1 send itself `SIGKILL` at the
# start of step 10, as the kernel's out-of-memory killer or a lost machine would: no exception,
# no cleanup. With `--max-restarts=3` torchrun then stops the surviving worker, starts both again
# (`TORCHELASTIC_RESTART_COUNT` tells them which attempt this is), and the job loads the newest
# complete checkpoint, step 8, and trains steps 9 to 12 again.

# %%
killed_args = ["--workdir", str(workdir / "killed"), "--steps", "12", "--save-every", "4"]
killed = run_torchrun(
    job,
    killed_args + ["--fault", "kill:1:10"],
    nproc_per_node=2,
    max_restarts=3,
    timeout=240,
    echo=True,
)

# %% [markdown]
# Was anything lost? Compare the final weights of both runs, bit for bit, and draw each run's
# loss per step (the log `losses.jsonl` gets a line per step from rank 0, tagged with the attempt).

# %%
import matplotlib.pyplot as plt

from course_lib.distributed.loss_curves import plot_elastic_losses, read_losses

final_killed = safe_load(workdir / "killed" / "final.pth", map_location=device)
print(
    "final weights bitwise equal:",
    all(torch.equal(final_straight[k], final_killed[k]) for k in final_straight),
)
straight_log, killed_log = read_losses(workdir / "straight"), read_losses(workdir / "killed")
print("restarts torchrun made:", max(r.attempt for r in killed_log))
print("steps computed twice:", [r.step for r in killed_log if r.attempt > 0 and r.step <= 10])
plot_elastic_losses(straight_log, killed_log)
plt.show()

# %% [markdown]
# %% [markdown]
# The curves lie on top of each other, and steps 9 and 10, computed before and after the restart,
# have the same loss: the resumed job did exactly what the first attempt did. That takes more than
# model and optimizer. The job also makes:
#
# - **the data order** a function of the seed and the epoch (as `DistributedSampler.set_epoch`
#   does), so a resumed job knows which batch step 9 was without any loader state;
# - **each rank's RNG state** part of the checkpoint, under a key of its own (`rng.rank0`,
#   `rng.rank1`): the job adds random noise to its inputs, different on every rank;
# - **the thread count** the same in every run (`OMP_NUM_THREADS=1`): the order in which a matrix
#   product adds up its terms depends on it, and floating-point addition is not associative.
#
# One more detail, a precaution rather than a rule: the job's `init_process_group_for_attempt`
# gives every attempt its own key prefix in the key-value store. Under torchrun a plain
# `init_process_group()` does not need it: PyTorch makes a new store for every restart ("We
# create a new TCPStore for every retry so no need to add prefix for each attempt", says 2.13's
# `torch/distributed/rendezvous.py`), and the `c10d` rendezvous prefixes its own keys with the
# round. The prefix matters only where one store outlives the attempts (a store a job keeps
# itself at a fixed address): there, new workers could read the dead workers' addresses.
#
# ## 4. A checkpoint appears all at once
#
# A worker can die in the middle of a save, leaving some ranks' shards written and others not.
# The job's `save_step` (in `course_lib/distributed/step_checkpoints.py`) has every rank write
# into `step_000008.incomplete/`, waits at a barrier until all have, and only then rank 0 renames
# the folder to `step_000008/`: one rename, atomic on a POSIX file system. A folder without the
# suffix is complete:

# %%
checkpoints = workdir / "killed" / "checkpoints"
print(sorted(p.name for p in checkpoints.iterdir()))
print(sorted(p.name for p in (checkpoints / "step_000012").iterdir()))

# %% [markdown]
# A complete-looking folder can still be damaged later (a full disk during a copy, a lost file).
# Before resuming, the job checks the newest folder against its `.metadata`, which records which
# bytes of which file hold every tensor. Here a copy with rank 1's shard of step 12 cut in half:
# the check refuses it (this cell fails on purpose) ...

# %% tags=["raises-exception"]
import shutil

from course_lib.distributed import check_step_folder, newest_complete_step

damaged = workdir / "damaged"
shutil.copytree(checkpoints, damaged)
shard = damaged / "step_000012" / "__1_0.distcp"
with shard.open("r+b") as f:
    f.truncate(shard.stat().st_size // 2)
check_step_folder(damaged / "step_000012")

# %% [markdown]
# ... and a restarted job would fall back to the previous complete step (the tests run exactly
# that: a worker truncates its shard, kills itself, and the job still ends with the same bits):

# %%
choice = newest_complete_step(damaged)
print("resume from step", choice.step)
print("refused:", choice.refused)
# %% [markdown]
# ## 5. Two nodes on one machine
#
# On a cluster you start torchrun once per machine (*node*), and the nodes meet at a rendezvous
# endpoint. Here are two "nodes" of one worker each, both on this machine, meeting through the
# `c10d` rendezvous on 127.0.0.1. Every node runs the same command:

# %%
two_node_args = ["--workdir", str(workdir / "two_nodes"), "--steps", "12", "--save-every", "4"]
command = torchrun_command(
    job,
    two_node_args,
    nproc_per_node=1,
    nnodes=2,
    rdzv_endpoint="127.0.0.1:29500",
    rdzv_id="course",
)
print(" ".join(command).replace(sys.executable, "python"))

# %% [markdown]
# `run_torchrun(..., nnodes=2)` starts it twice (on a free port rather than 29500, which another
# job on this machine may hold). Two nodes of one worker make the same world of 2 ranks as before,
# so the result must be the same, to the bit:

# %%
two_nodes = run_torchrun(job, two_node_args, nproc_per_node=1, nnodes=2, timeout=180, echo=True)
final_two = safe_load(workdir / "two_nodes" / "final.pth", map_location=device)
print(
    "bitwise equal to the single-node run:",
    all(torch.equal(final_straight[k], final_two[k]) for k in final_straight),
)

# %% [markdown]
# On a real cluster, what changes in that command:
#
# - `--rdzv-endpoint=HOST:29500`: a host that every node can reach (usually node 0's name), and a
#   free port on it; `--rdzv-id`: unique per job (e.g. `$SLURM_JOB_ID`), so that two jobs never
#   meet by mistake. `--node-rank` is not needed: with `c10d` torchrun ignores it and numbers the
#   nodes itself (only the static rendezvous, `--master-addr`/`--master-port`, uses it).
# - `--nnodes=2` becomes the number of machines, or `MIN:MAX` (`--nnodes=2:4`) for a job that goes
#   on with fewer nodes after losing one; `--nproc-per-node` becomes the number of GPUs per machine
#   (`gpu`), and `--max-restarts` how many failures the job survives.
# - The backend: `choose_backend` in the job picks **NCCL** when every rank on the *machine* has
#   its own GPU (`torch.cuda.device_count()` at least the ranks of every node started there, which
#   `run_torchrun` passes on), and `gloo` otherwise, as here: two one-rank "nodes" on a one-GPU
#   machine would share cuda:0, which NCCL refuses. Each rank then calls
#   `torch.cuda.set_device(device_index_on_host())` and loads with `map_location` to that device.
#   If the machines have several network interfaces, `NCCL_SOCKET_IFNAME` (or
#   `GLOO_SOCKET_IFNAME`) names the one to use.
# - The checkpoint folder must be on storage that every node sees (a shared file system): each rank
#   writes its own shard into the same step folder.
#
# ## 6. Resharding: saved by 2 ranks, loaded by 1, by 3, or as one file
#
# DCP wrote one file per rank plus a `.metadata` file that records every tensor's global shape and
# which piece (*chunk*) of it each file holds. The model and optimizer are replicated (each rank
# has all of them; DCP lets each rank write some), while `table` was split by rows across the
# ranks, so each rank wrote its own half: two chunks. (DDP replicates the model; the table stands
# for what FSDP or tensor parallelism would split.)

# %%
from course_lib.display import format_table

step12 = workdir / "straight" / "checkpoints" / "step_000012"
info = inspect_checkpoint(step12)  # reads .metadata with the safe reader below
print(info.summary())
print(
    format_table(
        [r for r in info.rows if r["key"].startswith(("model.", "table", "rng"))],
        ["key", "shape", "dtype", "chunks"],
    )
)

# %% [markdown]
# **`.metadata` is a pickle.** DCP's own reader opens it with plain `pickle.load`, and its default
# load planner reads non-tensor entries (the optimizer's `lr`) with `torch.load(weights_only=False)`:
# a DCP folder from someone else can run code the moment it is loaded. The course reads every DCP
# folder through `course_lib.distributed.safe_dcp`: `.metadata` is unpickled from an allow-list
# (DCP's own metadata classes, `torch.Size`, dtypes), then checked (shapes, dtypes, every shard a
# regular file inside the folder, byte ranges inside the files), and non-tensor entries load with
# `weights_only=True`. `inspect_checkpoint` and `check_step_folder` above read it that way:

# %%
from course_lib.distributed import read_dcp_metadata

entries = read_dcp_metadata(step12).state_dict_metadata
print(len(entries), "entries described, read without running any code from the file")

# %% [markdown]
# Loading needs a `state_dict` of the right structure to fill in place. `get_state_dict` gives it
# for model and optimizer (without the `module.` prefix, and with the optimizer state keyed by
# parameter *names* rather than numbers), `load_dcp` (DCP's `dcp.load(state, checkpoint_id=...)`
# with the safe reader and planner above) fills it from the files of both ranks, and
# `set_state_dict` puts it into the model and optimizer. Here in this one process, without any
# process group (the two RNG states belong to ranks that no longer exist: not loaded):

# %%
import warnings

from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from course_lib.distributed import load_dcp

# DCP warns that there is no process group; here that is the point.
warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process")

model = make_mlp().to(device)
optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
model_sd, optim_sd = get_state_dict(model, optimizer)
to_fill = {"model": model_sd, "optim": optim_sd, "table": torch.zeros(8, 6, device=device)}
load_dcp(to_fill, step12)
set_state_dict(
    model, optimizer, model_state_dict=to_fill["model"], optim_state_dict=to_fill["optim"]
)
print(
    "parameters equal to final.pth:",
    all(torch.equal(final_straight[k], v) for k, v in model.state_dict().items()),
)
print("optimizer steps restored:", int(optimizer.state_dict()["state"][0]["step"].item()))
print("the table, both ranks' rows reassembled:")
print(to_fill["table"].cpu())

# %% [markdown]
# On 3 ranks, each reads the rows it now owns (3, 3 and 2 of the 8): that is
# `course_lib/distributed/reshard_job.py`, run by the tests and in the exercises below. To hand a
# DCP checkpoint to someone who uses plain `torch.load`, convert it into one ordinary file with
# `dcp_to_torch_save`: the course's version of DCP's `format_utils.dcp_to_torch_save` (which would
# unpickle `.metadata` and the non-tensor entries without restriction; the reverse is
# `torch_save_to_dcp`):

# %%
from course_lib.distributed import dcp_to_torch_save

dcp_to_torch_save(step12, workdir / "full_checkpoint.pth")
full = safe_load(workdir / "full_checkpoint.pth", map_location=device)
print("entries:", list(full), "| rng:", list(full["rng"]))
plain = make_mlp().to(device)
print(plain.load_state_dict(full["model"]))
print(
    "parameters equal:",
    all(torch.equal(final_straight[k], v) for k, v in plain.state_dict().items()),
)

# %% [markdown]
# DCP can also save in the background: `dcp.async_save` returns as soon as the state is copied to
# CPU memory and writes the files while training goes on. `benchmarks/bench_distributed.py`
# measures how long a training step is blocked by it, against `dcp.save`, under torchrun.
#
# ## Exercises
#
# - Load the checkpoint on **3 ranks**: run `run_torchrun("course_lib.distributed.reshard_job",
#   ["--checkpoint", str(step12), "--expect", str(workdir / "straight" / "final.pth"), "--report",
#   str(workdir / "reshard.json")], nproc_per_node=3, echo=True)` and read how many rows of the
#   table each rank got.
# - Kill rank 0 instead of rank 1, at step 4 (`--fault kill:0:4`): which step does the job resume
#   from, and why? Then try `--fault raise:1:6` with `max_restarts=0`: what does the error say?
# - Run the killed job again with `"--fault", "kill:1:10:*"` (every attempt) and `max_restarts=1`.
#   Which checkpoints are left, and are they intact (`check_step_folder`)?
#
# <details><summary>Solutions (each ends in a check that passes; about a minute of torchrun)</summary>
#
# ```python
# import json
#
# from course_lib.distributed import TorchrunError, check_step_folder
#
# # 1. Three ranks share the table's 8 rows as 3, 3 and 2; every rank gets the whole model.
# run_torchrun("course_lib.distributed.reshard_job",
#              ["--checkpoint", str(step12), "--expect", str(workdir / "straight" / "final.pth"),
#               "--report", str(workdir / "reshard.json")], nproc_per_node=3, echo=True)
# report = json.loads((workdir / "reshard.json").read_text())
# assert [r["table_rows"] for r in report["ranks"]] == [3, 3, 2]
# assert all(r["model_equal"] and r["table_equal"] for r in report["ranks"])
#
# # 2. Killed at step 4, the job resumes from step 4: the checkpoint of steps 1-4 was complete
# #    before step 5 began (which rank dies does not matter). A raise with no restart budget is
# #    a TorchrunError naming rank 1 and its exception.
# rank0 = run_torchrun(job, ["--workdir", str(workdir / "kill0"), "--steps", "8",
#                            "--save-every", "4", "--fault", "kill:0:4"],
#                      nproc_per_node=2, max_restarts=3, timeout=240, echo=True)
# assert any("resumed from step 4" in line for line in rank0.job_lines())
# try:
#     run_torchrun(job, ["--workdir", str(workdir / "raise1"), "--steps", "8",
#                        "--save-every", "4", "--fault", "raise:1:6"], nproc_per_node=2)
# except TorchrunError as error:
#     print(error)
#     assert "rank 1" in str(error)
#
# # 3. Killed on every attempt, the budget runs out: a final error, and the steps saved
# #    before the kill are still there and intact.
# try:
#     run_torchrun(job, ["--workdir", str(workdir / "always"), "--steps", "12",
#                        "--save-every", "4", "--fault", "kill:1:10:*"],
#                  nproc_per_node=2, max_restarts=1, timeout=240)
# except TorchrunError as error:
#     print(error)
# left = sorted((workdir / "always" / "checkpoints").glob("step_*"))
# print([p.name for p in left])
# for folder in left:
#     check_step_folder(folder)  # raises IncompleteStepError if a shard is missing or short
# assert [p.name for p in left][-1] == "step_000008"
# ```
#
# </details>
#
# ## Conclusion
#
# - A wrapper's prefix (`module.` for DataParallel and DDP, `_orig_mod.` for `torch.compile`) is
#   part of every key. Save `model.module.state_dict()`, or strip the prefix when loading, and load
#   into the *plain* model; `load_state_dict_any_prefix` handles every combination.
# - Prefer `DistributedDataParallel` to `DataParallel`, and launch it with `torchrun`: one command
#   for one machine or many (`--standalone`, or `--nnodes` with a `c10d` rendezvous endpoint).
#   Rank 0 saves, a barrier keeps the others from reading early, every rank loads with its own
#   `map_location`.
# - `torch.distributed.checkpoint` writes a checkpoint in pieces from every rank at once; make a
#   step visible only when all pieces are there, and check it before trusting it. With the data
#   order, the RNG state of every rank and the optimizer in it, `--max-restarts` turns a dead worker
#   into a pause, not a different result.
# - A DCP checkpoint loads on any number of ranks, in one process, or converts to one ordinary file.
#
# Back to the core path: [`06_torchscript`](06_torchscript.ipynb).
#
# ## Further reading
#
# - PyTorch docs: [torchrun (Elastic Launch)](https://pytorch.org/docs/stable/elastic/run.html)
#   and [error propagation with `@record`](https://pytorch.org/docs/stable/elastic/errors.html)
# - PyTorch tutorial: [Fault-tolerant distributed training with torchrun](https://pytorch.org/tutorials/beginner/ddp_series_fault_tolerance.html)
#   and [Getting started with DDP](https://pytorch.org/tutorials/intermediate/ddp_tutorial.html)
# - PyTorch docs: [DistributedDataParallel](https://pytorch.org/docs/stable/generated/torch.nn.parallel.DistributedDataParallel.html)
#   and [`torch.distributed`](https://pytorch.org/docs/stable/distributed.html) (backends, `init_process_group`, stores)
# - PyTorch docs: [Distributed checkpoint (DCP)](https://pytorch.org/docs/stable/distributed.checkpoint.html)
#   and the recipes [Getting started with DCP](https://pytorch.org/tutorials/recipes/distributed_checkpoint_recipe.html)
#   and [Asynchronous saving with DCP](https://pytorch.org/tutorials/recipes/distributed_async_checkpoint_recipe.html)
