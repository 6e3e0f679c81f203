"""How long a training step is blocked by a sharded save: ``dcp.async_save`` against ``dcp.save``.

Runs under real torchrun (``--nproc-per-node``, default 2, gloo on CPU or NCCL on GPUs): every
rank holds a model of about ``--size-mb`` MB (default 64, replicated, so DCP spreads the writes
over the ranks) with Adam state, and saves it ``--repeats`` times each way, a few training steps
apart:

- ``dcp.save``: the step waits until every rank's shard and the metadata are written;
- ``dcp.async_save``: the step waits only while the state is staged (copied to CPU memory) and
  the write is handed to a background thread; the previous save is awaited before the next one
  starts (one in flight, as a training loop would do), and that wait counts as blocked time too.

It prints the median blocked time of each (rank 0's; every rank waits for the slowest in a
collective), the total time until an asynchronous save is on disk, and the ratio async/sync,
measured in the same run. The course aims for a ratio under 0.5 on a state this size.

Usage: python benchmarks/bench_distributed.py [--size-mb 64] [--repeats 5] [--nproc 2] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

WORKER = "benchmarks.bench_distributed"


def _worker(argv: list[str]) -> None:
    """One rank: train a little, save both ways, report blocked times (rank 0 writes the JSON)."""
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict
    from torch.nn.parallel import DistributedDataParallel

    from course_lib.distributed.elastic_job import choose_backend

    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--size-mb", type=float, required=True)
    parser.add_argument("--repeats", type=int, required=True)
    parser.add_argument("--dir", type=Path, required=True)
    ns = parser.parse_args(argv)
    backend = choose_backend(int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(backend)
    device = (
        torch.device("cuda", torch.cuda.current_device())
        if backend == "nccl"
        else torch.device("cpu")
    )
    width = 1024
    # Adam keeps two more copies of every parameter: the state is about 3x the model.
    layers = max(1, int(ns.size_mb * 2**20 / 4 / 3 / (width * width)))
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)]).to(device)
    ddp = DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )
    optimizer = torch.optim.Adam(ddp.parameters(), lr=1e-4)

    def step() -> None:
        optimizer.zero_grad()
        ddp(torch.randn(8, width, device=device)).square().mean().backward()
        optimizer.step()

    def state() -> dict:
        model_sd, optim_sd = get_state_dict(ddp, optimizer)
        return {"model": model_sd, "optim": optim_sd}

    step()
    sync_blocked, async_blocked, async_total = [], [], []
    for i in range(ns.repeats):
        dist.barrier()
        started = time.perf_counter()
        dcp.save(state(), checkpoint_id=ns.dir / f"sync_{i}")
        sync_blocked.append(time.perf_counter() - started)
        step()
    # The background save runs collectives from its own thread while training uses the default
    # group: on one group their messages would interleave (a hang). PyTorch's recipe: a gloo group
    # of its own for async_save.
    save_group = dist.new_group(backend="gloo")
    pending = None
    for i in range(ns.repeats):
        dist.barrier()
        started = time.perf_counter()
        if pending is not None:
            pending.result()  # one save in flight: the next waits for the previous
        pending = dcp.async_save(
            state(), checkpoint_id=ns.dir / f"async_{i}", process_group=save_group
        )
        async_blocked.append(time.perf_counter() - started)
        step()
        pending.result()
        async_total.append(time.perf_counter() - started)
        pending = None
    bytes_saved = sum(p.stat().st_size for p in (ns.dir / "sync_0").iterdir())
    if dist.get_rank() == 0:
        (ns.dir / "report.json").write_text(
            json.dumps(
                {
                    "backend": backend,
                    "world_size": dist.get_world_size(),
                    "mb": bytes_saved / 2**20,
                    "sync_blocked": sync_blocked,
                    "async_blocked": async_blocked,
                    "async_total": async_total,
                }
            )
        )
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--timeout", type=float, default=300)
    ns = parser.parse_args()
    from course_lib.distributed import run_torchrun

    with tempfile.TemporaryDirectory(prefix="bench_dcp_", dir=ns.dir) as tmp:
        folder = Path(tmp)
        result = run_torchrun(
            WORKER,
            ["--worker", "--size-mb", str(ns.size_mb), "--repeats", str(ns.repeats), "--dir", tmp],
            nproc_per_node=ns.nproc,
            timeout=ns.timeout,
        )
        report = json.loads((folder / "report.json").read_text())
    sync = statistics.median(report["sync_blocked"])
    blocked = statistics.median(report["async_blocked"])
    total = statistics.median(report["async_total"])
    print(
        f"{report['world_size']} ranks ({report['backend']}), {report['mb']:.1f} MB per "
        f"checkpoint, median of {ns.repeats} (torchrun run: {result.seconds:.1f} s)"
    )
    print(f"  dcp.save        blocks the step  {sync * 1000:8.1f} ms")
    print(
        f"  dcp.async_save  blocks the step  {blocked * 1000:8.1f} ms   (on disk after {total * 1000:.1f} ms)"
    )
    print(f"  ratio async/sync blocked: {blocked / sync:.2f}  (aim: < 0.5)")


if __name__ == "__main__":
    if "--worker" in sys.argv:
        _worker(sys.argv[1:])
    else:
        main()
