"""Running N ranks of a function on one machine, and the rank functions of the course (6.3.5+).

``launch(fn, nprocs=2)`` starts one Python process per rank, joins them into a process group
(gloo on CPU, NCCL when there are CUDA devices for every rank), calls ``fn(rank, world_size,
*args)`` in each, and returns what each returned. It never hangs: past ``timeout`` seconds (or a
few seconds after one rank failed, when the others may wait forever in a collective) the ranks are
killed and the error says which rank did what. The process group is always destroyed.

Each rank is a fresh interpreter (``subprocess``), which imports ``fn`` by its module and name:
a function defined in a notebook or in ``__main__`` does not exist there, which is why
``mp.spawn`` of a notebook function fails. The rank functions below are importable for that reason.

The rank functions show the distributed side of saving: ``DistributedDataParallel`` training,
saving from rank 0 with a barrier, loading on every rank with the right ``map_location``, and
sharded checkpoints with ``torch.distributed.checkpoint`` (DCP), saved by N ranks and loaded by
any number of ranks.
"""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from importlib import import_module
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

#: Seconds the other ranks get to finish after one rank failed, before they are killed
#: (a rank waiting in a collective for a dead peer would otherwise wait until the timeout).
FAILURE_GRACE_S = 3.0


# --------------------------------------------------------------------------------------------
# The launcher
# --------------------------------------------------------------------------------------------


@dataclass
class RankResult:
    """What one rank did. ``status``: ``'ok'``, ``'error'`` (``fn`` raised), ``'crashed'`` (the
    process died without a result), ``'timeout'`` or ``'killed'`` (stopped after another rank
    failed). ``output`` is everything the rank printed (stdout and stderr)."""

    rank: int
    status: str
    value: Any = None
    error: str = ""
    traceback: str = ""
    exitcode: int | None = None
    output: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class DistributedLaunchError(RuntimeError):
    """At least one rank failed, crashed or was stopped; ``.results`` holds every rank's result."""

    def __init__(self, results: list[RankResult], message: str) -> None:
        self.results = results
        super().__init__(message)


class LaunchTimeoutError(DistributedLaunchError, TimeoutError):
    """The ranks ran past the launcher's timeout and were killed."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now (the OS picks it), for the rendezvous."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def choose_backend(nprocs: int) -> str:
    """``'nccl'`` when NCCL is available and there is one CUDA device per rank, else ``'gloo'``."""
    if (
        torch.cuda.is_available()
        and torch.cuda.device_count() >= nprocs
        and dist.is_nccl_available()
    ):
        return "nccl"
    return "gloo"


def rank_device() -> torch.device:
    """The device this rank computes on: ``cuda:<local rank>`` under NCCL, else the CPU."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    return torch.device("cpu")


def _function_reference(fn: Callable[..., Any]) -> tuple[str, str]:
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", "")
    if (
        module in (None, "__main__", "__mp_main__")
        or "<locals>" in qualname
        or "<lambda>" in qualname
    ):
        raise ValueError(
            f"{qualname or fn!r} is defined in {module or 'no module'}"
            f"{' (a notebook or script)' if module == '__main__' else ''}: each rank is a new "
            "Python process that imports the function by module and name, and cannot see it there. "
            "How to fix: put the function in a .py file (module level, not nested, not a lambda) "
            "and import it, e.g. from course_lib.distributed import ddp_train_and_save."
        )
    return module, qualname


def _child_pythonpath() -> str:
    # The ranks see the same modules as this process, whatever its working directory.
    entries = [p if p else os.getcwd() for p in sys.path]
    entries.insert(0, str(Path(__file__).resolve().parent.parent))
    old = os.environ.get("PYTHONPATH")
    return os.pathsep.join(entries + ([old] if old else []))


def _describe(results: list[RankResult]) -> str:
    lines = []
    for r in results:
        if r.ok:
            lines.append(f"  rank {r.rank}: ok")
            continue
        line = f"  rank {r.rank}: {r.status}"
        if r.error:
            line += f": {r.error}"
        elif r.status == "crashed":
            line += f" (exit code {r.exitcode})"
        lines.append(line)
        if r.status == "crashed" and r.output.strip():
            tail = r.output.strip().splitlines()[-5:]
            lines += ["      " + t for t in tail]
    return "\n".join(lines)


# The guardian: a small process in its own session that outlives nothing. It reads the process
# groups of the ranks on stdin; when stdin closes (the launcher finished, or died: SIGKILL, a
# Jupyter kernel restart) it kills every group, so no rank, and nothing a rank started, survives.
_GUARDIAN = (
    "import os, signal, sys\n"
    "groups = [int(line) for line in sys.stdin]\n"
    "for group in groups:\n"
    "    try:\n"
    "        os.killpg(group, signal.SIGKILL)\n"
    "    except OSError:\n"
    "        pass\n"
)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill a rank and everything it started (each rank leads its own process group)."""
    try:
        os.killpg(proc.pid, 9)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def launch_ranks(
    fn: Callable[..., Any],
    nprocs: int = 2,
    *,
    args: Sequence[Any] = (),
    kwargs: dict[str, Any] | None = None,
    backend: str | None = None,
    timeout: float = 120.0,
) -> list[RankResult]:
    """Run ``fn(rank, world_size, *args, **kwargs)`` in ``nprocs`` processes; one result per rank.

    Like ``launch`` but returns every rank's ``RankResult`` instead of raising when one failed.
    ``timeout`` covers everything (starting Python and importing torch in every rank takes a few
    seconds); past it every rank still running is killed and marked ``'timeout'``.
    """
    module, qualname = _function_reference(fn)
    backend = backend or choose_backend(nprocs)
    port = free_port()
    env = dict(os.environ)
    env.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(nprocs),
        PYTHONPATH=_child_pythonpath(),
        PYTHONUNBUFFERED="1",
    )
    # As torchrun does: one thread per rank, unless asked otherwise; N ranks with a thread per core
    # each would fight over the cores.
    env.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory(prefix="course_ranks_") as tmp:
        folder = Path(tmp)
        spec = {
            "module": module,
            "qualname": qualname,
            "args": tuple(args),
            "kwargs": dict(kwargs or {}),
            "backend": backend,
            "world_size": nprocs,
            "init_method": f"tcp://127.0.0.1:{port}",
            "timeout": timeout,
        }
        (folder / "spec.pkl").write_bytes(pickle.dumps(spec))
        procs: list[subprocess.Popen[bytes]] = []
        logs = []
        guardian = subprocess.Popen(
            [sys.executable, "-c", _GUARDIAN], stdin=subprocess.PIPE, start_new_session=True
        )
        assert guardian.stdin is not None
        try:
            for rank in range(nprocs):
                log = (folder / f"rank{rank}.log").open("wb")
                logs.append(log)
                rank_env = dict(env, RANK=str(rank), LOCAL_RANK=str(rank))
                procs.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-c",
                            "from course_lib.distributed import _rank_main; _rank_main()",
                            str(folder),
                            str(rank),
                        ],
                        env=rank_env,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,  # its own process group: killed as a whole
                    )
                )
                guardian.stdin.write(f"{procs[-1].pid}\n".encode())
                guardian.stdin.flush()
            stopped = _wait(procs, folder, timeout)
        finally:
            for p in procs:  # an interrupt (Ctrl-C, a test timeout) must not leave ranks behind
                _kill_group(p)
            guardian.stdin.close()  # the guardian kills what the ranks left, then exits
            guardian.wait()
            for log in logs:
                log.close()
        return [_collect(rank, procs[rank], folder, stopped.get(rank)) for rank in range(nprocs)]


def _wait(procs: list[subprocess.Popen[bytes]], folder: Path, timeout: float) -> dict[int, str]:
    """Wait for every rank; kill the rest on timeout or shortly after a failure. Returns why each
    killed rank was stopped."""
    deadline = time.monotonic() + timeout
    failed_at: float | None = None
    stopped: dict[int, str] = {}
    while True:
        codes = [p.poll() for p in procs]
        if all(c is not None for c in codes):
            return stopped
        now = time.monotonic()
        if failed_at is None and any(c not in (None, 0) for c in codes):
            failed_at = now
        reason = None
        if now >= deadline:
            reason = "timeout"
        elif failed_at is not None and now - failed_at >= FAILURE_GRACE_S:
            reason = "killed"
        if reason:
            for rank, p in enumerate(procs):
                if p.poll() is None:
                    _kill_group(p)
                    stopped[rank] = reason
            return stopped
        time.sleep(0.02)


def _collect(
    rank: int, proc: subprocess.Popen[bytes], folder: Path, stopped: str | None
) -> RankResult:
    output = (folder / f"rank{rank}.log").read_text(errors="replace")
    result_file = folder / f"rank{rank}.result"
    if result_file.exists():
        outcome = pickle.loads(result_file.read_bytes())
        if outcome["ok"]:
            return RankResult(rank, "ok", outcome["value"], exitcode=proc.returncode, output=output)
        return RankResult(
            rank,
            "error",
            error=outcome["error"],
            traceback=outcome["traceback"],
            exitcode=proc.returncode,
            output=output,
        )
    if stopped == "timeout":
        return RankResult(
            rank, "timeout", error="still running at the timeout, killed", output=output
        )
    if stopped == "killed":
        return RankResult(rank, "killed", error="killed after another rank failed", output=output)
    return RankResult(rank, "crashed", exitcode=proc.returncode, output=output)


def launch(
    fn: Callable[..., Any],
    nprocs: int = 2,
    *,
    args: Sequence[Any] = (),
    kwargs: dict[str, Any] | None = None,
    backend: str | None = None,
    timeout: float = 120.0,
) -> list[Any]:
    """Run ``fn(rank, world_size, *args, **kwargs)`` on ``nprocs`` ranks; return their values.

    ``fn`` must be importable (defined at module level in a .py file). Each rank joins a process
    group (``backend``: gloo on CPU, NCCL when there is a CUDA device per rank) on a free port of
    127.0.0.1 before ``fn`` runs, and destroys it afterwards. If any rank raises, crashes or runs
    past ``timeout`` seconds, the ranks are stopped and ``DistributedLaunchError`` (or its
    subclass ``LaunchTimeoutError``) says which rank did what; ``.results`` has the details,
    including each rank's traceback and printed output.
    """
    results = launch_ranks(fn, nprocs, args=args, kwargs=kwargs, backend=backend, timeout=timeout)
    if all(r.ok for r in results):
        return [r.value for r in results]
    name = getattr(fn, "__qualname__", repr(fn))
    if any(r.status == "timeout" for r in results):
        raise LaunchTimeoutError(
            results, f"{name} on {nprocs} ranks ran past {timeout:g} s:\n{_describe(results)}"
        )
    raise DistributedLaunchError(results, f"{name} failed on {nprocs} ranks:\n{_describe(results)}")


def _rank_main() -> None:
    """Entry point of one rank process (``python -c ... <folder> <rank>``)."""
    folder, rank = Path(sys.argv[1]), int(sys.argv[2])
    spec = pickle.loads((folder / "spec.pkl").read_bytes())
    try:
        fn: Any = import_module(spec["module"])
        for part in spec["qualname"].split("."):
            fn = getattr(fn, part)
        if spec["backend"] == "nccl":
            torch.cuda.set_device(rank)
        dist.init_process_group(
            spec["backend"],
            init_method=spec["init_method"],
            rank=rank,
            world_size=spec["world_size"],
            timeout=timedelta(seconds=spec["timeout"]),
        )
        value = fn(rank, spec["world_size"], *spec["args"], **spec["kwargs"])
        outcome = {"ok": True, "value": value}
    except BaseException as exc:  # report everything, including SystemExit and KeyboardInterrupt
        outcome = {
            "ok": False,
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(),
        }
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    temp = folder / f"rank{rank}.result.tmp"
    try:
        temp.write_bytes(pickle.dumps(outcome))
    except Exception as exc:  # the value itself cannot be pickled
        outcome = {
            "ok": False,
            "error": f"the return value cannot be pickled: {exc}",
            "traceback": "",
        }
        temp.write_bytes(pickle.dumps(outcome))
    os.replace(temp, folder / f"rank{rank}.result")
    sys.exit(0 if outcome["ok"] else 1)


# --------------------------------------------------------------------------------------------
# Rank functions: importable, so that launch() (or mp.spawn, or torchrun) can run them
# --------------------------------------------------------------------------------------------

#: The sharded example tensor: 8 x 6, values 0..47, so that any shard shows where it came from.
TABLE_SHAPE = (8, 6)


def example_table() -> torch.Tensor:
    """The full tensor that ``ddp_train_and_save`` saves sharded by rows (values 0..47)."""
    return torch.arange(TABLE_SHAPE[0] * TABLE_SHAPE[1], dtype=torch.float32).reshape(TABLE_SHAPE)


def _mesh(world_size: int) -> Any:
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(rank_device().type, (world_size,))


def _ddp_model_and_optimizer(seed: int = 0) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    from torch.nn.parallel import DistributedDataParallel

    from course_lib.models import make_mlp

    device = rank_device()
    torch.manual_seed(seed)  # the same start on every rank (DDP also broadcasts rank 0's weights)
    model = make_mlp().to(device)
    ddp = DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )
    return ddp, torch.optim.Adam(ddp.parameters(), lr=0.01)


def ddp_train_and_save(rank: int, world_size: int, workdir: str, epochs: int = 3) -> dict[str, Any]:
    """Train the chapter's MLP with DDP, then save it three ways; return what each rank saw.

    1. Training: each rank sees its own part of the data (``DistributedSampler``); DDP averages
       the gradients during ``backward()``, so every rank holds identical weights afterwards.
    2. ``workdir/ddp_model.pth``: the plain ``ddp.module.state_dict()``, written by rank 0 only
       (N ranks writing one file would race), then a barrier so that no rank reads it too early;
       then every rank loads it with ``map_location`` = its own device and checks it.
       ``workdir/ddp_model_prefixed.pth`` holds ``ddp.state_dict()`` with its ``module.`` keys.
    3. ``workdir/dcp``: a ``torch.distributed.checkpoint`` of model and optimizer (from
       ``get_state_dict``, keys without ``module.``) written by all ranks together, plus a tensor
       sharded by rows across the ranks (a ``DTensor``), each rank writing only its own rows.
    """
    import torch.distributed.checkpoint as dcp
    import torch.nn.functional as F
    from torch.distributed.checkpoint.state_dict import get_state_dict
    from torch.distributed.tensor import Shard, distribute_tensor
    from torch.utils.data import DataLoader, DistributedSampler

    from course_lib.data import make_regression_data
    from course_lib.models import make_mlp
    from course_lib.safe_io import safe_load, safe_save

    workdir_path = Path(workdir)
    device = rank_device()
    ddp, optimizer = _ddp_model_and_optimizer()
    data = make_regression_data(256)
    sampler = DistributedSampler(data, num_replicas=world_size, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(data, batch_size=32, sampler=sampler)
    losses = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)  # a different shuffle each epoch, the same on every rank
        total = torch.zeros(2, device=device)
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad()
            loss = F.mse_loss(ddp(x), y)
            loss.backward()  # DDP all-reduces (averages) the gradients here
            optimizer.step()
            total += torch.stack(
                [loss.detach() * len(x), torch.tensor(float(len(x)), device=device)]
            )
        dist.all_reduce(total)  # the loss over the whole epoch, all ranks' samples
        losses.append(round((total[0] / total[1]).item(), 4))

    plain_file = workdir_path / "ddp_model.pth"
    if rank == 0:
        safe_save(ddp.module.state_dict(), plain_file)
        safe_save(ddp.state_dict(), workdir_path / "ddp_model_prefixed.pth")
    dist.barrier()  # every rank waits here until rank 0 has written the files
    state = safe_load(plain_file, map_location=device)
    reloaded = make_mlp().to(device)
    reloaded.load_state_dict(state)
    reloaded_equal = all(
        torch.equal(a, b)
        for a, b in zip(
            reloaded.state_dict().values(), ddp.module.state_dict().values(), strict=True
        )
    )

    model_sd, optim_sd = get_state_dict(ddp, optimizer)
    table = distribute_tensor(example_table().to(device), _mesh(world_size), [Shard(0)])
    dcp.save(
        {"model": model_sd, "optim": optim_sd, "table": table},
        checkpoint_id=workdir_path / "dcp",
    )
    dist.barrier()
    return {
        "rank": rank,
        "device": str(device),
        "samples_seen": len(sampler) * epochs,
        "losses": losses,
        "first_key_ddp": next(iter(ddp.state_dict())),
        "first_key_get_state_dict": next(iter(model_sd)),
        "reloaded_equal": reloaded_equal,
        "optimizer_step": int(optim_sd["state"]["0.weight"]["step"].item()),
        "table_local_shape": tuple(table.to_local().shape),
        "dcp_files": sorted(p.name for p in (workdir_path / "dcp").iterdir()),
    }


def dcp_load_on_ranks(rank: int, world_size: int, workdir: str) -> dict[str, Any]:
    """Load ``workdir/dcp`` (from ``ddp_train_and_save``) into fresh DDP model and optimizer.

    Works with any number of ranks, not only the number that saved: DCP stores each tensor's
    global shape and which piece of it each file holds, and every rank reads the pieces it needs.
    The table saved split by rows is loaded here split by *columns* (resharding). Returns whether
    the model equals ``workdir/ddp_model.pth``, the optimizer's step count and the table check.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    from torch.distributed.tensor import Shard, distribute_tensor

    from course_lib.safe_io import safe_load

    workdir_path = Path(workdir)
    device = rank_device()
    ddp, optimizer = _ddp_model_and_optimizer(seed=rank + 100)  # deliberately different weights
    model_sd, optim_sd = get_state_dict(ddp, optimizer)  # the structure DCP fills in place
    table = distribute_tensor(
        torch.zeros(TABLE_SHAPE, device=device), _mesh(world_size), [Shard(1)]
    )
    to_fill = {"model": model_sd, "optim": optim_sd, "table": table}
    dcp.load(to_fill, checkpoint_id=workdir_path / "dcp")
    set_state_dict(
        ddp, optimizer, model_state_dict=to_fill["model"], optim_state_dict=to_fill["optim"]
    )
    expected = safe_load(workdir_path / "ddp_model.pth", map_location=device)
    return {
        "rank": rank,
        "params_equal": all(
            torch.equal(expected[k], v) for k, v in ddp.module.state_dict().items()
        ),
        "optimizer_step": int(optimizer.state_dict()["state"][0]["step"].item()),
        "table_local_shape": tuple(to_fill["table"].to_local().shape),
        "table_equal": torch.equal(to_fill["table"].full_tensor().cpu(), example_table()),
    }
