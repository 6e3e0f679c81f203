"""One checkpoint's files: names, durable writes with their SHA-256, reading back.

For maintainers (read it after ``commit``).

A checkpoint is one ``checkpoint_epoch_0007.pth``, or weights in
``checkpoint_epoch_0007.safetensors`` (memory-mapped on load) beside a
``checkpoint_epoch_0007.train_state.pth`` sidecar for the optimizer, scheduler, RNG states and
counters. Every file goes through ``safe_io.atomic_write`` (unique temp file, fsync,
``os.replace``); the directory fsync is left to the manifest commit that follows in the same
folder. Each file's SHA-256 is computed while it is written, for the manifest
(``manifest``) to record.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import re
import shutil
import struct
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from course_lib.checkpoint import require_training_checkpoint
from course_lib.safe_io import (
    MapLocation,
    atomic_write,
    load_safetensors,
    safe_load,
    torch_save,
)

__all__ = [
    "FORMATS",
    "LOCK_NAME",
    "MANIFEST_NAME",
    "PRIMARY_PATTERN",
    "SIDECAR_PATTERN",
    "SIDECAR_SUFFIX",
    "TEMP_PATTERN",
    "FileRecord",
    "read_checkpoint_files",
    "sha256_file",
    "sidecar_name",
    "link_best",
    "write_checkpoint_files",
]

FORMATS = ("torch", "safetensors")
MANIFEST_NAME = "manifest.json"
LOCK_NAME = ".manager.lock"
SIDECAR_SUFFIX = ".train_state.pth"
PRIMARY_PATTERN = re.compile(
    r"^checkpoint_epoch_(?P<epoch>\d+)(?:_step_(?P<step>\d+))?\.(pth|safetensors)$"
)
SIDECAR_PATTERN = re.compile(r"^checkpoint_epoch_\d+(?:_step_\d+)?\.train_state\.pth$")
TEMP_PATTERN = re.compile(r"^\.(?P<target>.+)\.[A-Za-z0-9_]+\.tmp$")  # atomic_write's temp files
_HASH_INLINE_BYTES = 1 << 20  # below this, hashing in a thread costs more than it saves
_HASH_STREAM_BYTES = 8 << 20  # from this size of tensors, torch.save files are hashed as written


@dataclass(frozen=True)
class FileRecord:
    """One file of a checkpoint: its size and SHA-256 (and, for ``best_model``, its source)."""

    size: int
    sha256: str
    source_file: str | None = None


def sidecar_name(primary: str) -> str:
    """The name of the training-state file beside a ``.safetensors`` weights file."""
    return Path(primary).stem + SIDECAR_SUFFIX


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file, read in 8 MiB chunks (hashlib releases the GIL while hashing)."""
    with open(path, "rb") as handle:
        return sha256_stream(handle)


def sha256_stream(handle: Any) -> str:
    """The SHA-256 of an open binary file, from its current position to its end."""
    return hashlib.file_digest(handle, "sha256").hexdigest()


# ----------------------------------------------------------------------------------------------
# Writing: durable files with their checksum, computed while the disk flushes
# ----------------------------------------------------------------------------------------------


def _durable_write(path: Path, write: Callable[[Path], None]) -> FileRecord:
    """``atomic_write(path, write)``, and the record (size, SHA-256) of the bytes committed.

    For a writer that only takes a path (``safetensors``' own ``save_file``, a small
    ``torch.save``). The checksum of a large file is computed by a thread that reads the
    finished temp file while ``atomic_write`` fsyncs it: hashing overlaps the disk flush.
    """
    state: dict[str, Any] = {}

    def write_and_hash(temp: Path) -> None:
        write(temp)
        handle = open(temp, "rb")  # noqa: SIM115 (closed below, after the thread)
        state["handle"] = handle
        state["size"] = os.fstat(handle.fileno()).st_size
        if state["size"] < _HASH_INLINE_BYTES:
            state["sha256"] = sha256_stream(handle)
            return

        def work() -> None:
            try:
                state["sha256"] = sha256_stream(handle)
            except BaseException as exc:  # reported below
                state["error"] = exc

        state["thread"] = threading.Thread(target=work, name="checkpoint-sha256")
        state["thread"].start()

    try:
        # No directory fsync here: the manifest, committed next in this folder, makes it.
        atomic_write(path, write_and_hash, sync_directory=False, follow_symlinks=False)
    finally:
        if "thread" in state:
            state["thread"].join()
        if "handle" in state:
            state["handle"].close()
    if "error" in state:
        raise state["error"]
    return FileRecord(state["size"], state["sha256"])


def _tensor_bytes(obj: Any) -> int:
    """The bytes of the tensors in ``obj`` (nested dicts, lists, tuples): about its file size."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, Mapping):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


class _HashingFile:
    """The write-only file ``torch.save`` writes to, with a thread hashing close behind it.

    ``torch.save`` hands each record (a tensor's bytes, the pickle, zip headers) to ``write``;
    every few MiB the bytes written so far are flushed to the OS and announced to the thread,
    which reads them back (from the page cache) and hashes them while the next ones are written
    and, at the end, while ``atomic_write`` fsyncs the file. So the SHA-256 adds almost nothing
    as long as hashing keeps up with writing plus flushing. The bytes are read back rather than
    hashed from the buffers ``write`` gets: those belong to ``torch.save`` and may be freed (a
    GPU tensor's CPU copy) as soon as ``write`` returns. A writer that seeks back would make the
    streamed digest wrong: then ``record`` hashes the whole file again.
    """

    _ANNOUNCE_BYTES = 4 << 20

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = open(path, "wb", buffering=1 << 20)  # noqa: SIM115 (closed by close())
        self._reader = open(path, "rb", buffering=0)  # noqa: SIM115 (closed by close())
        self._digest = hashlib.sha256()
        self._written = 0  # bytes handed to write()
        self._announced = 0  # bytes flushed to the OS and handed to the thread
        self._hashed = 0
        self._finished = False
        self._sequential = True
        self._error: BaseException | None = None
        self.write_error: OSError | None = None  # the first failed write (a full disk)
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._hash_behind, name="checkpoint-sha256")
        self._thread.start()

    # What torch.save calls: write and flush (seek and tell for completeness).
    def write(self, data: Any) -> int:
        try:
            written = self._file.write(data)
        except OSError as exc:
            self.write_error = self.write_error or exc
            raise
        self._written += written
        if self._written - self._announced >= self._ANNOUNCE_BYTES:
            self.flush()
        return written

    def flush(self) -> None:
        self._file.flush()
        with self._changed:
            self._announced = max(self._announced, self._written)
            self._changed.notify()

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._sequential = False  # bytes already hashed may be written again
        self.flush()
        self._written = self._file.seek(offset, whence)
        return self._written

    def tell(self) -> int:
        return self._written

    def _hash_behind(self) -> None:
        chunk = memoryview(bytearray(256 << 10))  # small enough to stay in the CPU cache
        try:
            while True:
                with self._changed:
                    while self._hashed >= self._announced and not self._finished:
                        self._changed.wait()
                    end = self._announced
                    if self._hashed >= end:
                        return  # finished, and everything written is hashed
                self._reader.seek(self._hashed)
                while self._hashed < end:
                    n = self._reader.readinto(chunk[: min(len(chunk), end - self._hashed)])
                    if not n:
                        raise OSError(f"{self.path} ended at {self._hashed} bytes while hashing")
                    self._digest.update(chunk[:n])  # hashlib releases the GIL
                    self._hashed += n
        except BaseException as exc:  # reported by record()
            self._error = exc

    def finish_writing(self) -> None:
        """Hand the last bytes to the OS (before ``atomic_write`` fsyncs); hashing goes on."""
        self.flush()
        self._file.close()

    def close(self) -> None:
        """Wait until the thread has hashed everything written, then close both handles."""
        with self._changed:
            self._finished = True
            self._changed.notify()
        self._thread.join()
        self._file.close()
        self._reader.close()

    def record(self, path: Path) -> FileRecord:
        """The size and SHA-256 of what was written, now at ``path`` (call after ``close``)."""
        if self._error is not None:
            raise self._error
        if not self._sequential:
            return FileRecord(path.stat().st_size, sha256_file(path))
        return FileRecord(self._hashed, self._digest.hexdigest())


def _durable_torch_save(path: Path, obj: Any) -> FileRecord:
    """``torch.save(obj)`` as ``path`` through ``atomic_write``, hashed while it is written.

    A small checkpoint is written by ``torch_save`` (the C++ writer, given the path: a Python
    file object costs about a millisecond more) and hashed at once; a large one goes through a
    ``_HashingFile``, so that the SHA-256 overlaps the writing and the fsync instead of
    following them.
    """
    if _tensor_bytes(obj) < _HASH_STREAM_BYTES:
        return _durable_write(path, lambda temp: torch_save(obj, temp))
    files: list[_HashingFile] = []

    def write(temp: Path) -> None:
        files.append(_HashingFile(temp))
        try:
            torch.save(obj, files[-1])
        except RuntimeError:
            # After a failed write, torch.save's closing of the archive raises "unexpected pos"
            # in its place: the OSError says what happened (ENOSPC for a full disk).
            if files[-1].write_error is not None:
                raise files[-1].write_error from None
            raise
        files[-1].finish_writing()

    try:
        # No directory fsync here: the manifest, committed next in this folder, makes it.
        atomic_write(path, write, sync_directory=False, follow_symlinks=False)
    finally:
        for file in files:
            file.close()
    return files[-1].record(path)


def _durable_write_chunks(path: Path, chunks: Sequence[Any]) -> FileRecord:
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
        atomic_write(
            path, write, sync_directory=False, follow_symlinks=False
        )  # the manifest commit syncs the folder
    finally:
        todo.put(None)
        thread.join()
    if failed:
        raise failed[0]
    return FileRecord(size, digest.hexdigest())


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


def write_checkpoint_files(
    folder: Path, checkpoint: Mapping[str, Any], name: str
) -> dict[str, FileRecord]:
    """Write ``checkpoint`` as ``folder/name`` (and its sidecar); return each file's record.

    A ``.safetensors`` name gets the weights, the rest goes to the ``.train_state.pth`` sidecar.
    On failure the files this call wrote are removed again, and the error propagates.
    """
    written: list[Path] = []
    files: dict[str, FileRecord] = {}
    try:
        if name.endswith(".safetensors"):
            weights = _unshared_cpu_tensors(checkpoint["model_state_dict"])
            rest = {k: v for k, v in checkpoint.items() if k != "model_state_dict"}
            rest["model_state_dict"] = None
            rest["weights_file"] = name
            primary = folder / name
            chunks = _safetensors_chunks(weights)
            if chunks is not None:
                files[name] = _durable_write_chunks(primary, chunks)
            else:
                files[name] = _durable_write(primary, lambda temp: _safetensors_save(weights, temp))
            written.append(primary)
            sidecar = folder / sidecar_name(name)
            files[sidecar.name] = _durable_torch_save(sidecar, rest)
            written.append(sidecar)
        else:
            primary = folder / name
            files[name] = _durable_torch_save(primary, checkpoint)
            written.append(primary)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return files


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------


def read_checkpoint_files(path: Path, device: MapLocation) -> dict[str, Any]:
    """Read (never apply) the checkpoint ``path``, either format, ``weights_only``.

    Unchecked: compare the files with their manifest record first (``loading.verify_files``).
    A file that holds something else than a training checkpoint raises ``ForeignFileError``.
    """
    if path.suffix == ".safetensors":
        weights = load_safetensors(path, device)
        sidecar = path.with_name(path.stem + SIDECAR_SUFFIX)
        checkpoint = safe_load(sidecar, map_location=device)
        if isinstance(checkpoint, Mapping):
            checkpoint = dict(checkpoint)
            checkpoint["model_state_dict"] = weights
    else:
        checkpoint = safe_load(path, map_location=device)
    return require_training_checkpoint(
        checkpoint,
        path,
        "a bare state_dict loads with model.load_state_dict(safe_load(path)); "
        "a checkpoint for this manager is written by manager.save(...).",
    )


# ----------------------------------------------------------------------------------------------
# The best_model pointer
# ----------------------------------------------------------------------------------------------


def link_best(folder: Path, best_files: Mapping[str, FileRecord]) -> None:
    """Make each ``best_model`` file of ``best_files`` a hard link (or a copy) of its source.

    Each link is made under a temp name and renamed in, so ``best_model.pth`` is never missing
    or half-written. A hard link is not a backup: a bit flipped in one name is flipped in both.
    """
    for best, record in best_files.items():
        source = folder / str(record.source_file)
        target = folder / best
        if not target.is_symlink() and target.exists() and os.path.samefile(source, target):
            # Already linked. (Renaming one hard link over another of the same file is a
            # no-op that leaves the temp name behind, so never try.)
            continue

        def link(temp: Path, source: Path = source) -> None:
            temp.unlink()
            try:
                os.link(source, temp)
            except OSError:  # no hard links here (some network and FAT file systems)
                shutil.copyfile(source, temp)

        atomic_write(target, link, follow_symlinks=False)
