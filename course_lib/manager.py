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
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import math
import os
import queue
import re
import shutil
import struct
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
from torch import nn

from course_lib.checkpoint import apply_checkpoint, build_checkpoint
from course_lib.display import format_table
from course_lib.safe_io import (
    CheckpointError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    ForeignFileError,
    MapLocation,
    atomic_write,
    safe_load,
)

try:  # POSIX; on Windows two managers on one folder are not serialised
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

MANIFEST_NAME = "manifest.json"
LOCK_NAME = ".manager.lock"
BEST_STEM = "best_model"
SIDECAR_SUFFIX = ".train_state.pth"
MANIFEST_VERSION = 1
FORMATS = ("torch", "safetensors")

_PRIMARY = re.compile(
    r"^checkpoint_epoch_(?P<epoch>\d+)(?:_step_(?P<step>\d+))?\.(pth|safetensors)$"
)
_SIDECAR = re.compile(r"^checkpoint_epoch_\d+(?:_step_\d+)?\.train_state\.pth$")
_TEMP = re.compile(r"^\.(?P<target>.+)\.[A-Za-z0-9_]+\.tmp$")  # what atomic_write leaves behind
_HASH_INLINE_BYTES = 1 << 20  # below this, hashing in a thread costs more than it saves


class CheckpointWriteError(CheckpointError, OSError):
    """A checkpoint could not be written (disk full, no permission, ...); nothing was committed.

    ``errno`` is the underlying ``OSError``'s. The previous checkpoints and the manifest are
    unchanged, so training can resume from the newest committed checkpoint.
    """

    def __str__(self) -> str:  # OSError's own would print only "[Errno 28] ..."
        return f"{self.path}: {self.problem}\n  How to fix: {self.fix}"


class CheckpointFallbackWarning(UserWarning):
    """``load_latest``/``load_best`` skipped a damaged or missing file and loaded an older one."""


# ----------------------------------------------------------------------------------------------
# Pure helpers: names, checksums, retention, tables
# ----------------------------------------------------------------------------------------------


def checkpoint_filename(epoch: int, step: int | None = None, *, format: str = "torch") -> str:
    """``checkpoint_epoch_0007.pth`` (or ``..._step_00001234.pth``, or ``.safetensors``).

    Zero-padded so that names sort like epochs, but the manager orders by the numbers in its
    manifest, not by names or file times.
    """
    suffix = ".safetensors" if format == "safetensors" else ".pth"
    name = f"checkpoint_epoch_{int(epoch):04d}"
    if step is not None:
        name += f"_step_{int(step):08d}"
    return name + suffix


def sidecar_name(primary: str) -> str:
    """The name of the training-state file beside a ``.safetensors`` weights file."""
    return Path(primary).stem + SIDECAR_SUFFIX


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file, read in 8 MiB chunks (hashlib releases the GIL while hashing)."""
    with open(path, "rb") as handle:
        return _sha256_stream(handle)


def _sha256_stream(handle: Any) -> str:
    return hashlib.file_digest(handle, "sha256").hexdigest()


def _order_key(entry: Mapping[str, Any]) -> tuple[int, int, str]:
    epoch = entry.get("epoch")
    step = entry.get("step")
    return (
        -1 if epoch is None else int(epoch),
        -1 if step is None else int(step),
        str(entry.get("file", "")),
    )


def _metric_value(entry: Mapping[str, Any], name: str) -> float | None:
    value = (entry.get("metrics") or {}).get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


def retention_reasons(
    entries: Iterable[Mapping[str, Any]],
    *,
    max_to_keep: int | None = 5,
    keep_best: int = 1,
    best_metric: str = "val_loss",
    mode: str = "min",
    keep_every: int | None = None,
    keep: Iterable[str] = (),
) -> dict[str, list[str]]:
    """Why each checkpoint is kept: ``{file: [reasons]}``; an empty list means it may be deleted.

    A pure function of the manifest entries (``file``, ``epoch``, ``step``, ``metrics``,
    ``protected``), so that the policy can be tested and drawn without touching files. Reasons:

    - ``'latest'``: among the ``max_to_keep`` newest by ``(epoch, step)`` (``None``: all);
    - ``'best'``: among the ``keep_best`` best by ``metrics[best_metric]`` (``mode='min'`` or
      ``'max'``; entries without a numeric value are not ranked; ties keep the newer);
    - ``'every'``: ``(epoch + 1) % keep_every == 0``, the chapter's "every 10 epochs" with
      0-based epochs (epochs 9, 19, ...);
    - ``'protected'``: saved with ``protect=True``;
    - ``'kept'``: named in ``keep`` (the checkpoint just saved, and the one ``best_model.pth``
      copies: with hard links that costs no space).
    """
    entries = list(entries)
    reasons: dict[str, list[str]] = {str(e["file"]): [] for e in entries}
    newest_first = sorted(entries, key=_order_key, reverse=True)
    latest = newest_first if max_to_keep is None else newest_first[:max_to_keep]
    for entry in latest:
        reasons[str(entry["file"])].append("latest")
    if keep_best > 0:
        ranked = [e for e in newest_first if _metric_value(e, best_metric) is not None]
        sign = 1.0 if mode == "min" else -1.0
        ranked.sort(key=lambda e: sign * _metric_value(e, best_metric))  # stable: newer first
        for entry in ranked[:keep_best]:
            reasons[str(entry["file"])].append("best")
    if keep_every:
        for entry in entries:
            epoch = entry.get("epoch")
            if epoch is not None and (int(epoch) + 1) % keep_every == 0:
                reasons[str(entry["file"])].append("every")
    for entry in entries:
        if entry.get("protected"):
            reasons[str(entry["file"])].append("protected")
    for name in keep:
        if name in reasons:
            reasons[name].append("kept")
    return reasons


# ----------------------------------------------------------------------------------------------
# Writing: durable files with their checksum, computed while the disk flushes
# ----------------------------------------------------------------------------------------------


def _durable_write(path: Path, write: Callable[[Path], None]) -> dict[str, Any]:
    """``atomic_write(path, write)`` and return ``{'size', 'sha256'}`` of the bytes committed.

    The checksum of a large file is computed by a thread that reads the finished temp file
    while ``atomic_write`` fsyncs it: hashing is hidden behind the disk flush instead of added.
    """
    state: dict[str, Any] = {}

    def write_and_hash(temp: Path) -> None:
        write(temp)
        handle = open(temp, "rb")  # noqa: SIM115 (closed below, after the thread)
        state["handle"] = handle
        state["size"] = os.fstat(handle.fileno()).st_size
        if state["size"] < _HASH_INLINE_BYTES:
            state["sha256"] = _sha256_stream(handle)
            return

        def work() -> None:
            try:
                state["sha256"] = _sha256_stream(handle)
            except BaseException as exc:  # reported below
                state["error"] = exc

        state["thread"] = threading.Thread(target=work, name="checkpoint-sha256")
        state["thread"].start()

    try:
        atomic_write(path, write_and_hash)
    finally:
        if "thread" in state:
            state["thread"].join()
        if "handle" in state:
            state["handle"].close()
    if "error" in state:
        raise state["error"]
    return {"size": state["size"], "sha256": state["sha256"]}


def _durable_write_chunks(path: Path, chunks: Sequence[Any]) -> dict[str, Any]:
    """Write ``chunks`` (bytes-like) to ``path`` through ``atomic_write``, hashing as they go.

    A thread hashes each chunk while this one hands it to the OS, and goes on hashing while
    ``atomic_write`` fsyncs: the SHA-256 costs no time as long as hashing is faster than the
    disk. The chunks must not change until this returns (the manager's own, or a snapshot).
    """
    digest = hashlib.sha256()
    size = sum(memoryview(c).nbytes for c in chunks)
    todo: queue.SimpleQueue[Any] = queue.SimpleQueue()
    failed: list[BaseException] = []

    def work() -> None:
        while (chunk := todo.get()) is not None:
            try:
                digest.update(chunk)
            except BaseException as exc:  # reported below
                failed.append(exc)

    thread = threading.Thread(target=work, name="checkpoint-sha256")

    def write(temp: Path) -> None:
        with open(temp, "wb") as handle:
            for chunk in chunks:
                todo.put(chunk)
                handle.write(chunk)

    thread.start()
    try:
        atomic_write(path, write)
    finally:
        todo.put(None)
        thread.join()
    if failed:
        raise failed[0]
    return {"size": size, "sha256": digest.hexdigest()}


_SAFETENSORS_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def _safetensors_chunks(tensors: Mapping[str, torch.Tensor]) -> list[Any] | None:
    """The bytes of a ``.safetensors`` file as a header plus one zero-copy view per tensor.

    The format (https://huggingface.co/docs/safetensors): an 8-byte little-endian header length,
    a JSON header (name -> dtype, shape, byte offsets), padded with spaces to 8 bytes, then the
    raw tensor bytes. Tensors are laid out by element size, largest first, so that each one is
    aligned when the file is memory-mapped. ``None`` for a dtype this writer does not know
    (then ``safetensors.torch.save_file`` writes the file).
    """
    if any(t.dtype not in _SAFETENSORS_DTYPES for t in tensors.values()):
        return None
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    views = []
    offset = 0
    for name in sorted(tensors, key=lambda k: (-tensors[k].element_size(), k)):
        tensor = tensors[name]
        nbytes = tensor.numel() * tensor.element_size()
        header[name] = {
            "dtype": _SAFETENSORS_DTYPES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
        if nbytes:
            views.append(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return [struct.pack("<Q", len(text)) + text, *views]


def _unshared_cpu_tensors(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors, each with its own storage, as safetensors requires.

    Tied weights (two names, one tensor) are stored twice; loading ties them again because
    ``load_state_dict`` copies into the model's own parameters.
    """
    seen: set[tuple[int, int]] = set()
    result = {}
    for key, tensor in state_dict.items():
        tensor = tensor.detach().to("cpu").contiguous()
        where = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if tensor.numel() and where in seen:
            tensor = tensor.clone()
        seen.add(where)
        result[key] = tensor
    return result


def _torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` through a Python file object, so that a full disk raises ``OSError(ENOSPC)``.

    Given a path, ``torch.save`` reports a full disk as ``RuntimeError: [enforce fail at
    inline_container.cc] unexpected pos ...``, which says nothing about the cause.
    """
    try:
        with open(path, "wb") as handle:
            torch.save(obj, handle)
    except RuntimeError as exc:
        # The zip writer's cleanup fails after the OSError and hides it: find it again.
        cause = exc.__context__
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__context__
        if cause is None:
            raise
        raise cause from None


def _safetensors_save(tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    """``safetensors.torch.save_file``, with its I/O errors turned back into ``OSError``."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    try:
        save_file(dict(tensors), str(path), metadata={"format": "pt"})
    except SafetensorError as exc:
        code = re.search(r"os error (\d+)", str(exc))
        if code:
            raise OSError(int(code[1]), os.strerror(int(code[1])), str(path)) from exc
        raise


def snapshot_to_cpu(obj: Any, staging: dict[tuple, torch.Tensor] | None = None) -> Any:
    """A copy of ``obj`` whose tensors are detached CPU copies (dicts, lists, tuples recursed).

    What an asynchronous save writes: the training loop may change its own tensors (the next
    optimizer step) while the background thread is still writing the copy. With ``staging``
    (a dict the caller keeps between saves) the copies go into the buffers of the previous
    snapshot: the first touch of freshly allocated memory (page faults) often costs more than
    the copy itself. Buffers for CUDA tensors are pinned, for fast device-to-host copies.
    """
    used: set[tuple] = set()

    def copy(value: Any, key: tuple) -> Any:
        if isinstance(value, torch.Tensor):
            source = value.detach()
            if staging is None:
                return source.to("cpu", copy=True)
            used.add(key)
            buffer = staging.get(key)
            if buffer is None or buffer.shape != source.shape or buffer.dtype != source.dtype:
                pin = source.is_cuda and torch.cuda.is_available()
                buffer = torch.empty(source.shape, dtype=source.dtype, pin_memory=pin)
                staging[key] = buffer
            buffer.copy_(source)
            return buffer
        if isinstance(value, Mapping):
            return {k: copy(v, (*key, k)) for k, v in value.items()}
        if isinstance(value, list):
            return [copy(v, (*key, i)) for i, v in enumerate(value)]
        if isinstance(value, tuple):
            return tuple(copy(v, (*key, i)) for i, v in enumerate(value))
        return value

    result = copy(obj, ())
    if staging is not None:
        for key in [k for k in staging if k not in used]:
            del staging[key]
    return result


@functools.cache
def _course_version() -> str:
    try:
        from importlib.metadata import version

        return version("course-lib")
    except Exception:  # not installed as a package: running from a checkout
        return "unknown"


def _write_error(path: Path, exc: OSError, newest: str | None) -> CheckpointWriteError:
    code = exc.errno
    if code == errno.ENOSPC or code == getattr(errno, "EDQUOT", None):
        fix = (
            f"free space on the disk that holds {path.parent}, lower max_to_keep, or pass "
            "another checkpoint_dir; then save again."
        )
    elif code in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = (
            f"make {path.parent} writable (e.g. chmod u+w {path.parent}) or pass a "
            "checkpoint_dir you can write to; then save again."
        )
    else:
        fix = f"check the disk and the folder {path.parent}; then save again."
    kept = f"the newest committed checkpoint is still {newest}" if newest else "nothing was lost"
    error = CheckpointWriteError(
        path,
        f"could not be saved: {exc.strerror or exc}"
        f"{f' ({errno.errorcode[code]})' if code in errno.errorcode else ''}. "
        f"Nothing was committed: {MANIFEST_NAME} and the checkpoints already saved are "
        f"unchanged ({kept}).",
        fix,
    )
    error.errno = code
    error.strerror = exc.strerror
    error.filename = str(path)
    return error


# ----------------------------------------------------------------------------------------------
# The manager
# ----------------------------------------------------------------------------------------------


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
        self.read_only = False
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._staging: dict[tuple, torch.Tensor] = {}  # async_save's reusable CPU copy
        try:
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _write_error(self.checkpoint_dir, exc, None) from exc
        try:
            with self._exclusive():
                self._reconcile()
        except OSError as exc:
            # A folder we may read but not write (a shared results folder): loading still works.
            if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            self.read_only = True

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
        elif self._thread is not None:
            self._thread.join()

    # -- paths and the manifest ---------------------------------------------------------------

    @property
    def manifest_path(self) -> Path:
        """``<checkpoint_dir>/manifest.json``: the list of committed checkpoints."""
        return self.checkpoint_dir / MANIFEST_NAME

    def _say(self, message: str) -> None:
        if self.verbose:
            print(message)

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Hold the folder's lock file: one manager at a time commits or reconciles."""
        try:
            handle = open(self.checkpoint_dir / LOCK_NAME, "a+b")  # noqa: SIM115
        except OSError as exc:
            raise _write_error(self.checkpoint_dir, exc, None) from exc
        try:
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            handle.close()

    @staticmethod
    def _empty_manifest() -> dict[str, Any]:
        return {
            "version": MANIFEST_VERSION,
            "checkpoints": {},
            "best": None,
            "pending_delete": [],
            "best_metric": None,
        }

    def _read_manifest(self) -> dict[str, Any] | None:
        """The manifest as ``{'checkpoints': {file: entry}, 'best', 'pending_delete'}``.

        ``None`` if there is none; a ``CorruptCheckpointError`` if it cannot be parsed.
        """
        try:
            text = self.manifest_path.read_text()
        except FileNotFoundError:
            return None
        try:
            raw = json.loads(text)
            entries = {str(e["file"]): dict(e) for e in raw["checkpoints"]}
            best = raw.get("best")
            if best is not None and not isinstance(best, dict):
                raise TypeError("'best' is not an object")
            pending = [str(n) for n in raw.get("pending_delete", [])]
            best_metric = raw.get("best_metric")
            if best_metric is not None and not isinstance(best_metric, dict):
                raise TypeError("'best_metric' is not an object")
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptCheckpointError(
                self.manifest_path,
                f"the manifest is damaged ({type(exc).__name__}: {exc}).",
                "open a CheckpointManager on the folder with write access: it keeps the damaged "
                "file as manifest.json.damaged and rebuilds the manifest from the checkpoints.",
            ) from None
        return {
            "version": raw.get("version"),
            "checkpoints": entries,
            "best": best,
            "pending_delete": pending,
            "best_metric": best_metric,
        }

    def _manifest(self) -> dict[str, Any]:
        manifest = self._read_manifest()
        return self._empty_manifest() if manifest is None else manifest

    def _write_manifest(self, manifest: Mapping[str, Any]) -> None:
        ordered = sorted(manifest["checkpoints"].values(), key=_order_key)
        document = {
            "version": MANIFEST_VERSION,
            "writer": "course_lib.manager.CheckpointManager",
            "checkpoints": ordered,
            "best": manifest.get("best"),
            "pending_delete": list(manifest.get("pending_delete", [])),
        }
        # One checkpoint per line: readable, and json's fast C encoder (indent= disables it).
        rows = ",\n  ".join(json.dumps(entry) for entry in ordered)
        text = (
            f'{{"version": {MANIFEST_VERSION}, "writer": {json.dumps(document["writer"])},\n'
            f' "checkpoints": [\n  {rows}\n ],\n'
            f' "best": {json.dumps(document["best"])},\n'
            f' "best_metric": {json.dumps(manifest.get("best_metric"))},\n'
            f' "pending_delete": {json.dumps(document["pending_delete"])}}}\n'
        )
        atomic_write(self.manifest_path, lambda temp: temp.write_text(text))

    @staticmethod
    def _files_of(entry: Mapping[str, Any]) -> list[str]:
        return list((entry.get("files") or {entry["file"]: None}).keys())

    def _newest_committed(self, manifest: Mapping[str, Any]) -> str | None:
        entries = manifest["checkpoints"].values()
        return max(entries, key=_order_key)["file"] if entries else None

    # -- reconciliation -----------------------------------------------------------------------

    def _reconcile(self) -> None:
        """Bring the manifest and the folder into agreement (called under the lock)."""
        changed = False
        try:
            manifest = self._read_manifest()
        except CorruptCheckpointError as exc:
            damaged = self.manifest_path.with_name(MANIFEST_NAME + ".damaged")
            os.replace(self.manifest_path, damaged)
            warnings.warn(
                f"{exc.problem} Kept it as {damaged} and rebuilt the manifest from the checkpoint "
                "files in the folder (their metrics are read from the files).",
                CheckpointFallbackWarning,
                stacklevel=3,
            )
            manifest = None
        if manifest is None:
            manifest = self._adopt_folder()
            changed = True  # a folder always has a manifest once a manager opened it
            if manifest["checkpoints"]:
                warnings.warn(
                    f"{self.checkpoint_dir} held {len(manifest['checkpoints'])} checkpoint file(s) "
                    f"but no {MANIFEST_NAME} (the chapter's manager, or files copied in): adopted "
                    "them, ordered by the epoch stored in each file.",
                    stacklevel=3,
                )
        tracked = {n for e in manifest["checkpoints"].values() for n in self._files_of(e)}
        best = manifest.get("best")
        best_files = set((best or {}).get("files", {}))
        ours = tracked | best_files | {MANIFEST_NAME}
        for path in self.checkpoint_dir.iterdir():
            match = _TEMP.match(path.name)
            if not match:
                continue
            target = match["target"]
            if (
                target in ours
                or _PRIMARY.match(target)
                or _SIDECAR.match(target)
                or target.startswith(BEST_STEM + ".")
            ):
                path.unlink(missing_ok=True)  # an interrupted atomic_write: never committed
        if manifest["pending_delete"]:
            for name in manifest["pending_delete"]:
                if name not in tracked and name not in best_files:
                    (self.checkpoint_dir / name).unlink(missing_ok=True)
            manifest["pending_delete"] = []
            changed = True
        for name, entry in list(manifest["checkpoints"].items()):
            missing = [f for f in self._files_of(entry) if not (self.checkpoint_dir / f).is_file()]
            if missing:
                warnings.warn(
                    f"{self.checkpoint_dir / missing[0]} is listed in {MANIFEST_NAME} but missing "
                    "(deleted by hand?): dropped it from the manifest.",
                    CheckpointFallbackWarning,
                    stacklevel=3,
                )
                del manifest["checkpoints"][name]
                changed = True
        if best is not None and not self._best_is_current(best):
            if self._relink_best(best, manifest):
                changed = True
        tracked = {n for e in manifest["checkpoints"].values() for n in self._files_of(e)}
        untracked = sorted(
            p.name
            for p in self.checkpoint_dir.iterdir()
            if (_PRIMARY.match(p.name) or _SIDECAR.match(p.name)) and p.name not in tracked
        )
        if untracked:
            warnings.warn(
                f"{self.checkpoint_dir}: {', '.join(untracked)} not in {MANIFEST_NAME} (a save "
                "interrupted before it was committed, or copied in by hand): ignored by "
                "load_latest and never deleted. To use one: manager.adopt(name); to drop it: "
                "delete the file.",
                stacklevel=3,
            )
        if changed:
            self._write_manifest(manifest)

    def _best_is_current(self, best: Mapping[str, Any]) -> bool:
        source = best.get("source")
        for name, info in (best.get("files") or {}).items():
            path = self.checkpoint_dir / name
            if not path.is_file():
                return False
            src = self.checkpoint_dir / str(info.get("source_file") or "")
            if source and info.get("source_file") and src.is_file() and os.path.samefile(path, src):
                continue  # the hard link made from the committed checkpoint
            if path.stat().st_size != info["size"] or sha256_file(path) != info["sha256"]:
                return False
        return True

    def _relink_best(self, best: dict[str, Any], manifest: dict[str, Any]) -> bool:
        """Repair ``best_model.*`` after a save interrupted between its commit and the link."""
        entry = manifest["checkpoints"].get(best.get("source"))
        if entry is not None:
            try:
                self._link_best(entry)
                return False
            except OSError:
                pass
        warnings.warn(
            f"{self.checkpoint_dir / next(iter(best['files']))} does not match {MANIFEST_NAME} "
            "and its source checkpoint is gone: the best-model pointer was dropped; load_best "
            f"ranks the remaining checkpoints by {self.best_metric!r}.",
            CheckpointFallbackWarning,
            stacklevel=4,
        )
        manifest["best"] = None
        return True

    def _adopt_folder(self) -> dict[str, Any]:
        """A manifest for a folder without one, from the checkpoint files it holds."""
        manifest = self._empty_manifest()
        for path in sorted(self.checkpoint_dir.iterdir()):
            if _PRIMARY.match(path.name):
                try:
                    entry = self._entry_from_file(path)
                except CheckpointError as exc:
                    warnings.warn(f"not adopted: {exc}", CheckpointFallbackWarning, stacklevel=4)
                    continue
                manifest["checkpoints"][entry["file"]] = entry
        best = self.checkpoint_dir / f"{BEST_STEM}.pth"
        if best.is_file():
            try:
                info = self._entry_from_file(best)
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

    def _entry_from_file(self, path: Path, metrics: Mapping[str, float] | None = None) -> dict:
        """A manifest entry for an existing checkpoint file (reads it once, weights_only)."""
        files = [path.name]
        if path.suffix == ".safetensors":
            files.append(sidecar_name(path.name))
            state = safe_load(self.checkpoint_dir / files[1], map_location="cpu")
        else:
            state = safe_load(path, map_location="cpu")
        if not isinstance(state, Mapping):
            raise ForeignFileError(
                path,
                f"holds a {type(state).__name__}, not a checkpoint dict.",
                "adopt checkpoint files only.",
            )
        match = _PRIMARY.match(path.name)
        epoch = state.get("epoch", int(match["epoch"]) if match else None)
        step = state.get("step", int(match["step"]) if match and match["step"] else None)
        raw_metrics = metrics if metrics is not None else state.get("metrics") or {}
        if not raw_metrics and isinstance(state.get("loss"), (int, float)):
            raw_metrics = {"loss": state["loss"]}
        file_info = {}
        for name in files:
            p = self.checkpoint_dir / name
            file_info[name] = {"size": p.stat().st_size, "sha256": sha256_file(p)}
        return self._entry(path.name, file_info, epoch, step, raw_metrics, False, adopted=True)

    def _entry(
        self,
        name: str,
        files: Mapping[str, Mapping[str, Any]],
        epoch: int | None,
        step: int | None,
        metrics: Mapping[str, Any],
        protected: bool,
        *,
        adopted: bool = False,
    ) -> dict[str, Any]:
        plain = {}
        for key, value in (metrics or {}).items():
            try:
                plain[str(key)] = float(value)
            except (TypeError, ValueError):
                plain[str(key)] = str(value)
        entry = {
            "file": name,
            "epoch": None if epoch is None else int(epoch),
            "step": None if step is None else int(step),
            "metrics": plain,
            "size": sum(int(f["size"]) for f in files.values()),
            "sha256": files[name]["sha256"],
            "files": {k: dict(v) for k, v in files.items()},
            "format": "safetensors" if name.endswith(".safetensors") else "torch",
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "torch_version": str(torch.__version__),
            "course_version": _course_version(),
            "protected": bool(protected),
        }
        if adopted:
            entry["adopted"] = True
        return entry

    def adopt(self, filename: str, *, metrics: Mapping[str, float] | None = None) -> dict:
        """Track a checkpoint file that is in the folder but not in the manifest; return its entry.

        For a checkpoint copied in by hand, or one whose save was interrupted just before its
        commit. The file is read once (weights_only) for its epoch and metrics.
        """
        self.wait()
        path = self.checkpoint_dir / Path(filename).name
        with self._exclusive():
            manifest = self._manifest()
            entry = self._entry_from_file(path, metrics)
            manifest["checkpoints"][entry["file"]] = entry
            self._write_manifest(manifest)
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
        snapshot = snapshot_to_cpu(checkpoint, self._staging)
        self._thread = threading.Thread(
            target=self._commit_in_background,
            args=(snapshot, name, is_best, protect),
            name=f"checkpoint-save-{name}",
        )
        self._thread.start()
        return path

    def _best_so_far(self, manifest: dict[str, Any], metrics: Mapping[str, Any]) -> float | None:
        """The best ``best_metric`` value ever committed here, this save included.

        Kept in the manifest (``best_metric``), so that it survives the deletion of the
        checkpoint that had it; stored in each checkpoint as ``'best_metric'`` for resuming.
        """
        record = manifest.get("best_metric") or {}
        values = []
        if record.get("name") == self.best_metric and record.get("mode") == self.mode:
            values.append(record.get("value"))
        else:  # another metric than before: rank what is still here
            values += [_metric_value(e, self.best_metric) for e in manifest["checkpoints"].values()]
        values.append(_metric_value({"metrics": dict(metrics or {})}, self.best_metric))
        values = [v for v in values if v is not None]
        best = (min(values) if self.mode == "min" else max(values)) if values else None
        manifest["best_metric"] = {"name": self.best_metric, "mode": self.mode, "value": best}
        return best

    def _commit_in_background(self, *args: Any) -> None:
        try:
            self._commit(*args)
        except BaseException as exc:  # raised by the next save / wait / load
            self._error = exc

    def wait(self) -> None:
        """Block until the background save (if any) is on disk; raise its error if it failed."""
        thread = self._thread
        if thread is not None:
            thread.join()
            self._thread = None
        error, self._error = self._error, None
        if error is not None:
            if hasattr(error, "add_note"):
                error.add_note("course_lib: raised by an earlier asynchronous save.")
            raise error

    def _write_files(self, checkpoint: Mapping[str, Any], name: str) -> dict[str, dict]:
        """Write the checkpoint's file(s) durably; on failure remove what this save wrote."""
        written: list[Path] = []
        files: dict[str, dict] = {}
        try:
            if name.endswith(".safetensors"):
                weights = _unshared_cpu_tensors(checkpoint["model_state_dict"])
                rest = {k: v for k, v in checkpoint.items() if k != "model_state_dict"}
                rest["model_state_dict"] = None
                rest["weights_file"] = name
                primary = self.checkpoint_dir / name
                chunks = _safetensors_chunks(weights)
                if chunks is not None:
                    files[name] = _durable_write_chunks(primary, chunks)
                else:
                    files[name] = _durable_write(
                        primary, lambda temp: _safetensors_save(weights, temp)
                    )
                written.append(primary)
                sidecar = self.checkpoint_dir / sidecar_name(name)
                files[sidecar.name] = _durable_write(sidecar, lambda temp: _torch_save(rest, temp))
                written.append(sidecar)
            else:
                primary = self.checkpoint_dir / name
                files[name] = _durable_write(primary, lambda temp: _torch_save(checkpoint, temp))
                written.append(primary)
        except BaseException:
            for path in written:
                path.unlink(missing_ok=True)
            raise
        return files

    def _commit(
        self, checkpoint: Mapping[str, Any], name: str, is_best: bool, protect: bool
    ) -> None:
        path = self.checkpoint_dir / name
        newest = None
        try:
            with self._exclusive():
                # Re-read under the lock: another manager may have saved since.
                manifest = self._manifest()
                newest = self._newest_committed(manifest)
                if name in manifest["checkpoints"]:  # saving this epoch again replaces it
                    del manifest["checkpoints"][name]
                    self._write_manifest(manifest)
                    newest = self._newest_committed(manifest)
                checkpoint["best_metric"] = self._best_so_far(manifest, checkpoint["metrics"])
                files = self._write_files(checkpoint, name)
                entry = self._entry(
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
                    manifest["best"] = self._best_record(entry)
                best_source = (manifest.get("best") or {}).get("source")
                reasons = retention_reasons(
                    entries.values(),
                    max_to_keep=self.max_to_keep,
                    keep_best=self.keep_best,
                    best_metric=self.best_metric,
                    mode=self.mode,
                    keep_every=self.keep_every,
                    keep=[name] + ([best_source] if best_source else []),
                )
                doomed = [n for n, why in reasons.items() if not why]
                pending = [
                    n
                    for n in manifest["pending_delete"]
                    if n not in files and (self.checkpoint_dir / n).exists()
                ]
                for old in doomed:
                    pending.extend(self._files_of(entries.pop(old)))
                manifest["pending_delete"] = pending
                try:
                    self._write_manifest(manifest)  # the commit
                except BaseException:
                    for written in files:
                        (self.checkpoint_dir / written).unlink(missing_ok=True)
                    raise
                self._say(f"Saved checkpoint: {path}")
                if is_best:
                    try:
                        self._link_best(entry)
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
            raise _write_error(path, exc, newest) from exc

    @staticmethod
    def _best_names(entry: Mapping[str, Any]) -> dict[str, str]:
        """``{source file: best_model file}`` for each file of a checkpoint."""
        names = {}
        for name in CheckpointManager._files_of(entry):
            if name.endswith(SIDECAR_SUFFIX):
                names[name] = BEST_STEM + SIDECAR_SUFFIX
            else:
                names[name] = BEST_STEM + Path(name).suffix
        return names

    def _best_record(self, entry: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "source": entry["file"],
            "epoch": entry["epoch"],
            "step": entry["step"],
            "metrics": entry["metrics"],
            "files": {
                best: {**entry["files"][src], "source_file": src}
                for src, best in self._best_names(entry).items()
            },
        }

    def _link_best(self, entry: Mapping[str, Any]) -> None:
        """Point ``best_model.*`` at a committed checkpoint: a hard link (or a copy) renamed in."""
        for src, best in self._best_names(entry).items():
            source = self.checkpoint_dir / src
            target = self.checkpoint_dir / best
            if target.exists() and os.path.samefile(source, target):
                # Already linked. (Renaming one hard link over another of the same file is a
                # no-op that leaves the temp name behind, so never try.)
                continue

            def link(temp: Path, source: Path = source) -> None:
                temp.unlink()
                try:
                    os.link(source, temp)
                except OSError:  # no hard links here (some network and FAT file systems)
                    shutil.copyfile(source, temp)

            atomic_write(target, link)

    # -- loading ------------------------------------------------------------------------------

    def _resolve(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        if not path.exists() and (self.checkpoint_dir / path.name).exists():
            return self.checkpoint_dir / path.name
        return path

    def _record_for(self, path: Path, manifest: Mapping[str, Any]) -> Mapping[str, Any] | None:
        """The manifest's record (checkpoint entry or best pointer) for ``path``, if any."""
        try:
            if path.parent.resolve() != self.checkpoint_dir.resolve():
                return None
        except OSError:
            return None
        entry = manifest["checkpoints"].get(path.name)
        if entry is not None:
            return entry
        best = manifest.get("best")
        if best and path.name in best.get("files", {}):
            return best
        return None

    def _verify(self, path: Path, record: Mapping[str, Any]) -> None:
        for name, info in record["files"].items():
            file = path.parent / name
            if not file.is_file():
                raise CheckpointNotFoundError(
                    file,
                    f"listed in {MANIFEST_NAME} but missing (deleted by hand?).",
                    "load another checkpoint: manager.load_latest() falls back to the newest "
                    "good one; manager.list_checkpoints() lists them.",
                )
            size = file.stat().st_size
            if size != info["size"]:
                raise CorruptCheckpointError(
                    file,
                    f"the file is {size} bytes, the manifest recorded {info['size']}: it was "
                    "truncated or changed after it was saved (a partial copy, a full disk, an edit).",
                    "load another checkpoint: manager.load_latest() falls back to the newest good "
                    "one; restore this file from a backup if you need this epoch.",
                )
            digest = sha256_file(file)
            if digest != info["sha256"]:
                raise CorruptCheckpointError(
                    file,
                    f"its SHA-256 ({digest[:12]}...) does not match the manifest's "
                    f"({info['sha256'][:12]}...): the file was damaged after it was saved "
                    "(disk or copy error, or an edit).",
                    "load another checkpoint: manager.load_latest() falls back to the newest good "
                    "one; restore this file from a backup if you need this epoch.",
                )

    def _read(
        self,
        path: Path,
        device: MapLocation,
        *,
        verify: bool,
        record: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Read (never apply) a checkpoint: verified, weights_only, both formats."""
        if record is None:
            record = self._record_for(path, self._manifest())
        if verify and record is not None:
            self._verify(path, record)
        if path.suffix == ".safetensors":
            weights = _load_safetensors(path, device)
            sidecar = path.with_name(path.stem + SIDECAR_SUFFIX)
            checkpoint = safe_load(sidecar, map_location=device)
            if isinstance(checkpoint, Mapping):
                checkpoint = dict(checkpoint)
                checkpoint["model_state_dict"] = weights
        else:
            checkpoint = safe_load(path, map_location=device)
        if not isinstance(checkpoint, Mapping) or "model_state_dict" not in checkpoint:
            what = (
                f"a dict with keys {sorted(map(str, checkpoint))[:6]}"
                if isinstance(checkpoint, Mapping)
                else f"a {type(checkpoint).__name__}"
            )
            raise ForeignFileError(
                path,
                f"holds {what}, not a training checkpoint (no 'model_state_dict').",
                "a bare state_dict loads with model.load_state_dict(safe_load(path)); "
                "a checkpoint for this manager is written by manager.save(...).",
            )
        return dict(checkpoint)

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
        apply_checkpoint(
            checkpoint, model, optimizer, scheduler, scaler=scaler, restore_rng=restore_rng
        )
        self._say(f"Loaded checkpoint: {path}")
        self._say(f"  Epoch: {checkpoint['epoch']}")
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
        manifest = self._manifest()
        entries = sorted(manifest["checkpoints"].values(), key=_order_key, reverse=True)
        if not entries:
            raise CheckpointNotFoundError(
                self.checkpoint_dir,
                f"no checkpoint has been committed here ({MANIFEST_NAME} lists none).",
                "save one with manager.save(...) first, or pass the folder that holds your "
                "checkpoints.",
            )
        problems = []
        for entry in entries:
            path = self.checkpoint_dir / entry["file"]
            try:
                checkpoint = self._read(path, device, verify=True, record=entry)
            except (CorruptCheckpointError, CheckpointNotFoundError, ForeignFileError) as exc:
                problems.append(exc)
                warnings.warn(
                    f"skipped {exc.path}: {exc.problem} Falling back to the previous checkpoint.",
                    CheckpointFallbackWarning,
                    stacklevel=2,
                )
                continue
            return self._apply(checkpoint, path, model, optimizer, scheduler, scaler, restore_rng)
        raise CorruptCheckpointError(
            self.checkpoint_dir,
            f"none of the {len(entries)} checkpoints in {MANIFEST_NAME} loads: "
            + "; ".join(f"{p.path.name}: {p.problem}" for p in problems),
            "restore the files from a backup, or start training afresh in a new folder.",
        )

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
        for index, (path, record) in enumerate(candidates):
            try:
                checkpoint = self._read(path, device, verify=True, record=record)
            except (CorruptCheckpointError, CheckpointNotFoundError, ForeignFileError) as exc:
                if index == len(candidates) - 1:
                    raise
                warnings.warn(
                    f"skipped {exc.path}: {exc.problem} Loading {candidates[index + 1][0]}, the "
                    "checkpoint it was made from.",
                    CheckpointFallbackWarning,
                    stacklevel=2,
                )
                continue
            return self._apply(checkpoint, path, model, optimizer, scheduler, scaler, restore_rng)
        raise AssertionError("unreachable")  # pragma: no cover

    def list_checkpoints(self) -> list[dict[str, Any]]:
        """One row per committed checkpoint, oldest first, from the manifest alone.

        Never opens a checkpoint (the chapter's version unpickled every file to print it).
        Columns: ``file``, ``epoch``, ``step``, one per metric, ``size`` (bytes), ``sha256``,
        ``time``, ``kept_by`` (the retention policies that keep it) and ``best`` (whether
        ``best_model`` points at it). ``format_table(rows)`` prints them.
        """
        self.wait()
        manifest = self._manifest()
        entries = sorted(manifest["checkpoints"].values(), key=_order_key)
        best_source = (manifest.get("best") or {}).get("source")
        reasons = retention_reasons(
            entries,
            max_to_keep=self.max_to_keep,
            keep_best=self.keep_best,
            best_metric=self.best_metric,
            mode=self.mode,
            keep_every=self.keep_every,
            keep=[best_source] if best_source else [],
        )
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


def _load_safetensors(path: Path, device: MapLocation) -> dict[str, torch.Tensor]:
    """Memory-mapped safetensors weights, with the same clear errors as ``safe_load``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointNotFoundError(path, "no such file.", "check the path.")
    if path.stat().st_size == 0:
        raise CorruptCheckpointError(
            path,
            "the file is empty (0 bytes): the save that created it never wrote its data.",
            "load an earlier checkpoint or a backup.",
        )
    target = str(torch.device(device)) if isinstance(device, (str, torch.device)) else "cpu"
    try:
        return load_file(path, device=target)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CorruptCheckpointError(
            path,
            f"not a readable safetensors file ({type(exc).__name__}: {exc}).",
            "load an earlier checkpoint or a backup.",
        ) from None
