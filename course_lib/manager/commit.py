"""One save, as named steps: the order that makes a checkpoint crash-safe.

Read this third, after ``api`` and ``retention``. Under the folder's lock, ``commit`` runs:

1. ``_reread``: the manifest as it is now (another manager may have saved since), forgetting an
   earlier save of the same name (saving an epoch again replaces it);
2. ``_record_best_metric``: the best value ever committed, kept in the manifest (it outlives its
   checkpoint) and in the checkpoint itself, for resuming;
3. ``write_checkpoint_files``: the files, each written atomically with its SHA-256;
4. ``_plan_deletions``: what the retention policies no longer keep, moved to ``pending_delete``;
5. ``_write_commit``: the manifest write that *is* the commit (on failure the new files go);
6. ``_point_best_at``: ``best_model.*`` linked to the new checkpoint (``is_best=True``);
7. ``_delete_pending``: the old files deleted, only now that the new checkpoint is committed.

A crash before step 5 leaves the previous state (the new files are leftover temp or untracked
files, which ``reconcile`` removes or reports), with one exception: saving an epoch again
commits the removal of its earlier entry in step 1, so a crash then loses that epoch's older
save (never another checkpoint). A crash after step 5 leaves the new state with files still
to delete, which ``reconcile`` deletes on the next start.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from course_lib.manager.errors import CheckpointFallbackWarning, CheckpointWriteError, write_error
from course_lib.manager.files import FileRecord, link_best, write_checkpoint_files
from course_lib.manager.manifest import (
    BestPointer,
    CheckpointEntry,
    Manifest,
    new_entry,
    write_manifest,
)
from course_lib.manager.retention import RetentionPolicy, best_so_far

__all__ = ["SaveRequest", "commit"]


@dataclass(frozen=True)
class SaveRequest:
    """One call of ``save``: the file name, and whether it is the best or protected."""

    name: str
    is_best: bool = False
    protect: bool = False


def commit(
    folder: Path,
    checkpoint: dict[str, Any],
    request: SaveRequest,
    policy: RetentionPolicy,
    *,
    manifest_of: Callable[[], Manifest],
    lock: Callable[[], AbstractContextManager[Any]],
    say: Callable[[str], None],
) -> None:
    """Write ``checkpoint`` as ``folder/request.name`` and commit it; prune what is no longer kept.

    Every ``OSError`` becomes a ``CheckpointWriteError`` saying that nothing was committed and
    naming the newest checkpoint that still is.
    """
    path = folder / request.name
    newest: str | None = None
    try:
        with lock():
            manifest = _reread(folder, manifest_of, request.name)
            newest = manifest.newest()
            _record_best_metric(manifest, checkpoint, policy)
            files = write_checkpoint_files(folder, checkpoint, request.name)
            entry = new_entry(
                request.name,
                files,
                checkpoint["epoch"],
                checkpoint.get("step"),
                checkpoint.get("metrics"),
                protected=request.protect,
            )
            manifest.checkpoints[entry.file] = entry
            if request.is_best:
                manifest.best = BestPointer.of(entry)
            _plan_deletions(folder, manifest, policy, entry, files)
            _write_commit(folder, manifest, files)
            say(f"Saved checkpoint: {path}")
            if request.is_best:
                _point_best_at(folder, entry, say)
            _delete_pending(folder, manifest.pending_delete, say)
    except OSError as exc:
        if isinstance(exc, CheckpointWriteError):
            raise
        raise write_error(path, exc, newest) from exc


def _reread(folder: Path, manifest_of: Callable[[], Manifest], name: str) -> Manifest:
    """The manifest under the lock; an earlier save of ``name`` is forgotten (and committed so)."""
    manifest = manifest_of()
    if name in manifest.checkpoints:
        del manifest.checkpoints[name]
        write_manifest(folder, manifest)
    return manifest


def _record_best_metric(
    manifest: Manifest, checkpoint: dict[str, Any], policy: RetentionPolicy
) -> None:
    best = best_so_far(
        manifest.best_metric,
        manifest.checkpoints.values(),
        checkpoint["metrics"],
        best_metric=policy.best_metric,
        mode=policy.mode,
    )
    manifest.best_metric = best
    checkpoint["best_metric"] = best.value


def _plan_deletions(
    folder: Path,
    manifest: Manifest,
    policy: RetentionPolicy,
    entry: CheckpointEntry,
    files: Mapping[str, FileRecord],
) -> None:
    """Move the checkpoints no policy keeps from the manifest's list to ``pending_delete``.

    The new checkpoint, and the source of ``best_model``, are always kept.
    """
    keep = [entry.file]
    if manifest.best is not None and manifest.best.source:
        keep.append(manifest.best.source)
    reasons = policy.reasons(manifest.checkpoints.values(), keep=keep)
    pending = [n for n in manifest.pending_delete if n not in files and (folder / n).exists()]
    for name, why in reasons.items():
        if not why:
            pending.extend(manifest.checkpoints.pop(name).files)
    manifest.pending_delete = pending


def _write_commit(folder: Path, manifest: Manifest, files: Mapping[str, FileRecord]) -> None:
    """The manifest write that commits; if it fails, the new files are removed again."""
    try:
        write_manifest(folder, manifest)
    except BaseException:
        for written in files:
            (folder / written).unlink(missing_ok=True)
        raise


def _point_best_at(folder: Path, entry: CheckpointEntry, say: Callable[[str], None]) -> None:
    """Link ``best_model.*`` to the committed checkpoint; a failure only warns (it is committed)."""
    try:
        link_best(folder, BestPointer.of(entry).files)
        say(f"Updated best model: {folder / BestPointer.of(entry).file}")
    except OSError as exc:
        warnings.warn(
            f"{folder / entry.file} was saved, but best_model could not be updated ({exc}); "
            "load_best loads the checkpoint itself.",
            CheckpointFallbackWarning,
            stacklevel=5,  # _point_best_at, commit, save's write, save: the caller
        )


def _delete_pending(folder: Path, pending: list[str], say: Callable[[str], None]) -> None:
    for name in pending:
        (folder / name).unlink(missing_ok=True)
        say(f"Deleted old checkpoint: {folder / name}")
