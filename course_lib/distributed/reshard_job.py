"""Loading a step checkpoint on any number of ranks (resharding), checked against the saved values.

    python -m torch.distributed.run --standalone --nproc-per-node=3 \\
        -m course_lib.distributed.reshard_job --checkpoint run/checkpoints/step_000012 \\
        --expect run/final.pth --report run/reshard_3.json

The job saved by ``elastic_job`` on 2 ranks is loaded here by ``--nproc-per-node`` ranks (1, 3...):
DCP stores each tensor's global shape and which piece every file holds, so each new rank reads the
pieces it needs. The table saved as 2 row blocks is loaded as 3 (rows 3, 3, 2). The RNG states of
the 2 old ranks are not loaded: they belong to ranks that no longer exist.

Taught in notebooks/05b_torchrun_elastic.ipynb, section 6 and its exercises.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record

from course_lib.distributed.elastic_job import end_process_group

__all__ = ["main"]


def _load_and_check(checkpoint: Path, expect: Path) -> dict[str, object]:
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor
    from torch.nn.parallel import DistributedDataParallel

    from course_lib.distributed.elastic_job import (
        TABLE_SHAPE,
        choose_backend,
        device_index_on_host,
        example_table,
        ranks_on_this_host,
    )
    from course_lib.distributed.safe_dcp import load_dcp
    from course_lib.distributed.step_checkpoints import check_step_folder
    from course_lib.models import make_mlp
    from course_lib.safe_io import safe_load

    check_step_folder(checkpoint)  # refuse a damaged folder with a clear error before DCP reads it
    backend = choose_backend(ranks_on_this_host())
    if backend == "nccl":
        torch.cuda.set_device(device_index_on_host())
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    device = (
        torch.device("cuda", torch.cuda.current_device())
        if backend == "nccl"
        else torch.device("cpu")
    )
    torch.manual_seed(100 + rank)  # deliberately different weights: the load must replace them
    ddp = DistributedDataParallel(
        make_mlp().to(device), device_ids=[device.index] if device.type == "cuda" else None
    )
    optimizer = torch.optim.Adam(ddp.parameters(), lr=0.01)
    model_sd, optim_sd = get_state_dict(ddp, optimizer)
    mesh = init_device_mesh(device.type, (world,))
    table = distribute_tensor(torch.zeros(TABLE_SHAPE, device=device), mesh, [Shard(0)])
    state = {"model": model_sd, "optim": optim_sd, "table": table}
    load_dcp(state, checkpoint)  # runs no code from the folder (safe_dcp)
    set_state_dict(ddp, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    expected = safe_load(expect, map_location=device)
    mine = {
        "rank": rank,
        "model_equal": all(torch.equal(expected[k], v) for k, v in ddp.module.state_dict().items()),
        "optimizer_step": int(optimizer.state_dict()["state"][0]["step"].item()),
        "table_rows": int(state["table"].to_local().shape[0]),
        "table_equal": bool(torch.equal(state["table"].full_tensor().cpu(), example_table())),
    }
    everyone: list[object] = [None] * world
    dist.all_gather_object(everyone, mine)
    dist.barrier()  # no rank tears its connections down while a peer still reads from them
    return {"world_size": world, "ranks": everyone}


@record
def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m course_lib.distributed.reshard_job`` under torchrun.

    Called when ``run_torchrun`` starts the module; not taught in a notebook.
    """
    parser = argparse.ArgumentParser(prog="python -m course_lib.distributed.reshard_job")
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--expect", type=Path, required=True, help="final.pth of the run")
    parser.add_argument("--report", type=Path, required=True)
    ns = parser.parse_args(argv)
    report = _load_and_check(ns.checkpoint, ns.expect)
    end_process_group()  # after the DDP model and the mesh are gone (see its docstring)
    if int(os.environ.get("RANK", "0")) == 0:
        ns.report.write_text(json.dumps(report, indent=1))
        ranks = report["ranks"]
        print(
            f"[job] {report['world_size']} rank(s) loaded {ns.checkpoint.name}: "
            f"model equal {all(r['model_equal'] for r in ranks)}, "
            f"optimizer steps {sorted({r['optimizer_step'] for r in ranks})}, "
            f"table rows per rank {[r['table_rows'] for r in ranks]}, "
            f"table equal {all(r['table_equal'] for r in ranks)}",
            flush=True,
        )


if __name__ == "__main__":
    main()
