"""A checkpoint manager you can trust (chapter 6.3.8): numbered files, a manifest, retention policies.

The chapter's ``CheckpointManager`` keeps the calls it teaches (``save``, ``load``, ``load_best``,
``load_latest``, ``list_checkpoints``) but has three flaws: it orders checkpoints by file ctime
(one ``chmod``, copy or restore reorders them, and cleanup can delete the file it has just
written), it writes with a plain ``torch.save`` (a crash leaves a truncated file under the real
name), and ``list_checkpoints`` unpickles every file just to print its epoch.

This one keeps the same calls and fixes them:

- files are named ``checkpoint_epoch_{epoch:04d}.pth`` and ordered by ``(epoch, step)`` from the
  manifest, never by file times;
- every write goes through ``safe_io.atomic_write`` (unique temp file, fsync, ``os.replace``,
  directory fsync); a checkpoint counts as *committed* once ``manifest.json`` (also written
  atomically) lists it with its size and SHA-256;
- retention is the union of policies (latest ``max_to_keep``, best ``keep_best`` by a named metric,
  every ``keep_every``-th epoch, ``protect=True``); files are deleted only after the new checkpoint
  is committed;
- on start the manager reconciles the manifest with the folder (leftover temp files removed,
  files deleted by hand dropped with a warning, untracked files reported); a lock file
  (``fcntl.flock``) makes two managers on one folder take turns;
- ``load_latest`` verifies the checksum and falls back to the newest good checkpoint with a
  ``CheckpointFallbackWarning`` naming the bad file;
- optionally the weights go to a ``.safetensors`` file (memory-mapped on load) beside a small
  ``.train_state.pth`` sidecar for the optimizer, scheduler, RNG states and counters;
- optionally ``async_save=True`` copies the state to CPU memory and writes it in one background
  thread, so training continues during the write.

The parts live in their own modules: ``checkpoint_files`` (names, durable writes, reading),
``manifest`` (the JSON record, checksums, the lock, ``best_model``), ``reconcile`` (repairing a
folder on start), ``retention`` (the policies), ``async_save`` (the background writer) and
``manager_errors``; this module puts them together.
"""

from __future__ import annotations

import errno
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
from torch import nn

from course_lib.async_save import BackgroundWriter
from course_lib.checkpoint import (
    MALFORMED_FIX,
    CheckpointFieldError,
    apply_checkpoint,
    build_checkpoint,
)
from course_lib.checkpoint_files import (
    BEST_STEM,
    FORMATS,
    SIDECAR_SUFFIX,
    checkpoint_filename,
    read_checkpoint_files,
    write_checkpoint_files,
)
from course_lib.display import format_table
from course_lib.manager_errors import CheckpointFallbackWarning, CheckpointWriteError, write_error
from course_lib.manifest import (
    MANIFEST_NAME,
    FolderLock,
    best_record,
    entry_from_file,
    files_of,
    link_best,
    make_entry,
    newest_committed,
    read_manifest_or_empty,
    record_for,
    verify_files,
    write_manifest,
)
from course_lib.reconcile import reconcile
from course_lib.retention import best_so_far, order_key, retention_reasons
from course_lib.safe_io import (
    CheckpointError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    ForeignFileError,
    MapLocation,
)

READ_ATTEMPTS = 5  # re-reads of a manifest that other processes keep changing under a reader


class CheckpointManager:
    """Save numbered checkpoints, keep the ones the retention policies want, load them back.

    The chapter's calls work as written::

        manager = CheckpointManager('checkpoints', max_to_keep=5)
        manager.save(model, optimizer, scheduler, epoch,
                     metrics={'train_loss': train_loss, 'val_loss': val_loss}, is_best=is_best)
        checkpoint = manager.load_latest(model, optimizer, scheduler)
        start_epoch = checkpoint['epoch'] + 1

    Keyword arguments add the rest: ``keep_best`` checkpoints ranked by ``metrics[best_metric]``
    (``mode='min'`` or ``'max'``), ``keep_every`` (keep epochs 9, 19, ... for ``10``),
    ``format='safetensors'`` (weights in a memory-mappable ``.safetensors`` file, the training
    state in a ``.train_state.pth`` sidecar), ``async_save=True`` (``save`` returns once the
    state is copied to CPU memory; a background thread writes it; ``wait()`` blocks until it
    is on disk; a failure there is raised by the next ``save``, ``wait`` or ``load``; the
    manager keeps that CPU copy's memory for the next save, one state's worth) and
    ``verbose=True`` (print what happens, as the chapter did).
    """

    def __init__(
        self,
        checkpoint_dir: str | os.PathLike[str],
        max_to_keep: int | None = 5,
        *,
        keep_best: int = 1,
        best_metric: str = "val_loss",
        mode: str = "min",
        keep_every: int | None = None,
        format: str = "torch",
        async_save: bool = False,
        verbose: bool = False,
        lock_timeout: float | None = 60.0,
    ) -> None:
        if max_to_keep is not None and max_to_keep < 1:
            raise ValueError(
                f"max_to_keep={max_to_keep!r}: keep at least the latest checkpoint "
                "(max_to_keep=1), or pass None to keep every checkpoint."
            )
        if keep_best < 0:
            raise ValueError(f"keep_best={keep_best!r} must be 0 (off) or more.")
        if mode not in ("min", "max"):
            raise ValueError(f"mode={mode!r} must be 'min' (losses) or 'max' (accuracies).")
        if keep_every is not None and keep_every < 1:
            raise ValueError(f"keep_every={keep_every!r} must be None (off) or 1 or more.")
        if format not in FORMATS:
            raise ValueError(f"format={format!r} must be one of {FORMATS}.")
        self.checkpoint_dir = Path(checkpoint_dir)
        self.max_to_keep = max_to_keep
        self.keep_best = keep_best
        self.best_metric = best_metric
        self.mode = mode
        self.keep_every = keep_every
        self.format = format
        self.async_save = async_save
        self.verbose = verbose
        self.lock_timeout = lock_timeout
        self.read_only = False
        # The repaired manifest a full disk kept us from writing: what loading uses meanwhile.
        self._unwritten_manifest: dict[str, Any] | None = None
        self._background = BackgroundWriter()
        try:
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise write_error(self.checkpoint_dir, exc, None) from exc
        try:
            with self._exclusive():
                reconcile(self.checkpoint_dir, best_metric=self.best_metric)
        except OSError as exc:
            # A folder we may read but not write (a shared results folder), or a full disk:
            # the repair waits, and loading still works.
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                self._unwritten_manifest = getattr(exc, "repaired_manifest", None)
                warnings.warn(
                    f"{self.checkpoint_dir}: the disk is full, so the folder's repairs were not "
                    "written; loading works, and saving will fail until space is freed.",
                    stacklevel=2,
                )
            elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                self.read_only = True
            else:
                raise

    def __repr__(self) -> str:
        return (
            f"CheckpointManager({str(self.checkpoint_dir)!r}, max_to_keep={self.max_to_keep}, "
            f"keep_best={self.keep_best}, best_metric={self.best_metric!r}, mode={self.mode!r}, "
            f"keep_every={self.keep_every}, format={self.format!r}, "
            f"async_save={self.async_save})"
        )

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.wait()
        else:
            self._background.join()

    @property
    def manifest_path(self) -> Path:
        """``<checkpoint_dir>/manifest.json``: the list of committed checkpoints."""
        return self.checkpoint_dir / MANIFEST_NAME

    def _say(self, message: str) -> None:
        if self.verbose:
            print(message)

    def _exclusive(self) -> FolderLock:
        """The folder's lock, for ``with``: one manager at a time commits or reconciles."""
        try:
            return FolderLock(self.checkpoint_dir, timeout=self.lock_timeout)
        except OSError as exc:
            raise write_error(self.checkpoint_dir, exc, None) from exc

    def _manifest(self) -> dict[str, Any]:
        if self._unwritten_manifest is not None and not self.manifest_path.exists():
            return self._unwritten_manifest
        return read_manifest_or_empty(self.checkpoint_dir)

    def _retention(
        self, manifest: Mapping[str, Any], keep: Iterable[str] = ()
    ) -> dict[str, list[str]]:
        """``retention_reasons`` with this manager's policies; ``best_model``'s source is kept."""
        best_source = (manifest.get("best") or {}).get("source")
        return retention_reasons(
            manifest["checkpoints"].values(),
            max_to_keep=self.max_to_keep,
            keep_best=self.keep_best,
            best_metric=self.best_metric,
            mode=self.mode,
            keep_every=self.keep_every,
            keep=[*keep, *([best_source] if best_source else [])],
        )

    def adopt(self, filename: str, *, metrics: Mapping[str, float] | None = None) -> dict:
        """Track a checkpoint file that is in the folder but not in the manifest; return its entry.

        For a checkpoint copied in by hand, or one whose save was interrupted just before its
        commit. The file is read once (weights_only) for its epoch and metrics.
        """
        self.wait()
        path = self.checkpoint_dir / Path(filename).name
        with self._exclusive():
            manifest = self._manifest()
            entry = entry_from_file(self.checkpoint_dir, path, metrics)
            manifest["checkpoints"][entry["file"]] = entry
            write_manifest(self.checkpoint_dir, manifest)
        return entry

    # -- saving -------------------------------------------------------------------------------

    def save(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        scheduler: Any,
        epoch: int,
        metrics: Mapping[str, float] | None,
        is_best: bool = False,
        filename: str | None = None,
        *,
        step: int | None = None,
        scaler: Any = None,
        extra: Mapping[str, Any] | None = None,
        protect: bool = False,
    ) -> Path:
        """Save a full checkpoint for ``epoch``; return its path.

        The file is complete on disk and listed in the manifest before any old checkpoint is
        deleted. ``is_best=True`` also points ``best_model.pth`` at it (a hard link, so no extra
        space). ``protect=True`` keeps it whatever the policies say. With ``async_save=True``
        the path is returned once the state is copied to CPU memory; call ``wait()`` to know it
        is on disk. A previous background save's failure is raised here, before saving.
        """
        self.wait()
        name = filename or checkpoint_filename(epoch, step, format=self.format)
        if self.format == "safetensors" and not name.endswith(".safetensors"):
            name = Path(name).stem + ".safetensors"
        name = Path(name).name
        checkpoint = build_checkpoint(
            model,
            optimizer,
            scheduler,
            epoch=epoch,
            step=step,
            metrics=metrics,
            scaler=scaler,
            extra=extra,
        )
        checkpoint["timestamp"] = datetime.now(UTC).isoformat()
        path = self.checkpoint_dir / name
        if not self.async_save:
            self._commit(checkpoint, name, is_best, protect)
            return path
        self._background.start(
            lambda snapshot: self._commit(snapshot, name, is_best, protect),
            checkpoint,
            name=f"checkpoint-save-{name}",
        )
        return path

    def wait(self) -> None:
        """Block until the background save (if any) is on disk; raise its error if it failed."""
        self._background.wait()

    def _commit(
        self, checkpoint: Mapping[str, Any], name: str, is_best: bool, protect: bool
    ) -> None:
        path = self.checkpoint_dir / name
        newest = None
        try:
            with self._exclusive():
                # Re-read under the lock: another manager may have saved since.
                manifest = self._manifest()
                newest = newest_committed(manifest)
                if name in manifest["checkpoints"]:  # saving this epoch again replaces it
                    del manifest["checkpoints"][name]
                    write_manifest(self.checkpoint_dir, manifest)
                    newest = newest_committed(manifest)
                # The best value ever committed here, this save included: kept in the manifest
                # (it survives the deletion of its checkpoint) and in the file, for resuming.
                best = best_so_far(
                    manifest.get("best_metric"),
                    manifest["checkpoints"].values(),
                    checkpoint["metrics"],
                    best_metric=self.best_metric,
                    mode=self.mode,
                )
                manifest["best_metric"] = {
                    "name": self.best_metric,
                    "mode": self.mode,
                    "value": best,
                }
                checkpoint["best_metric"] = best
                files = write_checkpoint_files(self.checkpoint_dir, checkpoint, name)
                entry = make_entry(
                    name,
                    files,
                    checkpoint["epoch"],
                    checkpoint.get("step"),
                    checkpoint.get("metrics") or {},
                    protect,
                )
                entries = manifest["checkpoints"]
                entries[name] = entry
                if is_best:
                    manifest["best"] = best_record(entry)
                reasons = self._retention(manifest, keep=[name])
                doomed = [n for n, why in reasons.items() if not why]
                pending = [
                    n
                    for n in manifest["pending_delete"]
                    if n not in files and (self.checkpoint_dir / n).exists()
                ]
                for old in doomed:
                    pending.extend(files_of(entries.pop(old)))
                manifest["pending_delete"] = pending
                try:
                    write_manifest(self.checkpoint_dir, manifest)  # the commit
                except BaseException:
                    for written in files:
                        (self.checkpoint_dir / written).unlink(missing_ok=True)
                    raise
                self._say(f"Saved checkpoint: {path}")
                if is_best:
                    try:
                        link_best(self.checkpoint_dir, entry)
                        best_file = BEST_STEM + Path(name).suffix
                        self._say(f"Updated best model: {self.checkpoint_dir / best_file}")
                    except OSError as exc:
                        warnings.warn(
                            f"{path} was saved, but best_model could not be updated ({exc}); "
                            "load_best loads the checkpoint itself.",
                            CheckpointFallbackWarning,
                            stacklevel=2,
                        )
                for old in pending:
                    (self.checkpoint_dir / old).unlink(missing_ok=True)
                    self._say(f"Deleted old checkpoint: {self.checkpoint_dir / old}")
        except OSError as exc:
            if isinstance(exc, CheckpointWriteError):
                raise
            raise write_error(path, exc, newest) from exc

    # -- loading ------------------------------------------------------------------------------

    def _resolve(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        if not path.exists() and (self.checkpoint_dir / path.name).exists():
            return self.checkpoint_dir / path.name
        return path

    def _read(
        self,
        path: Path,
        device: MapLocation,
        *,
        verify: bool,
        record: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Read (never apply) a checkpoint: verified, weights_only, both formats."""
        try:
            if record is None:
                record = record_for(self.checkpoint_dir, path, self._manifest())
            if verify and record is not None:
                verify_files(path, record)
            return read_checkpoint_files(path, device)
        except FileNotFoundError as exc:  # deleted between the manifest and here (a pruning writer)
            if isinstance(exc, CheckpointError):
                raise
            raise CheckpointNotFoundError(
                path,
                f"listed in {MANIFEST_NAME} but gone ({exc.strerror}).",
                "another process pruned it: load again to get the newer checkpoint.",
            ) from None

    def _read_first_good(
        self,
        candidates: Sequence[tuple[Path, Mapping[str, Any]]],
        device: MapLocation,
        next_note: Callable[[int], str],
        none_loads: Callable[[list[CheckpointError]], CheckpointError] | None,
    ) -> tuple[Path, dict[str, Any]]:
        """The first of ``candidates`` (path, manifest record) that reads and verifies.

        Each one skipped is named in a ``CheckpointFallbackWarning`` ending in ``next_note(i)``.
        If none reads: ``none_loads(errors)`` is raised, or, without it, the last candidate's
        own error (not warned about).
        """
        problems: list[CheckpointError] = []
        for index, (path, record) in enumerate(candidates):
            try:
                return path, self._read(path, device, verify=True, record=record)
            except (CorruptCheckpointError, CheckpointNotFoundError, ForeignFileError) as exc:
                if none_loads is None and index == len(candidates) - 1:
                    raise
                problems.append(exc)
                warnings.warn(
                    f"skipped {exc.path}: {exc.problem} {next_note(index)}",
                    CheckpointFallbackWarning,
                    stacklevel=3,
                )
        assert none_loads is not None  # the loop above returned or raised otherwise
        raise none_loads(problems)

    def _apply(
        self,
        checkpoint: dict[str, Any],
        path: Path,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        scheduler: Any,
        scaler: Any,
        restore_rng: bool,
    ) -> dict[str, Any]:
        try:
            apply_checkpoint(
                checkpoint, model, optimizer, scheduler, scaler=scaler, restore_rng=restore_rng
            )
        except CheckpointFieldError as exc:
            raise CheckpointError(path, f"is malformed: {exc}.", MALFORMED_FIX) from None
        self._say(f"Loaded checkpoint: {path}")
        self._say(f"  Epoch: {checkpoint.get('epoch')}")
        self._say(f"  Metrics: {checkpoint.get('metrics', 'N/A')}")
        return checkpoint

    def load(
        self,
        path: str | os.PathLike[str],
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
        device: MapLocation = "cpu",
        *,
        scaler: Any = None,
        restore_rng: bool = True,
        verify: bool = True,
    ) -> dict[str, Any]:
        """Load ``path`` into ``model`` (and optimizer, scheduler, scaler, RNGs); return the dict.

        A file listed in the manifest is checked against its size and SHA-256 first
        (``verify=False`` skips that, e.g. to keep a big safetensors load lazy). Loading is
        ``weights_only``; every failure is a ``CheckpointError`` naming the file and the fix.
        ``restore_rng=False`` when you only evaluate (e.g. comparing epochs).
        """
        self.wait()
        path = self._resolve(path)
        checkpoint = self._read(path, device, verify=verify)
        return self._apply(checkpoint, path, model, optimizer, scheduler, scaler, restore_rng)

    def load_latest(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
        device: MapLocation = "cpu",
        *,
        scaler: Any = None,
        restore_rng: bool = True,
    ) -> dict[str, Any]:
        """Load the newest committed checkpoint (by epoch, step) that passes its checksum.

        A damaged or missing newer file is skipped with a ``CheckpointFallbackWarning`` naming it;
        the model is touched only once a good checkpoint has been read.
        """
        self.wait()
        # Another process may commit and prune between our reading the manifest and the file:
        # then the manifest has changed, and we read again rather than report a missing file.
        for attempt in range(READ_ATTEMPTS):
            manifest = self._manifest()
            entries = sorted(manifest["checkpoints"].values(), key=order_key, reverse=True)
            if not entries:
                raise CheckpointNotFoundError(
                    self.checkpoint_dir,
                    f"no checkpoint has been committed here ({MANIFEST_NAME} lists none).",
                    "save one with manager.save(...) first, or pass the folder that holds your "
                    "checkpoints.",
                )

            def none_loads(
                problems: list[CheckpointError], count: int = len(entries)
            ) -> CheckpointError:
                return CorruptCheckpointError(
                    self.checkpoint_dir,
                    f"none of the {count} checkpoints in {MANIFEST_NAME} loads: "
                    + "; ".join(f"{p.path.name}: {p.problem}" for p in problems),
                    "restore the files from a backup, or start training afresh in a new folder.",
                )

            failure: CheckpointError | None = None
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    path, checkpoint = self._read_first_good(
                        [(self.checkpoint_dir / entry["file"], entry) for entry in entries],
                        device,
                        lambda index: "Falling back to the previous checkpoint.",
                        none_loads,
                    )
                except CheckpointError as exc:
                    failure = exc
            if (failure or caught) and attempt < READ_ATTEMPTS - 1:
                if self._manifest()["checkpoints"].keys() != manifest["checkpoints"].keys():
                    continue  # a newer commit: read that one instead
            for warning in caught:
                warnings.warn(warning.message, warning.category, stacklevel=2)
            if failure is not None:
                raise failure
            break
        return self._apply(checkpoint, path, model, optimizer, scheduler, scaler, restore_rng)

    def load_best(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
        device: MapLocation = "cpu",
        *,
        scaler: Any = None,
        restore_rng: bool = True,
    ) -> dict[str, Any]:
        """Load ``best_model.pth`` (the last save with ``is_best=True``); return the dict.

        If no save was marked best, the checkpoint ranked first by ``metrics[best_metric]``
        (``mode``) is loaded. A damaged ``best_model`` falls back to the checkpoint it was
        linked from, with a warning.
        """
        self.wait()
        manifest = self._manifest()
        best = manifest.get("best")
        candidates: list[tuple[Path, Mapping[str, Any]]] = []
        if best:
            primary = next(n for n in best["files"] if not n.endswith(SIDECAR_SUFFIX))
            candidates.append((self.checkpoint_dir / primary, best))
            source = manifest["checkpoints"].get(best.get("source"))
            if source is not None:
                candidates.append((self.checkpoint_dir / source["file"], source))
        else:
            ranked = retention_reasons(
                manifest["checkpoints"].values(),
                max_to_keep=None,
                keep_best=1,
                best_metric=self.best_metric,
                mode=self.mode,
            )
            candidates += [
                (self.checkpoint_dir / name, manifest["checkpoints"][name])
                for name, why in ranked.items()
                if "best" in why
            ]
        if not candidates:
            raise CheckpointNotFoundError(
                self.checkpoint_dir / f"{BEST_STEM}.pth",
                f"no best checkpoint: no save had is_best=True and no checkpoint has a "
                f"metric {self.best_metric!r}.",
                "pass is_best=True to manager.save(...) for the best epoch, or metrics that "
                f"include {self.best_metric!r} (see best_metric=).",
            )
        path, checkpoint = self._read_first_good(
            candidates,
            device,
            lambda index: f"Loading {candidates[index + 1][0]}, the checkpoint it was made from.",
            None,
        )
        return self._apply(checkpoint, path, model, optimizer, scheduler, scaler, restore_rng)

    def list_checkpoints(self) -> list[dict[str, Any]]:
        """One row per committed checkpoint, oldest first, from the manifest alone.

        Never opens a checkpoint (the chapter's version unpickled every file to print it).
        Columns: ``file``, ``epoch``, ``step``, one per metric, ``size`` (bytes), ``sha256``,
        ``time``, ``kept_by`` (the retention policies that keep it) and ``best`` (whether
        ``best_model`` points at it). ``format_table(rows)`` prints them.
        """
        self.wait()
        manifest = self._manifest()
        entries = sorted(manifest["checkpoints"].values(), key=order_key)
        best_source = (manifest.get("best") or {}).get("source")
        reasons = self._retention(manifest)
        rows = []
        for entry in entries:
            row: dict[str, Any] = {
                "file": entry["file"],
                "epoch": entry["epoch"],
                "step": entry["step"],
            }
            for key, value in (entry.get("metrics") or {}).items():
                row[key if key not in row else f"metric:{key}"] = value
            row.update(
                size=entry["size"],
                sha256=entry["sha256"],
                time=entry["time"],
                kept_by=",".join(
                    r if r != "kept" else "best_model" for r in reasons[entry["file"]]
                ),
                best=entry["file"] == best_source,
            )
            rows.append(row)
        if self.verbose:
            print(format_table(rows))
        return rows
