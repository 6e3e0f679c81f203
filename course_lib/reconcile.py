"""Bringing a checkpoint folder and its manifest into agreement when a manager opens it.

What a crash, a person or another tool leaves behind: temp files of an interrupted write
(removed), files a commit had still to delete (deleted), checkpoints deleted by hand (dropped
from the manifest, with a warning), a ``best_model`` that does not match (linked again),
checkpoint files the manifest does not list (reported, never deleted), a damaged manifest (kept
aside and rebuilt) and a folder with no manifest at all (its checkpoint files adopted).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from course_lib.checkpoint_files import (
    BEST_STEM,
    PRIMARY_PATTERN,
    SIDECAR_PATTERN,
    TEMP_PATTERN,
    sha256_file,
)
from course_lib.manager_errors import CheckpointFallbackWarning
from course_lib.manifest import (
    MANIFEST_NAME,
    empty_manifest,
    entry_from_file,
    files_of,
    link_best,
    read_manifest,
    tracked_files,
    write_manifest,
)
from course_lib.safe_io import CheckpointError, CorruptCheckpointError


def reconcile(folder: Path, *, best_metric: str) -> None:
    """Repair ``folder`` and its manifest; call it under the folder's lock (``FolderLock``).

    Made to be called by ``CheckpointManager.__init__``: its warnings point at the user's
    ``CheckpointManager(...)`` line. ``best_metric`` is only named in a warning.
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
        if manifest["checkpoints"]:
            warnings.warn(
                f"{folder} held {len(manifest['checkpoints'])} checkpoint file(s) "
                f"but no {MANIFEST_NAME} (the chapter's manager, or files copied in): adopted "
                "them, ordered by the epoch stored in each file.",
                stacklevel=3,
            )
    tracked = tracked_files(manifest)
    best = manifest.get("best")
    best_files = set((best or {}).get("files", {}))
    ours = tracked | best_files | {MANIFEST_NAME}
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
            path.unlink(missing_ok=True)  # an interrupted atomic_write: never committed
    if manifest["pending_delete"]:
        for name in manifest["pending_delete"]:
            if name not in tracked and name not in best_files:
                (folder / name).unlink(missing_ok=True)
        manifest["pending_delete"] = []
        changed = True
    for name, entry in list(manifest["checkpoints"].items()):
        missing = [f for f in files_of(entry) if not (folder / f).is_file()]
        if missing:
            warnings.warn(
                f"{folder / missing[0]} is listed in {MANIFEST_NAME} but missing "
                "(deleted by hand?): dropped it from the manifest.",
                CheckpointFallbackWarning,
                stacklevel=3,
            )
            del manifest["checkpoints"][name]
            changed = True
    if best is not None and not _best_is_current(folder, best):
        if _relink_best(folder, best, manifest, best_metric):
            changed = True
    tracked = tracked_files(manifest)
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
            stacklevel=3,
        )
    if changed:
        try:
            write_manifest(folder, manifest)
        except OSError as exc:
            exc.repaired_manifest = manifest  # type: ignore[attr-defined]  # usable for loading
            raise


def _best_is_current(folder: Path, best: Mapping[str, Any]) -> bool:
    source = best.get("source")
    for name, info in (best.get("files") or {}).items():
        path = folder / name
        if not path.is_file():
            return False
        src = folder / str(info.get("source_file") or "")
        if source and info.get("source_file") and src.is_file() and os.path.samefile(path, src):
            continue  # the hard link made from the committed checkpoint
        if path.stat().st_size != info["size"] or sha256_file(path) != info["sha256"]:
            return False
    return True


def _relink_best(
    folder: Path, best: dict[str, Any], manifest: dict[str, Any], best_metric: str
) -> bool:
    """Repair ``best_model.*`` after a save interrupted between its commit and the link."""
    entry = manifest["checkpoints"].get(best.get("source"))
    if entry is not None:
        try:
            link_best(folder, entry)
            return False
        except OSError:
            pass
    warnings.warn(
        f"{folder / next(iter(best['files']))} does not match {MANIFEST_NAME} "
        "and its source checkpoint is gone: the best-model pointer was dropped; load_best "
        f"ranks the remaining checkpoints by {best_metric!r}.",
        CheckpointFallbackWarning,
        stacklevel=4,
    )
    manifest["best"] = None
    return True


def _adopt_folder(folder: Path) -> dict[str, Any]:
    """A manifest for a folder without one, from the checkpoint files it holds."""
    manifest = empty_manifest()
    for path in sorted(folder.iterdir()):
        if PRIMARY_PATTERN.match(path.name):
            try:
                entry = entry_from_file(folder, path)
            except CheckpointError as exc:
                warnings.warn(f"not adopted: {exc}", CheckpointFallbackWarning, stacklevel=4)
                continue
            manifest["checkpoints"][entry["file"]] = entry
    best = folder / f"{BEST_STEM}.pth"
    if best.is_file():
        try:
            info = entry_from_file(folder, best)
        except CheckpointError as exc:
            warnings.warn(f"not adopted: {exc}", CheckpointFallbackWarning, stacklevel=4)
        else:
            source = next(
                (
                    e["file"]
                    for e in manifest["checkpoints"].values()
                    if e["sha256"] == info["sha256"]
                ),
                None,
            )
            manifest["best"] = {
                "source": source,
                "epoch": info["epoch"],
                "metrics": info["metrics"],
                "files": {best.name: {**info["files"][best.name], "source_file": source}},
            }
    return manifest
