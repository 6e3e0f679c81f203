"""The course's torchrun training script: DDP, a sharded checkpoint every few steps, elastic resume.

Run it with torchrun (each worker is one rank; torchrun sets RANK, WORLD_SIZE, MASTER_ADDR...):

    python -m torch.distributed.run --standalone --nproc-per-node=2 --max-restarts=3 \\
        -m course_lib.distributed.elastic_job --workdir run --steps 12 --save-every 4

Every ``--save-every`` steps all ranks save model, optimizer, the sharded ``table`` and each rank's
RNG state as one step of ``course_lib.distributed.step_checkpoints`` (visible only when complete).
When torchrun restarts the workers (a worker died, ``--max-restarts`` not used up), every worker
starts this script again, loads the newest complete step and carries on. The data order is a
function of (seed, epoch) and the noise comes from each rank's RNG, saved and restored, so a run
interrupted any number of times ends with the same bits as one that never was.

``--fault KIND:RANK:STEP[:ATTEMPT]`` makes one rank misbehave at the start of a step, on one
attempt (default 0, the first; ``*``: every attempt), for the tests and the notebook:
``raise`` (an exception), ``exit`` (``os._exit(3)``), ``kill`` (SIGKILL itself, as the OOM killer
would), ``hang`` (wait in a collective its peers never join), ``corrupt-kill`` (truncate its own
shard of the newest step, then SIGKILL itself).

Taught in notebooks/05b_torchrun_elastic.ipynb, sections 2 to 5.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import signal
import sys
import traceback
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.elastic.multiprocessing.errors import record

from course_lib.distributed.step_checkpoints import newest_complete_step, save_step

__all__ = [
    "Fault",
    "JobConfig",
    "HOST_RANK_OFFSET_VAR",
    "RANKS_ON_HOST_VAR",
    "choose_backend",
    "device_index_on_host",
    "end_process_group",
    "example_table",
    "init_process_group_for_attempt",
    "main",
    "parse_args",
    "ranks_on_this_host",
]

#: The sharded example tensor: 8 x 6, values 0..47, so that any shard shows where it came from.
TABLE_SHAPE = (8, 6)
_DATA_SIZE = 256


@dataclass
class Fault:
    """One injected fault: ``kind`` on ``rank`` at the start of ``step``, on ``attempt`` (None: all)."""

    kind: str
    rank: int
    step: int
    attempt: int | None = 0


@dataclass
class JobConfig:
    """The command line of the job."""

    workdir: Path
    steps: int = 12
    save_every: int = 4
    batch_size: int = 16
    seed: int = 0
    collective_timeout: float = 60.0
    fault: Fault | None = None


def _parse_fault(text: str) -> Fault:
    parts = text.split(":")
    kinds = ("raise", "exit", "kill", "hang", "corrupt-kill")
    if len(parts) not in (3, 4) or parts[0] not in kinds:
        raise argparse.ArgumentTypeError(
            f"--fault {text!r}: expected KIND:RANK:STEP[:ATTEMPT], KIND one of {', '.join(kinds)}"
        )
    attempt = (
        None if len(parts) == 4 and parts[3] == "*" else int(parts[3] if len(parts) == 4 else 0)
    )
    return Fault(parts[0], int(parts[1]), int(parts[2]), attempt)


def parse_args(argv: list[str] | None = None) -> JobConfig:
    """Read the job's command line (see the module docstring).

    Used by ``main``; not taught in a notebook.
    """
    parser = argparse.ArgumentParser(prog="python -m course_lib.distributed.elastic_job")
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--save-every", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--collective-timeout", type=float, default=60.0)
    parser.add_argument("--fault", type=_parse_fault, default=None)
    ns = parser.parse_args(argv)
    return JobConfig(**vars(ns))


#: Set by ``run_torchrun`` for every worker: how many ranks all its "nodes" start on this machine
#: (torchrun's own LOCAL_WORLD_SIZE counts one node's only), and where this node's ranks begin.
RANKS_ON_HOST_VAR = "COURSE_RANKS_ON_HOST"
HOST_RANK_OFFSET_VAR = "COURSE_HOST_RANK_OFFSET"


def ranks_on_this_host() -> int:
    """How many ranks of the job run on this machine: every node's, when several "nodes" share it.

    ``COURSE_RANKS_ON_HOST`` (set by ``run_torchrun``), else torchrun's ``LOCAL_WORLD_SIZE`` (the
    ranks of this node), else 1. Used by ``choose_backend`` and both jobs; not taught in a notebook.
    """
    for name in (RANKS_ON_HOST_VAR, "LOCAL_WORLD_SIZE"):
        if os.environ.get(name, "").strip():
            return int(os.environ[name])
    return 1


def device_index_on_host() -> int:
    """This rank's GPU on this machine: ``LOCAL_RANK``, after the ranks of the nodes started
    before it on the same machine (``COURSE_HOST_RANK_OFFSET``, set by ``run_torchrun``)."""
    return int(os.environ.get(HOST_RANK_OFFSET_VAR, "0")) + int(os.environ.get("LOCAL_RANK", "0"))


def choose_backend(
    ranks_on_host: int | None = None,
    gpus: int | None = None,
    *,
    nccl_available: bool | None = None,
) -> str:
    """``'nccl'`` when every rank on this machine has a CUDA device of its own, else ``'gloo'``.

    ``ranks_on_host`` counts the ranks of *all* nodes started on this machine (default:
    ``ranks_on_this_host()``): two one-rank "nodes" on a machine with one GPU would both put
    rank 0's and rank 1's work on cuda:0, which NCCL refuses ("Duplicate GPU detected"); gloo
    runs them. ``gpus`` is the machine's CUDA device count (default: ``torch.cuda``'s) and
    ``nccl_available`` whether this torch has NCCL; both can be given, for tests.

    Taught in notebooks/05b_torchrun_elastic.ipynb, section 5.
    """
    if ranks_on_host is None:
        ranks_on_host = ranks_on_this_host()
    if gpus is None:
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if nccl_available is None:
        nccl_available = dist.is_nccl_available()
    if ranks_on_host < 1:
        raise ValueError(f"ranks_on_host={ranks_on_host}: a job has at least one rank here.")
    return "nccl" if nccl_available and gpus >= ranks_on_host else "gloo"


def example_table() -> torch.Tensor:
    """The full tensor that the job saves sharded by rows across the ranks (values 0..47).

    Used by ``elastic_job`` (which saves it) and ``reshard_job`` (which checks it); not taught in
    a notebook.
    """
    return torch.arange(TABLE_SHAPE[0] * TABLE_SHAPE[1], dtype=torch.float32).reshape(TABLE_SHAPE)


def init_process_group_for_attempt(backend: str, attempt: int, timeout: timedelta) -> None:
    """``init_process_group`` under torchrun, safe after a restart.

    torchrun's agent keeps one key-value store (at MASTER_ADDR:MASTER_PORT) for every restart of
    the workers, and the plain ``init_process_group()`` puts the same keys in it each time. After
    a restart the new workers can read the old ones: gloo then connects to the address of a dead
    worker ("Gloo connectFullMesh failed ... Connection refused"), and a store-based barrier may
    count arrivals of the previous attempt. A key prefix per attempt keeps the attempts apart.
    Taught in notebooks/05b_torchrun_elastic.ipynb, section 3.
    """
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    # The agent hosts the store (TORCHELASTIC_USE_AGENT_STORE); without an agent, rank 0 does.
    hosted_by_agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world,
        is_master=rank == 0 and not hosted_by_agent,
        timeout=timeout,
    )
    dist.init_process_group(
        backend,
        store=dist.PrefixStore(f"course_attempt_{attempt}/", store),
        rank=rank,
        world_size=world,
        timeout=timeout,
    )


def end_process_group() -> None:
    """``destroy_process_group`` once nothing holds a process group any more: call it after the
    DDP model, the device mesh and the DTensors are gone (after the function that made them returns).

    DDP's reducer and a mesh keep their process group alive past ``destroy_process_group()``; the
    group is then freed while the interpreter shuts down, with gloo's threads still joinable, and
    the worker aborts after its work is done ("terminate called without an active exception",
    SIGABRT: torchrun reports the job failed). Measured here with torch 2.13: 6 of 20 two-rank DDP
    runs aborted that way, none of 25 after dropping the model first. Used by ``main`` and
    ``reshard_job``; not taught in a notebook (05_data_parallel's script drops its model by hand).
    """
    global _side_group
    _side_group = None
    gc.collect()  # reference cycles (a module and its hooks) still holding the group
    dist.destroy_process_group()


def _say(message: str) -> None:
    # Only rank 0 speaks, so the output does not depend on how the ranks' lines interleave.
    if dist.get_rank() == 0:
        print(f"[job] {message}", flush=True)


def _batch(data: Any, step: int, cfg: JobConfig, rank: int, world: int) -> tuple[Any, Any]:
    """The batch of ``rank`` at ``step``: what DistributedSampler(shuffle=True, seed) with
    ``set_epoch`` gives, computed from the step alone so that a resumed job needs no loader state."""
    per_rank = _DATA_SIZE // world
    batches_per_epoch = per_rank // cfg.batch_size
    epoch, index = divmod(step, batches_per_epoch)
    order = torch.randperm(_DATA_SIZE, generator=torch.Generator().manual_seed(cfg.seed + epoch))
    mine = order[rank::world][:per_rank]
    rows = mine[index * cfg.batch_size : (index + 1) * cfg.batch_size]
    return data.tensors[0][rows], data.tensors[1][rows]


def _inject(fault: Fault, step: int, attempt: int, workdir: Path) -> None:
    rank = dist.get_rank()
    if (fault.rank, fault.step) != (rank, step) or fault.attempt not in (None, attempt):
        return
    print(f"[fault] rank {rank}: {fault.kind} at step {step} (attempt {attempt})", flush=True)
    if fault.kind == "raise":
        raise RuntimeError(f"injected fault: rank {rank} raised at step {step}")
    if fault.kind == "exit":
        os._exit(3)
    if fault.kind == "hang":
        # A collective on a group of this rank alone would return at once; this one waits for
        # peers that are busy elsewhere, until the process group's timeout.
        dist.all_reduce(torch.zeros(1), group=_side_group)
    if fault.kind == "corrupt-kill":
        choice = _newest_step_folder(workdir / "checkpoints")
        if choice is not None:
            shard = choice / f"__{rank}_0.distcp"
            with shard.open("r+b") as f:
                f.truncate(shard.stat().st_size // 2)
    if fault.kind in ("kill", "corrupt-kill"):
        os.kill(os.getpid(), signal.SIGKILL)


def _newest_step_folder(root: Path) -> Path | None:
    # The newest step_N folder, unchecked: the target of the corrupting fault.
    folders = sorted(p for p in root.glob("step_??????") if p.is_dir())
    return folders[-1] if folders else None


_side_group: Any = None


def _state(ddp: Any, optimizer: Any, table: Any) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(ddp, optimizer)
    # Each rank's RNG state under its own key: DCP saves a key that only one rank has from that rank.
    rng = {f"rank{dist.get_rank()}": torch.get_rng_state()}
    return {"model": model_sd, "optim": optim_sd, "table": table, "rng": rng}


def train(cfg: JobConfig) -> None:
    """One worker's life: join the group, resume or start, train, checkpoint, save the result.
    The caller ends the group once this returns (``main`` does, with ``end_process_group``).

    Taught in notebooks/05b_torchrun_elastic.ipynb, sections 2 and 3.
    """
    from torch.distributed.checkpoint.state_dict import set_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor
    from torch.nn.parallel import DistributedDataParallel

    from course_lib.data import make_regression_data
    from course_lib.distributed.safe_dcp import load_dcp
    from course_lib.models import make_mlp
    from course_lib.safe_io import safe_save

    global _side_group
    backend = choose_backend(ranks_on_this_host())
    if backend == "nccl":
        torch.cuda.set_device(device_index_on_host())
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    init_process_group_for_attempt(backend, attempt, timedelta(seconds=cfg.collective_timeout))
    rank, world = dist.get_rank(), dist.get_world_size()
    _side_group = dist.new_group(backend="gloo")
    device = (
        torch.device("cuda", torch.cuda.current_device())
        if backend == "nccl"
        else torch.device("cpu")
    )

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model = make_mlp().to(device)
    ddp = DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )
    optimizer = torch.optim.Adam(ddp.parameters(), lr=0.01)
    mesh = init_device_mesh(device.type, (world,))
    table = distribute_tensor(example_table().to(device), mesh, [Shard(0)])
    torch.manual_seed(cfg.seed + 1 + rank)  # then each rank its own noise
    data = make_regression_data(_DATA_SIZE, seed=cfg.seed)

    cfg.workdir.mkdir(parents=True, exist_ok=True)
    checkpoints = cfg.workdir / "checkpoints"
    choice = newest_complete_step(checkpoints)
    for line in choice.refused:
        _say(f"refused {line}")
    start = 0
    if choice.step is not None:
        state = _state(ddp, optimizer, table)
        load_dcp(state, choice.path)  # runs no code from the folder (safe_dcp)
        set_state_dict(
            ddp, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"]
        )
        torch.set_rng_state(state["rng"][f"rank{rank}"])
        start = choice.step
        _say(f"{world} workers resumed from step {start}")
    else:
        _say(f"{world} workers ({backend}) started from scratch")

    losses = cfg.workdir / "losses.jsonl"
    for step in range(start, cfg.steps):
        if cfg.fault is not None:
            _inject(cfg.fault, step, attempt, cfg.workdir)
        x, y = _batch(data, step, cfg, rank, world)
        x = x + 0.05 * torch.randn_like(x)  # noise from this rank's RNG: restored on resume
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad()
        loss = F.mse_loss(ddp(x), y)
        loss.backward()  # DDP averages the gradients of all ranks here
        optimizer.step()
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        if rank == 0:
            with losses.open("a") as f:
                record = {"attempt": attempt, "step": step + 1, "loss": mean.item() / world}
                f.write(json.dumps(record) + "\n")
        if (step + 1) % cfg.save_every == 0:
            save_step(_state(ddp, optimizer, table), checkpoints, step + 1)
            _say(f"saved step {step + 1}")
    if rank == 0:
        safe_save(ddp.module.state_dict(), cfg.workdir / "final.pth")
    dist.barrier()
    _say(f"finished step {cfg.steps}; rank 0 wrote final.pth")


@record  # torchrun's error file: the exception and traceback of a failed worker reach the agent
def _train_on_record(cfg: JobConfig) -> None:
    train(cfg)  # returns with the model, mesh and table freed


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m course_lib.distributed.elastic_job`` under torchrun.

    Called when ``run_torchrun`` starts the module; not taught in a notebook.
    """
    cfg = parse_args(argv)
    try:
        # The error file is written inside: before the group below is ended, which closes the
        # other ranks' connections. A rank that then fails on that and leaves first gets this
        # one stopped by torchrun, and only what is on record by then reaches the report.
        _train_on_record(cfg)
    except BaseException as error:
        # A rank that raised must end its group too, or it aborts while exiting (SIGABRT after
        # its traceback, see end_process_group). The traceback's frames hold train's locals, the
        # DDP model among them: clear them.
        traceback.clear_frames(error.__traceback__)
        if dist.is_initialized():
            # A teardown that fails in turn (after a collective timed out) must not take the
            # place of the job's own error.
            with contextlib.suppress(Exception):
                end_process_group()
        raise
    end_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
