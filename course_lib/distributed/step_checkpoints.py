"""Sharded step checkpoints that appear all at once: every rank's shard and the metadata, or nothing.

``dcp.save`` writes one file per rank and a ``.metadata`` file into a folder. A job killed half-way
through leaves a folder with some shards and no metadata, or (a disk fault, a copy cut short)
metadata whose shards are missing or shorter than the metadata says. So each step is written into
``step_000008.incomplete/``; after a barrier (every rank has written its shard) rank 0 renames it to
``step_000008/``, one ``rename`` that is atomic on a POSIX file system. A folder without the suffix
is complete; ``newest_complete_step`` still checks it against its metadata before trusting it and
falls back to the previous step when a shard is missing or truncated.

Taught in notebooks/05_data_parallel.ipynb, section 4.
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
from torch.distributed.checkpoint import FileSystemReader

from course_lib.safe_io import CheckpointError

__all__ = [
    "IncompleteStepError",
    "StepChoice",
    "check_step_folder",
    "newest_complete_step",
    "save_step",
    "step_folder",
]

_STEP_NAME = re.compile(r"^step_(\d{6})$")
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

    Taught in notebooks/05_data_parallel.ipynb, section 4.
    """
    return Path(root) / f"step_{step:06d}"


def _rank(name: str) -> str:
    match = re.match(r"__(\d+)_\d+\.distcp$", name)
    return f"rank {match.group(1)}'s shard {name}" if match else name


def check_step_folder(path: str | os.PathLike[str]) -> None:
    """Refuse a DCP folder whose metadata or shards are not all there (``IncompleteStepError``).

    Every byte range that ``.metadata`` records must lie inside an existing file: a missing shard
    (a rank crashed before writing it) or a truncated one (a copy or a disk cut short) is named
    with its rank. Taught in notebooks/05_data_parallel.ipynb, section 4.
    """
    folder = Path(path)
    if not (folder / ".metadata").is_file():
        raise IncompleteStepError(
            folder,
            "no .metadata file: the save did not finish on every rank",
            "load the previous step (newest_complete_step does), or save again",
        )
    try:
        metadata = FileSystemReader(folder).read_metadata()
    except Exception as exc:  # a damaged metadata pickle raises anything
        raise IncompleteStepError(
            folder,
            f".metadata cannot be read ({type(exc).__name__}: {exc})",
            "load the previous step (newest_complete_step does), or save again",
        ) from exc
    needed: dict[str, int] = {}
    for info in (metadata.storage_data or {}).values():
        name = str(info.relative_path)
        needed[name] = max(needed.get(name, 0), info.offset + info.length)
    for name, size in sorted(needed.items()):
        file = folder / name
        if not file.is_file():
            raise IncompleteStepError(
                folder,
                f"{_rank(name)} is missing (the metadata lists it)",
                "a rank crashed or its file was lost: load the previous step, or save again",
            )
        actual = file.stat().st_size
        if actual < size:
            raise IncompleteStepError(
                folder,
                f"{_rank(name)} is truncated: {actual} bytes, the metadata needs {size}",
                "the file was cut short (a full disk, a copy interrupted): load the previous step",
            )


def _steps_newest_first(root: Path) -> list[tuple[int, Path]]:
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_NAME.match(p.name))]
    return sorted(found, reverse=True)


def newest_complete_step(root: str | os.PathLike[str]) -> StepChoice:
    """The newest step folder under ``root`` that ``check_step_folder`` accepts.

    Folders still named ``.incomplete`` are never considered; newer complete-looking folders that
    fail the check are listed in ``refused`` with the reason. In a process group, rank 0 decides
    and every rank gets its answer (ranks on different nodes see the same shared folder, but a
    file system's view may lag). Taught in notebooks/05_data_parallel.ipynb, section 4.
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


def save_step(state: dict[str, Any], root: str | os.PathLike[str], step: int) -> Path:
    """Save ``state`` with ``dcp.save`` as step ``step`` under ``root``, visible only when complete.

    Call it on every rank. All ranks write into ``step_N.incomplete``; after a barrier rank 0
    renames the folder to ``step_N`` (replacing an older folder of that step, e.g. one refused as
    damaged) and a second barrier lets no rank run ahead of the rename. Taught in
    notebooks/05_data_parallel.ipynb, section 4.
    """
    root_path = Path(root)
    final = step_folder(root_path, step)
    partial = final.with_name(final.name + _INCOMPLETE)
    rank0 = not dist.is_initialized() or dist.get_rank() == 0
    if rank0:
        root_path.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(partial, ignore_errors=True)  # a leftover of a crash during this step
    if dist.is_initialized():
        dist.barrier()  # nobody writes into the folder while rank 0 clears it
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
