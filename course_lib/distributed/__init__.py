"""Distributed training and its checkpoints, launched with torchrun (chapter 6.3.5 and beyond).

Read it in this order:

1. ``torchrun``: ``run_torchrun`` starts ``python -m torch.distributed.run`` as a subprocess (one
   node, or several "nodes" on this machine), with a deadline, no process left behind, and an error
   that names the failed rank and what it did. torchrun itself does the rest: workers, rendezvous,
   ranks, restarts.
2. ``elastic_job``: the training script torchrun runs (``-m course_lib.distributed.elastic_job``):
   DDP on gloo (NCCL when every rank has a GPU), a sharded checkpoint every few steps, resume
   from the newest complete one after a restart, bitwise the same result as an uninterrupted run.
3. ``step_checkpoints``: how those checkpoints appear atomically (a step folder renamed when every
   rank's shard is written) and how a damaged one is refused. ``safe_dcp``: every DCP folder is
   read through it (``.metadata`` is a pickle: read without running code, then checked).
4. ``reshard_job``: loading a checkpoint saved by 2 ranks on 1 or 3 ranks.
5. For maintainers: ``_reaper`` (finds and kills every process of a run, also as a guardian
   when the caller dies) and ``loss_curves`` (the notebook's picture of two runs).

Taught in notebooks/05_data_parallel.ipynb; in depth in notebooks/05b_torchrun_elastic.ipynb.
"""

from course_lib.distributed.elastic_job import choose_backend, example_table
from course_lib.distributed.safe_dcp import (
    SafeFileSystemReader,
    SafeLoadPlanner,
    UnsafeDCPFolderError,
    dcp_to_torch_save,
    load_dcp,
    read_dcp_metadata,
)
from course_lib.distributed.step_checkpoints import (
    IncompleteStepError,
    StepChoice,
    check_step_folder,
    newest_complete_step,
    save_step,
    step_folder,
)
from course_lib.distributed.torchrun import (
    RankFailure,
    TorchrunError,
    TorchrunResult,
    TorchrunTimeoutError,
    free_port,
    run_torchrun,
    torchrun_command,
)

__all__ = [
    "IncompleteStepError",
    "SafeFileSystemReader",
    "SafeLoadPlanner",
    "UnsafeDCPFolderError",
    "dcp_to_torch_save",
    "load_dcp",
    "read_dcp_metadata",
    "RankFailure",
    "StepChoice",
    "TorchrunError",
    "TorchrunResult",
    "TorchrunTimeoutError",
    "check_step_folder",
    "choose_backend",
    "example_table",
    "free_port",
    "newest_complete_step",
    "run_torchrun",
    "save_step",
    "step_folder",
    "torchrun_command",
]
