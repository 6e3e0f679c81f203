"""Bringing a checkpoint folder and its manifest into agreement when a manager opens it.

For maintainers. What a crash, a person or another tool leaves behind: temp files of an
interrupted write (removed), files a commit had still to delete (deleted), checkpoints deleted
by hand (dropped from the manifest, with a warning), a ``best_model`` that does not match
(linked again), checkpoint files the manifest does not list (reported, never deleted), a damaged
manifest (kept aside and rebuilt) and a folder with no manifest at all (its checkpoint files
adopted, see ``entry_from_file``).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from course_lib.checkpoint import BEST_STEM
from course_lib.manager.errors import CheckpointFallbackWarning
from course_lib.manager.files import (
    MANIFEST_NAME,
    PRIMARY_PATTERN,
    SIDECAR_PATTERN,
    TEMP_PATTERN,
    file_matches,
    link_best,
    record_of,
    sidecar_name,
)
from course_lib.manager.manifest import (
    BestPointer,
    CheckpointEntry,
    Manifest,
    new_entry,
    read_manifest,
    write_manifest,
)
from course_lib.safe_io import (
    CheckpointError,
    CorruptCheckpointError,
    ForeignFileError,
    safe_load,
)

__all__ = ["entry_from_file", "reconcile"]


def reconcile(folder: Path, *, best_metric: str) -> None:
    """Repair ``folder`` and its manifest; call it under the folder's lock (``FolderLock``).

    Made to be called by ``CheckpointManager.__init__``: its warnings point at the user's
    ``CheckpointManager(...)`` line. ``best_metric`` is only named in a warning. If the
    repaired manifest cannot be written (a full disk), the ``OSError`` carries it as
    ``repaired_manifest``, for loading meanwhile.
    """
    changed = False
    manifest_path = folder / MANIFEST_NAME
    try:
        manifest = read_manifest(folder)
    except CorruptCheckpointError as exc:
        damaged = manifest_path.with_name(MANIFEST_NAME + ".damaged")
        os.replace(manifest_path, damaged)
        warnings.warn(
            f"{exc.problem} Kept it as {damaged} and rebuilt the manifest from the checkpoint "
            "files in the folder (their metrics are read from the files).",
            CheckpointFallbackWarning,
            stacklevel=3,
        )
        manifest = None
    if manifest is None:
        manifest = _adopt_folder(folder)
        changed = True  # a folder always has a manifest once a manager opened it
        if manifest.checkpoints:
            warnings.warn(
                f"{folder} held {len(manifest.checkpoints)} checkpoint file(s) "
                f"but no {MANIFEST_NAME} (the chapter's manager, or files copied in): adopted "
                "them, ordered by the epoch stored in each file.",
                stacklevel=3,
            )
    _remove_temp_files(folder, manifest)
    if manifest.pending_delete:
        _finish_deletions(folder, manifest)
        changed = True
    if _drop_missing(folder, manifest):
        changed = True
    if manifest.best is not None and not _best_is_current(folder, manifest.best):
        if _relink_best(folder, manifest, best_metric):
            changed = True
    _report_untracked(folder, manifest)
    if changed:
        try:
            write_manifest(folder, manifest)
        except OSError as exc:
            exc.repaired_manifest = manifest  # type: ignore[attr-defined]  # usable for loading
            raise


def _remove_temp_files(folder: Path, manifest: Manifest) -> None:
    """Temp files of an interrupted ``atomic_write`` of ours: never committed, so removed."""
    best_files = set(manifest.best.files) if manifest.best else set()
    ours = manifest.tracked_files() | best_files | {MANIFEST_NAME}
    for path in folder.iterdir():
        match = TEMP_PATTERN.match(path.name)
        if not match:
            continue
        target = match["target"]
        if (
            target in ours
            or PRIMARY_PATTERN.match(target)
            or SIDECAR_PATTERN.match(target)
            or target.startswith(BEST_STEM + ".")
        ):
            path.unlink(missing_ok=True)


def _finish_deletions(folder: Path, manifest: Manifest) -> None:
    """Delete what a commit had still to delete when it was interrupted."""
    keep = manifest.tracked_files() | (set(manifest.best.files) if manifest.best else set())
    for name in manifest.pending_delete:
        if name not in keep:
            (folder / name).unlink(missing_ok=True)
    manifest.pending_delete = []


def _drop_missing(folder: Path, manifest: Manifest) -> bool:
    """Drop checkpoints whose files were deleted by hand; ``True`` if any was."""
    dropped = False
    for name, entry in list(manifest.checkpoints.items()):
        missing = [f for f in entry.files if not (folder / f).is_file()]
        if missing:
            warnings.warn(
                f"{folder / missing[0]} is listed in {MANIFEST_NAME} but missing "
                "(deleted by hand?): dropped it from the manifest.",
                CheckpointFallbackWarning,
                stacklevel=4,
            )
            del manifest.checkpoints[name]
            dropped = True
    return dropped


def _report_untracked(folder: Path, manifest: Manifest) -> None:
    tracked = manifest.tracked_files()
    untracked = sorted(
        p.name
        for p in folder.iterdir()
        if (PRIMARY_PATTERN.match(p.name) or SIDECAR_PATTERN.match(p.name))
        and p.name not in tracked
    )
    if untracked:
        warnings.warn(
            f"{folder}: {', '.join(untracked)} not in {MANIFEST_NAME} (a save "
            "interrupted before it was committed, or copied in by hand): ignored by "
            "load_latest and never deleted. To use one: manager.adopt(name); to drop it: "
            "delete the file.",
            stacklevel=4,
        )


def _best_is_current(folder: Path, best: BestPointer) -> bool:
    for name, info in best.files.items():
        path = folder / name
        if not path.is_file():
            return False
        src = folder / str(info.source_file or "")
        if best.source and info.source_file and src.is_file() and os.path.samefile(path, src):
            continue  # the hard link made from the committed checkpoint
        if not file_matches(path, info):
            return False
    return True


def _relink_best(folder: Path, manifest: Manifest, best_metric: str) -> bool:
    """Repair ``best_model.*`` after a save interrupted between its commit and the link.

    ``True`` if the pointer had to be dropped (its source checkpoint is gone).
    """
    best = manifest.best
    assert best is not None
    entry = manifest.checkpoints.get(best.source or "")
    if entry is not None:
        try:
            link_best(folder, BestPointer.of(entry).files)
            return False
        except OSError:
            pass
    warnings.warn(
        f"{folder / best.file} does not match {MANIFEST_NAME} "
        "and its source checkpoint is gone: the best-model pointer was dropped; load_best "
        f"ranks the remaining checkpoints by {best_metric!r}.",
        CheckpointFallbackWarning,
        stacklevel=4,
    )
    manifest.best = None
    return True


def entry_from_file(
    folder: Path, path: Path, metrics: Mapping[str, float] | None = None
) -> CheckpointEntry:
    """A manifest entry for an existing checkpoint file (reads it once, weights_only)."""
    files = [path.name]
    if path.suffix == ".safetensors":
        files.append(sidecar_name(path.name))
        state = safe_load(folder / files[1], map_location="cpu")
    else:
        state = safe_load(path, map_location="cpu")
    if not isinstance(state, Mapping):
        raise ForeignFileError(
            path,
            f"holds a {type(state).__name__}, not a checkpoint dict.",
            "adopt checkpoint files only.",
        )
    match = PRIMARY_PATTERN.match(path.name)
    epoch = state.get("epoch", int(match["epoch"]) if match else None)
    step = state.get("step", int(match["step"]) if match and match["step"] else None)
    raw_metrics = metrics if metrics is not None else state.get("metrics") or {}
    if not raw_metrics and isinstance(state.get("loss"), (int, float)):
        raw_metrics = {"loss": state["loss"]}
    records = {name: record_of(folder / name) for name in files}
    return new_entry(path.name, records, epoch, step, raw_metrics, adopted=True)


def _adopt_folder(folder: Path) -> Manifest:
    """A manifest for a folder without one, from the checkpoint files it holds."""
    manifest = Manifest()
    for path in sorted(folder.iterdir()):
        if PRIMARY_PATTERN.match(path.name):
            try:
                entry = entry_from_file(folder, path)
            except CheckpointError as exc:
                warnings.warn(f"not adopted: {exc}", CheckpointFallbackWarning, stacklevel=4)
                continue
            manifest.checkpoints[entry.file] = entry
    best = folder / f"{BEST_STEM}.pth"
    if best.is_file():
        try:
            info = entry_from_file(folder, best)
        except CheckpointError as exc:
            warnings.warn(f"not adopted: {exc}", CheckpointFallbackWarning, stacklevel=4)
        else:
            source = next(
                (e.file for e in manifest.checkpoints.values() if e.sha256 == info.sha256), None
            )
            record = info.files[best.name]
            manifest.best = BestPointer(
                source=source,
                epoch=info.epoch,
                step=info.step,
                metrics=info.metrics,
                files={best.name: replace(record, source_file=source)},
            )
    return manifest
