"""``CheckpointManager``: the chapter's calls (6.3.8), each delegating to one part.

Read this first. The chapter's manager keeps the calls it teaches (``save``, ``load``,
``load_best``, ``load_latest``, ``list_checkpoints``) but orders checkpoints by file ctime (one
``chmod`` reorders them, and cleanup can delete the file it has just written), writes with a
plain ``torch.save`` (a crash leaves a truncated file under the real name), and unpickles every
file just to list them. This one keeps the calls and fixes the rest:

- names ``checkpoint_epoch_{epoch:04d}.pth``, ordered by ``(epoch, step)`` from the manifest;
- a save is *committed* once ``manifest.json`` lists it with its size and SHA-256
  (``commit``: the steps, in order);
- retention is the union of policies, applied only after the commit (``retention``);
- on start the folder is repaired (``reconcile``); a lock makes two managers take turns
  (``lock``);
- loads are checked against the manifest and fall back to the newest good checkpoint with a
  warning (``loading``);
- optionally safetensors weights beside a small sidecar (``files``), and saves in a
  background thread (``background``).

Taught in notebooks/08_checkpoint_manager.ipynb; exercise 1 builds the idea in 25 lines.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Unpack

import torch
from torch import nn

from course_lib.checkpoint import build_checkpoint, checkpoint_filename
from course_lib.display import format_table
from course_lib.manager.background import BackgroundWriter
from course_lib.manager.commit import SaveRequest, commit
from course_lib.manager.errors import write_error
from course_lib.manager.files import FORMATS, MANIFEST_NAME
from course_lib.manager.loading import LoadOptions, Target, apply, read_best, read_file, read_latest
from course_lib.manager.lock import FolderLock
from course_lib.manager.manifest import (
    CheckpointEntry,
    Manifest,
    read_manifest_or_empty,
    write_manifest,
)
from course_lib.manager.reconcile import entry_from_file, reconcile
from course_lib.manager.retention import RetentionPolicy
from course_lib.safe_io import DISK_FULL_ERRNOS, NO_PERMISSION_ERRNOS, MapLocation

__all__ = ["CheckpointManager"]


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
    is on disk; a failure there is raised by the next ``save``, ``wait`` or ``load``),
    ``lock_timeout`` (seconds to wait for another process's lock) and ``verbose=True`` (print
    what happens, as the chapter did).

    Taught in notebooks/08_checkpoint_manager.ipynb; in a training run,
    notebooks/08b_retention_async.ipynb, step 3.
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
        self.policy = RetentionPolicy(max_to_keep, keep_best, best_metric, mode, keep_every)
        if format not in FORMATS:
            raise ValueError(f"format={format!r} must be one of {FORMATS}.")
        self.checkpoint_dir = Path(checkpoint_dir)
        self.format = format
        self.async_save = async_save
        self.verbose = verbose
        self.lock_timeout = lock_timeout
        self.read_only = False
        # The repaired manifest a full disk kept us from writing: what loading uses meanwhile.
        self._unwritten_manifest: Manifest | None = None
        self._background = BackgroundWriter()
        try:
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise write_error(self.checkpoint_dir, exc, None) from exc
        try:
            with self._exclusive():
                reconcile(self.checkpoint_dir, best_metric=best_metric)
        except OSError as exc:
            self._open_without_repair(exc)

    def _open_without_repair(self, exc: OSError) -> None:
        """A folder we may read but not write (a shared results folder), or a full disk:
        the repair waits, and loading still works."""
        if exc.errno in DISK_FULL_ERRNOS:
            self._unwritten_manifest = getattr(exc, "repaired_manifest", None)
            warnings.warn(
                f"{self.checkpoint_dir}: the disk is full, so the folder's repairs were not "
                "written; loading works, and saving will fail until space is freed.",
                stacklevel=3,
            )
        elif exc.errno in NO_PERMISSION_ERRNOS:
            self.read_only = True
        else:
            raise exc

    def __repr__(self) -> str:
        p = self.policy
        return (
            f"CheckpointManager({str(self.checkpoint_dir)!r}, max_to_keep={p.max_to_keep}, "
            f"keep_best={p.keep_best}, best_metric={p.best_metric!r}, mode={p.mode!r}, "
            f"keep_every={p.keep_every}, format={self.format!r}, "
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

    def _manifest(self) -> Manifest:
        if self._unwritten_manifest is not None and not self.manifest_path.exists():
            return self._unwritten_manifest
        return read_manifest_or_empty(self.checkpoint_dir)

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
        request = SaveRequest(Path(name).name, is_best=is_best, protect=protect)
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

        def write(state: dict[str, Any]) -> None:
            commit(
                self.checkpoint_dir,
                state,
                request,
                self.policy,
                manifest_of=self._manifest,
                lock=self._exclusive,
                say=self._say,
            )

        if self.async_save:
            self._background.start(write, checkpoint, name=f"checkpoint-save-{request.name}")
        else:
            write(checkpoint)
        return self.checkpoint_dir / request.name

    def wait(self) -> None:
        """Block until the background save (if any) is on disk; raise its error if it failed."""
        self._background.wait()

    def adopt(
        self, filename: str, *, metrics: Mapping[str, float] | None = None
    ) -> CheckpointEntry:
        """Track a checkpoint file that is in the folder but not in the manifest; return its entry.

        For a checkpoint copied in by hand, or one whose save was interrupted just before its
        commit. The file is read once (weights_only) for its epoch and metrics.
        """
        self.wait()
        path = self.checkpoint_dir / Path(filename).name
        with self._exclusive():
            manifest = self._manifest()
            entry = entry_from_file(self.checkpoint_dir, path, metrics)
            manifest.checkpoints[entry.file] = entry
            write_manifest(self.checkpoint_dir, manifest)
        return entry

    # -- loading ------------------------------------------------------------------------------

    def load(
        self,
        path: str | os.PathLike[str],
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
        device: MapLocation = "cpu",
        *,
        verify: bool = True,
        **options: Unpack[LoadOptions],
    ) -> dict[str, Any]:
        """Load ``path`` into ``model`` (and optimizer, scheduler, scaler, RNGs); return the dict.

        A file listed in the manifest is checked against its size and SHA-256 first
        (``verify=False`` skips that, e.g. to keep a big safetensors load lazy). Loading is
        ``weights_only``; every failure is a ``CheckpointError`` naming the file and the fix.
        ``options``: see ``LoadOptions`` (``scaler``, ``restore_rng``).
        """
        target = Target.of(model, optimizer, scheduler, options)
        self.wait()
        path = Path(path)
        if not path.exists() and (self.checkpoint_dir / path.name).exists():
            path = self.checkpoint_dir / path.name
        record = None
        if verify and _inside(path, self.checkpoint_dir):
            record = self._manifest().record_for(path.name)
        checkpoint = read_file(path, record, device)
        return apply(checkpoint, path, target, self._say)

    def load_latest(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
        device: MapLocation = "cpu",
        **options: Unpack[LoadOptions],
    ) -> dict[str, Any]:
        """Load the newest committed checkpoint (by epoch, step) that passes its checksum.

        A damaged or missing newer file is skipped with a ``CheckpointFallbackWarning`` naming it;
        the model is touched only once a good checkpoint has been read.
        """
        target = Target.of(model, optimizer, scheduler, options)
        self.wait()
        path, checkpoint = read_latest(self.checkpoint_dir, self._manifest, device)
        return apply(checkpoint, path, target, self._say)

    def load_best(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
        device: MapLocation = "cpu",
        **options: Unpack[LoadOptions],
    ) -> dict[str, Any]:
        """Load ``best_model.pth`` (the last save with ``is_best=True``); return the dict.

        If no save was marked best, the checkpoint ranked first by ``metrics[best_metric]``
        (``mode``) is loaded. A damaged ``best_model`` falls back to the checkpoint it was
        linked from, with a warning.
        """
        target = Target.of(model, optimizer, scheduler, options)
        self.wait()
        path, checkpoint = read_best(
            self.checkpoint_dir,
            self._manifest(),
            device,
            best_metric=self.policy.best_metric,
            mode=self.policy.mode,
        )
        return apply(checkpoint, path, target, self._say)

    def list_checkpoints(self) -> list[dict[str, Any]]:
        """One row per committed checkpoint, oldest first, from the manifest alone.

        Never opens a checkpoint (the chapter's version unpickled every file to print it).
        Columns: ``file``, ``epoch``, ``step``, one per metric, ``size`` (bytes), ``sha256``,
        ``time``, ``kept_by`` (the retention policies that keep it) and ``best`` (whether
        ``best_model`` points at it). ``format_table(rows)`` prints them.
        """
        self.wait()
        manifest = self._manifest()
        best_source = manifest.best.source if manifest.best else None
        reasons = self.policy.reasons(
            manifest.checkpoints.values(), keep=[best_source] if best_source else []
        )
        rows = manifest.rows(reasons)
        if self.verbose:
            print(format_table(rows))
        return rows


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` is directly inside ``folder`` (so the manifest may know it)."""
    try:
        return path.parent.resolve() == folder.resolve()
    except OSError:
        return False
