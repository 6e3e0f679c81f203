"""One checkpoint's files: names, durable writes with their SHA-256, reading back.

For maintainers (read it after ``commit``).

A checkpoint is one ``checkpoint_epoch_0007.pth``, or weights in
``checkpoint_epoch_0007.safetensors`` (memory-mapped on load) beside a
``checkpoint_epoch_0007.train_state.pth`` sidecar for the optimizer, scheduler, RNG states and
counters. Every file goes through ``safe_io.atomic_write`` (unique temp file, fsync,
``os.replace``); the directory fsync is left to the manifest commit that follows in the same
folder. Each file gets a record (size, SHA-256) for the manifest (``manifest``): a
``.safetensors`` file's SHA-256 is of the whole file, computed while it is written; a
``torch.save`` file's is of its zip structure (``safe_io.zip_structure_sha256``), read back
from the headers and the directory: the data is covered by the CRC-32s that ``torch.save``
computes as it writes and that the directory holds, so saving makes no pass over the data.
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
    CheckpointError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    MapLocation,
    atomic_write,
    load_safetensors,
    safe_load,
    torch_save,
    verify_zip_crc,
    zip_structure_sha256,
)

__all__ = [
    "FORMATS",
    "LOCK_NAME",
    "MANIFEST_NAME",
    "PRIMARY_PATTERN",
    "SIDECAR_PATTERN",
    "SIDECAR_SUFFIX",
    "TEMP_PATTERN",
    "SHA256_OF",
    "DAMAGED_FILE_FIX",
    "FileRecord",
    "check_file",
    "file_matches",
    "file_sha256",
    "read_checkpoint_files",
    "record_of",
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
SHA256_OF = ("file", "zip")  # what a record's SHA-256 covers: see FileRecord


@dataclass(frozen=True)
class FileRecord:
    """One file of a checkpoint: its size and SHA-256 (and, for ``best_model``, its source).

    ``sha256_of`` says what the SHA-256 covers. ``"file"``: the whole file (a ``.safetensors``
    file's, and every record of a manifest of version 1). ``"zip"``: the zip structure of a
    ``torch.save`` file (``safe_io.zip_structure_sha256``: every byte but the entries' data,
    with the directory that holds each entry's CRC-32); the data is checked against those
    CRC-32s whenever ``safe_load`` reads the file. Either way a changed byte, a truncated file
    or a file swapped for another one is found.
    """

    size: int
    sha256: str
    source_file: str | None = None
    sha256_of: str = "file"


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


def file_sha256(path: str | os.PathLike[str], sha256_of: str) -> str | None:
    """``path``'s SHA-256 as a record with this ``sha256_of`` holds it (see ``FileRecord``).

    ``None`` where a ``"zip"`` digest cannot be computed (not a readable zip archive with
    CRC-32s): then the file matches no record of that kind.
    """
    if sha256_of == "zip":
        with open(path, "rb") as handle:
            return zip_structure_sha256(handle)
    return sha256_file(path)


def record_of(path: str | os.PathLike[str]) -> FileRecord:
    """The record of an existing checkpoint file: by its zip structure where it has one."""
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        digest = zip_structure_sha256(handle)
        if digest is not None:
            return FileRecord(size, digest, sha256_of="zip")
        handle.seek(0)
        return FileRecord(size, sha256_stream(handle))


DAMAGED_FILE_FIX = (
    "load another checkpoint: manager.load_latest() falls back to the newest good one; "
    "restore this file from a backup if you need this epoch."
)


def check_file(file: Path, record: FileRecord) -> None:
    """Check ``file`` against its manifest ``record``: present, its size, its SHA-256.

    Raises ``CheckpointNotFoundError`` (a file deleted by hand) or ``CorruptCheckpointError``
    (truncated, changed or replaced), naming the file. A ``"zip"`` record does not cover the
    entries' data: their CRC-32s do (``safe_load`` checks them; ``file_matches`` too).
    Used by ``loading.verify_files`` and ``file_matches``; not taught in a notebook.
    """
    if not file.is_file():
        raise CheckpointNotFoundError(
            file,
            f"listed in {MANIFEST_NAME} but missing (deleted by hand?).",
            "load another checkpoint: manager.load_latest() falls back to the newest "
            "good one; manager.list_checkpoints() lists them.",
        )
    size = file.stat().st_size
    if size != record.size:
        raise CorruptCheckpointError(
            file,
            f"the file is {size} bytes, the manifest recorded {record.size}: it was "
            "truncated or changed after it was saved (a partial copy, a full disk, an edit).",
            DAMAGED_FILE_FIX,
        )
    digest = file_sha256(file, record.sha256_of)
    if digest is None:  # a "zip" record, and the file is no longer a readable zip archive
        raise CorruptCheckpointError(
            file,
            "the manifest recorded the SHA-256 of its zip structure, and it is no longer a "
            "readable zip archive with CRC-32s: it was damaged or replaced after it was "
            "saved (disk or copy error, or an edit).",
            DAMAGED_FILE_FIX,
        )
    if digest != record.sha256:
        what = "its zip structure's SHA-256" if record.sha256_of == "zip" else "its SHA-256"
        raise CorruptCheckpointError(
            file,
            f"{what} ({digest[:12]}...) does not match the manifest's "
            f"({record.sha256[:12]}...): the file was damaged, or replaced by another, after "
            "it was saved (disk or copy error, or an edit).",
            DAMAGED_FILE_FIX,
        )


def file_matches(path: str | os.PathLike[str], record: FileRecord) -> bool:
    """Whether every byte of ``path`` is as ``record`` says (reads the whole file).

    ``check_file``'s checks, and for a ``"zip"`` record the entries' CRC-32s too.
    """
    path = Path(path)
    try:
        check_file(path, record)
        if record.sha256_of == "zip":
            verify_zip_crc(path)
    except CheckpointError:
        return False
    return True


# ----------------------------------------------------------------------------------------------
# Writing: durable files with their checksum, computed while the disk flushes
# ----------------------------------------------------------------------------------------------


def _durable_write(
    path: Path, write: Callable[[Path], None], *, zip_structure: bool = False
) -> FileRecord:
    """``atomic_write(path, write)``, and the record (size, SHA-256) of the bytes committed.

    For a writer that only takes a path (``safetensors``' own ``save_file``, ``torch.save``).
    With ``zip_structure`` the record is of the file's zip structure where it has one (a few
    KB read back before the fsync). Otherwise the whole file is hashed: a large one by a thread
    that reads the finished temp file while ``atomic_write`` fsyncs it, so that hashing
    overlaps the disk flush.
    """
    state: dict[str, Any] = {}

    def write_and_hash(temp: Path) -> None:
        write(temp)
        handle = open(temp, "rb")  # noqa: SIM115 (closed below, after the thread)
        state["handle"] = handle
        state["size"] = os.fstat(handle.fileno()).st_size
        if zip_structure:
            digest = zip_structure_sha256(handle)
            if digest is not None:
                state["sha256"], state["sha256_of"] = digest, "zip"
                return
            handle.seek(0)  # no CRC-32s to rely on: the whole file, as below
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
    return FileRecord(state["size"], state["sha256"], sha256_of=state.get("sha256_of", "file"))


def _durable_torch_save(path: Path, obj: Any) -> FileRecord:
    """``torch.save(obj)`` as ``path`` through ``atomic_write``; its record, by zip structure.

    ``torch_save`` hands ``torch.save`` the path (its C++ writer, faster than any Python file
    object), and ``torch.save`` computes each entry's CRC-32 as it writes it; the record's
    SHA-256 covers the rest of the file, the headers and the directory that holds those
    CRC-32s, read back before the fsync. No pass over the data: the save costs what
    ``torch.save`` and the fsync cost.
    """
    return _durable_write(path, lambda temp: torch_save(obj, temp), zip_structure=True)


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

    Compare the files with their manifest record first (``loading.verify_files``); the
    ``torch.save`` files' data is checked here, against their CRC-32s (which a ``"zip"``
    record's SHA-256 covers). A file that holds something else than a training checkpoint
    raises ``ForeignFileError``.
    """
    if path.suffix == ".safetensors":
        weights = load_safetensors(path, device)
        sidecar = path.with_name(path.stem + SIDECAR_SUFFIX)
        checkpoint = safe_load(sidecar, map_location=device, verify_crc=True)
        if isinstance(checkpoint, Mapping):
            checkpoint = dict(checkpoint)
            checkpoint["model_state_dict"] = weights
    else:
        checkpoint = safe_load(path, map_location=device, verify_crc=True)
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
