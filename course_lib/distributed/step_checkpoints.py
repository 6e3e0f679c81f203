"""Sharded step checkpoints that appear all at once: every rank's shard and the metadata, or nothing.

``dcp.save`` writes one file per rank and a ``.metadata`` file into a folder. A job killed half-way
through leaves a folder with some shards and no metadata, or (a disk fault, a copy cut short)
metadata whose shards are missing or shorter than the metadata says. So each step is written into
``step_000008.incomplete/``; after a barrier (every rank has written its shard) rank 0 renames it to
``step_000008/``, one ``rename`` that is atomic on a POSIX file system. A folder without the suffix
is complete; ``newest_complete_step`` still checks it against its metadata before trusting it and
falls back to the previous step when a shard is missing or truncated.

Taught in notebooks/05b_torchrun_elastic.ipynb, section 4.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from course_lib.distributed.safe_dcp import check_plain_entries, read_dcp_metadata
from course_lib.safe_io import CheckpointError

__all__ = [
    "IncompleteStepError",
    "StepChoice",
    "check_step_folder",
    "newest_complete_step",
    "save_step",
    "step_folder",
]

# ASCII digits only (\d would take "step_٩٩٩٩٩٩"), and fullmatch ($ would take a trailing newline).
_STEP_NAME = re.compile(r"step_([0-9]{6})", flags=re.ASCII)
_INCOMPLETE = ".incomplete"
_REPLACED = ".replaced"


class IncompleteStepError(CheckpointError):
    """A step folder lacks its metadata, or a rank's shard is missing or shorter than recorded."""


@dataclass
class StepChoice:
    """The step a job resumes from (``None``: start from scratch) and the newer folders refused."""

    step: int | None
    path: Path | None
    refused: list[str] = field(default_factory=list)


def step_folder(root: str | os.PathLike[str], step: int) -> Path:
    """Where the complete checkpoint of ``step`` lives: ``root/step_000008``.

    Used by ``save_step``; not taught in a notebook.
    """
    return Path(root) / f"step_{step:06d}"


def check_step_folder(path: str | os.PathLike[str]) -> None:
    """Refuse a DCP folder whose metadata or shards are not all there (``IncompleteStepError``).

    Every byte range that ``.metadata`` records must lie inside an existing file: a missing shard
    (a rank crashed before writing it) or a truncated one (a copy or a disk cut short) is named
    with its rank. ``.metadata`` is a pickle: it is read by ``read_dcp_metadata``, which runs no
    code from it and refuses shards that are links or lie outside the folder; its non-tensor
    entries must load with ``weights_only=True`` (``check_plain_entries``). Taught in
    notebooks/05b_torchrun_elastic.ipynb, section 4.
    """
    folder = Path(path)
    try:
        check_plain_entries(folder, read_dcp_metadata(folder))
    except IncompleteStepError:
        raise
    except CheckpointError as exc:
        raise IncompleteStepError(folder, exc.problem, exc.fix) from None


def _steps_newest_first(root: Path) -> list[tuple[int, Path]]:
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_NAME.fullmatch(p.name))]
    return sorted(found, reverse=True)


def newest_complete_step(root: str | os.PathLike[str]) -> StepChoice:
    """The newest step folder under ``root`` that ``check_step_folder`` accepts.

    Folders still named ``.incomplete`` are never considered; newer complete-looking folders that
    fail the check are listed in ``refused`` with the reason. In a process group, rank 0 decides
    and every rank gets its answer (ranks on different nodes see the same shared folder, but a
    file system's view may lag). Taught in notebooks/05b_torchrun_elastic.ipynb, section 4.
    """
    choice = StepChoice(None, None)
    if not dist.is_initialized() or dist.get_rank() == 0:
        for step, path in _steps_newest_first(Path(root)):
            try:
                check_step_folder(path)
            except IncompleteStepError as exc:
                choice.refused.append(f"step {step}: {exc.problem}")
                continue
            choice = StepChoice(step, path, choice.refused)
            break
    if dist.is_initialized():
        box: list[Any] = [choice]
        dist.broadcast_object_list(box, src=0)
        choice = box[0]
    return choice


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _refuse_link(partial: Path) -> None:
    """A link (or a file) at ``step_N.incomplete`` was not made by ``save_step``: refuse it."""
    if partial.is_symlink() or (partial.exists() and not partial.is_dir()):
        kind = "a symbolic link" if partial.is_symlink() else "not a folder"
        raise CheckpointError(
            partial,
            f"is {kind}: save_step writes a step's shards into a folder of its own, and writing "
            "through this would put them wherever it points",
            "remove it (it was not made by save_step) and save again",
        )


def save_step(state: dict[str, Any], root: str | os.PathLike[str], step: int) -> Path:
    """Save ``state`` with ``dcp.save`` as step ``step`` under ``root``, visible only when complete.

    Call it on every rank. All ranks write into ``step_N.incomplete``; after a barrier rank 0
    renames the folder to ``step_N`` (replacing an older folder of that step, e.g. one refused as
    damaged) and a second barrier lets no rank run ahead of the rename. Taught in
    notebooks/05b_torchrun_elastic.ipynb, section 4.
    """
    root_path = Path(root)
    final = step_folder(root_path, step)
    partial = final.with_name(final.name + _INCOMPLETE)
    rank0 = not dist.is_initialized() or dist.get_rank() == 0
    if rank0:
        root_path.mkdir(parents=True, exist_ok=True)
        _refuse_link(partial)
        shutil.rmtree(partial, ignore_errors=True)  # a leftover of a crash during this step
        partial.mkdir()  # fails if something appeared there since: never write through it
    if dist.is_initialized():
        dist.barrier()  # nobody writes into the folder while rank 0 clears it
    _refuse_link(partial)  # every rank checks what it is about to write into
    dcp.save(state, checkpoint_id=partial)
    if dist.is_initialized():
        dist.barrier()  # every rank's shard is on disk (dcp.save's metadata, written last, too)
    if rank0:
        if final.exists():
            old = final.with_name(final.name + _REPLACED)
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(partial, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(partial, final)
        _fsync_dir(root_path)  # the rename itself survives a power cut
    if dist.is_initialized():
        dist.barrier()
    return final
