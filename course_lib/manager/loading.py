"""Reading checkpoints back: verified against the manifest, with fallback to an older one.

For maintainers (read it after ``commit``). ``read_latest`` and ``read_best`` choose the
candidates, ``first_good`` reads the first one whose files match their manifest record
(``verify_files``), warning about each one skipped, and ``apply`` puts the chosen checkpoint
into the model and its training state. The model is touched only once a checkpoint has been
read in full, so a failed load leaves it as it was.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import torch
from torch import nn

from course_lib.checkpoint import BEST_STEM, apply_checkpoint_from
from course_lib.manager.errors import CheckpointFallbackWarning
from course_lib.manager.files import (
    DAMAGED_FILE_FIX,
    MANIFEST_NAME,
    check_file,
    read_checkpoint_files,
)
from course_lib.manager.manifest import BestPointer, CheckpointEntry, Manifest
from course_lib.manager.retention import rank_best
from course_lib.safe_io import (
    CheckpointError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    ForeignFileError,
    MapLocation,
)

__all__ = [
    "READ_ATTEMPTS",
    "LoadOptions",
    "Target",
    "apply",
    "read_best",
    "read_file",
    "read_latest",
    "verify_files",
]

READ_ATTEMPTS = 20  # re-reads of a manifest that other processes keep changing under a reader

Record = CheckpointEntry | BestPointer


@dataclass(frozen=True)
class _Attempt:
    """A file ``first_good`` tries: the path, its manifest record, and why it comes next.

    (Not retention's ``Candidate``, a checkpoint a policy may keep or delete.)
    """

    path: Path
    record: Record
    why: str


class LoadOptions(TypedDict, total=False):
    """The keyword options of ``load``, ``load_latest`` and ``load_best``, defined once.

    ``scaler``: a ``torch.amp.GradScaler`` to restore. ``restore_rng`` (default ``True``):
    restore the Python, NumPy and torch random generators, so that a resumed run continues the
    run that was interrupted; pass ``False`` when you only evaluate (e.g. comparing epochs).
    """

    scaler: Any
    restore_rng: bool


@dataclass(frozen=True)
class Target:
    """What a load restores into: the model, and the training state that comes with it."""

    model: nn.Module
    optimizer: torch.optim.Optimizer | None
    scheduler: Any
    scaler: Any = None
    restore_rng: bool = True

    @classmethod
    def of(
        cls,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        scheduler: Any,
        options: LoadOptions,
    ) -> Target:
        unknown = set(options) - set(LoadOptions.__annotations__)
        if unknown:
            raise TypeError(
                f"unexpected keyword argument(s) {sorted(unknown)}; the load options are "
                f"{sorted(LoadOptions.__annotations__)}."
            )
        return cls(model, optimizer, scheduler, **options)


def verify_files(path: Path, record: Record) -> None:
    """Check each file of ``record`` beside ``path`` against its recorded size and SHA-256
    (``files.check_file``: it raises ``CheckpointNotFoundError`` or ``CorruptCheckpointError``,
    naming the file). A ``"zip"`` record's SHA-256 covers all but the entries' data
    (``files.FileRecord``): ``read_checkpoint_files``, which reads the file next, checks the
    data against the CRC-32s this SHA-256 covers.
    """
    for name, info in record.files.items():
        check_file(path.parent / name, info)


def read_file(path: Path, record: Record | None, device: MapLocation) -> dict[str, Any]:
    """Read (never apply) one checkpoint: checked against ``record`` if given, weights_only."""
    try:
        if record is not None:
            verify_files(path, record)
        return read_checkpoint_files(path, device)
    except CorruptCheckpointError as exc:
        if record is None:
            raise
        # Data that fails its CRC-32 (which a "zip" record covers): the manager's own fix.
        raise CorruptCheckpointError(exc.path, exc.problem, DAMAGED_FILE_FIX) from None
    except FileNotFoundError as exc:  # deleted between the manifest and here (a pruning writer)
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointNotFoundError(
            path,
            f"listed in {MANIFEST_NAME} but gone ({exc.strerror}).",
            "another process pruned it: load again to get the newer checkpoint.",
        ) from None


def first_good(
    candidates: Sequence[_Attempt],
    device: MapLocation,
    none_loads: Callable[[list[CheckpointError]], CheckpointError],
) -> tuple[Path, dict[str, Any]]:
    """The first of ``candidates`` that reads and verifies.

    Each one skipped is named in a ``CheckpointFallbackWarning`` that says what is tried next
    (the next candidate's note); if none reads, ``none_loads(errors)`` is raised.
    """
    problems: list[CheckpointError] = []
    for index, attempt in enumerate(candidates):
        try:
            return attempt.path, read_file(attempt.path, attempt.record, device)
        except (CorruptCheckpointError, CheckpointNotFoundError, ForeignFileError) as exc:
            problems.append(exc)
            if index + 1 < len(candidates):
                following = candidates[index + 1]
                then = f"Loading {following.path.name}, {following.why}."
            else:
                then = "No other checkpoint is left to try."
            warnings.warn(
                f"skipped {exc.path}: {exc.problem} {then}", CheckpointFallbackWarning, stacklevel=4
            )
    raise none_loads(problems)


def read_latest(
    folder: Path, manifest_of: Callable[[], Manifest], device: MapLocation
) -> tuple[Path, dict[str, Any]]:
    """The newest committed checkpoint that verifies, falling back to older ones with a warning.

    Another process may commit and prune between our reading the manifest and the file: then
    the manifest has changed, and we read again rather than report a missing file.
    """
    for attempt in range(READ_ATTEMPTS):
        manifest = manifest_of()
        entries = manifest.ordered(newest_first=True)
        if not entries:
            raise CheckpointNotFoundError(
                folder,
                f"no checkpoint has been committed here ({MANIFEST_NAME} lists none).",
                "save one with manager.save(...) first, or pass the folder that holds your "
                "checkpoints.",
            )

        def none_loads(problems: list[CheckpointError], count: int = len(entries)) -> Exception:
            return CorruptCheckpointError(
                folder,
                f"none of the {count} checkpoints in {MANIFEST_NAME} loads: "
                + "; ".join(f"{p.path.name}: {p.problem}" for p in problems),
                "restore the files from a backup, or start training afresh in a new folder.",
            )

        failure: CheckpointError | None = None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                found = first_good(
                    [_Attempt(folder / e.file, e, "the previous checkpoint") for e in entries],
                    device,
                    none_loads,
                )
            except CheckpointError as exc:
                failure = exc
        if (failure or caught) and attempt < READ_ATTEMPTS - 1:
            if manifest_of().checkpoints.keys() != manifest.checkpoints.keys():
                continue  # a newer commit: read that one instead
        for warning in caught:
            warnings.warn(warning.message, warning.category, stacklevel=3)
        if failure is not None:
            raise failure
        return found
    raise AssertionError("unreachable: the last attempt returns or raises")


def read_best(
    folder: Path, manifest: Manifest, device: MapLocation, *, best_metric: str, mode: str
) -> tuple[Path, dict[str, Any]]:
    """``best_model`` (the last save with ``is_best=True``), else the best by ``best_metric``.

    A damaged ``best_model`` falls back to the checkpoint it was linked from, then to the next
    best intact checkpoint by ``best_metric``, each with a warning: ``best_model`` is a hard link,
    not a backup, so one flipped bit damages both of its names.
    """
    candidates: list[_Attempt] = []
    if manifest.best is not None:
        best = manifest.best
        candidates.append(_Attempt(folder / best.file, best, "the best_model file"))
        source = manifest.checkpoints.get(best.source or "")
        if source is not None:
            why = "the checkpoint it was made from"
            candidates.append(_Attempt(folder / source.file, source, why))
    listed = {attempt.path.name for attempt in candidates}
    for entry in rank_best(manifest.checkpoints.values(), best_metric, mode):
        if entry.file not in listed:
            note = f"the next best checkpoint by {best_metric!r}"
            candidates.append(_Attempt(folder / entry.file, entry, note))
    if not candidates:
        raise CheckpointNotFoundError(
            folder / f"{BEST_STEM}.pth",
            f"no best checkpoint: no save had is_best=True and no checkpoint has a "
            f"metric {best_metric!r}.",
            "pass is_best=True to manager.save(...) for the best epoch, or metrics that "
            f"include {best_metric!r} (see best_metric=).",
        )

    def none_loads(problems: list[CheckpointError]) -> Exception:
        return CorruptCheckpointError(
            folder,
            "no best checkpoint loads: "
            + "; ".join(f"{p.path.name}: {p.problem}" for p in problems),
            "restore the files from a backup; manager.load_latest() may still find a good one.",
        )

    return first_good(candidates, device, none_loads)


def apply(
    checkpoint: dict[str, Any], path: Path, target: Target, say: Callable[[str], None]
) -> dict[str, Any]:
    """Put ``checkpoint`` (read from ``path``) into ``target``; return it."""
    apply_checkpoint_from(
        checkpoint,
        path,
        target.model,
        target.optimizer,
        target.scheduler,
        scaler=target.scaler,
        restore_rng=target.restore_rng,
    )
    say(f"Loaded checkpoint: {path}")
    say(f"  Epoch: {checkpoint.get('epoch')}")
    say(f"  Metrics: {checkpoint.get('metrics', 'N/A')}")
    return checkpoint
