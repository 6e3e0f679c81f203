"""Reading checkpoint files safely: ``weights_only=True`` always, and a clear error for every bad file.

``torch.load`` on a bad file raises errors from deep inside its zip reader or the unpickler
("PytorchStreamReader failed reading zip archive", "invalid load key"). ``safe_load`` looks at the
file first and says, naming the file, what is wrong and what to do about it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import hashlib
import io
import os
import pickle
import pickletools
import shutil
import struct
import threading
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, Self

import torch

from course_lib.device import try_device
from course_lib.errors import FileError

__all__ = [
    "CODE_RUNNING_GLOBALS",
    "CheckpointDeviceError",
    "CheckpointError",
    "CheckpointNotFoundError",
    "DISK_FULL_ERRNOS",
    "NO_PERMISSION_ERRNOS",
    "WriteError",
    "CorruptCheckpointError",
    "ForeignFileError",
    "MapLocation",
    "UnsafeCheckpointError",
    "ZIP_MAGIC",
    "atomic_write",
    "check_checkpoint_file",
    "safe_load",
    "safe_save",
    "save_with_backup",
    "torch_save",
    "fsync_directory",
    "load_safetensors",
    "check_safetensors_header",
    "verify_zip_crc",
    "zip_structure_sha256",
]

ZIP_MAGIC = b"PK\x03\x04"
# What Python's zipfile raises on a damaged archive besides BadZipFile: a flipped bit in a name
# (UnicodeDecodeError), in the flags (RuntimeError "encrypted"), in the method (NotImplementedError).
_ZIP_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    UnicodeDecodeError,
    NotImplementedError,
    RuntimeError,
    ValueError,
    EOFError,
    OSError,
    struct.error,
)
# Globals that no checkpoint needs and that execute code or commands when called by the unpickler.
CODE_RUNNING_GLOBALS = frozenset(
    {
        "builtins.exec",
        "builtins.eval",
        "builtins.compile",
        "builtins.__import__",
        "builtins.getattr",
        "builtins.open",
        "os.system",
        "posix.system",
        "nt.system",
        "os.popen",
        "os.execv",
        "subprocess.Popen",
        "subprocess.call",
        "subprocess.run",
        "subprocess.check_call",
        "subprocess.check_output",
        "runpy._run_code",
        "runpy.run_path",
    }
)
MapLocation = str | torch.device | Callable[..., Any] | dict[str, str] | None


class CheckpointError(FileError):
    """A checkpoint file could not be loaded; the message names the file and the fix.

    Taught in notebooks/01b_big_models.ipynb.
    """


DISK_FULL_ERRNOS = frozenset(
    code for code in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) if code is not None
)  # no EDQUOT on Windows
NO_PERMISSION_ERRNOS = frozenset((errno.EACCES, errno.EPERM, errno.EROFS))


class WriteError(FileError, OSError):
    """A file could not be written (disk full, no permission, ...); ``errno`` is the cause's.

    The base of the manager's ``CheckpointWriteError`` and the exporters' ``ExportWriteError``:
    each says what was kept and how to fix its own kind of write.
    """

    @classmethod
    def from_os_error(
        cls,
        path: str | os.PathLike[str],
        exc: BaseException,
        *,
        failed: str,
        kept: str,
        when_full: str,
        when_denied: str,
        otherwise: str,
    ) -> Self:
        """The error for ``exc``: "``failed``: <reason> (<ERRNO>)``kept``", with the fix that
        fits the cause (a full disk, a folder that cannot be written, anything else)."""
        code = exc.errno if isinstance(exc, OSError) and exc.errno else errno.EIO
        if code in DISK_FULL_ERRNOS:
            fix = when_full
        elif code in NO_PERMISSION_ERRNOS:
            fix = when_denied
        else:
            fix = otherwise
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        name = f" ({errno.errorcode[code]})" if code in errno.errorcode else ""
        error = cls(path, f"{failed}: {reason}{name}{kept}", fix)
        error.errno = code
        error.strerror = reason
        error.filename = str(path)
        return error


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The path does not exist (or is not a file)."""


class CorruptCheckpointError(CheckpointError):
    """The file is empty, truncated or damaged."""


class ForeignFileError(CheckpointError):
    """The file is not something ``torch.load`` reads (another format, or another kind of archive)."""


class CheckpointDeviceError(CheckpointError):
    """The file's tensors were saved on a device (e.g. CUDA) that this machine does not have."""


class UnsafeCheckpointError(CheckpointError):
    """The file needs Python globals beyond plain weights; loading it would run their code.

    Taught in notebooks/02b_safe_formats.ipynb.
    """

    def __init__(self, path: str | os.PathLike[str], unsafe_globals: list[str]) -> None:
        self.unsafe_globals = unsafe_globals
        listed = ", ".join(unsafe_globals) if unsafe_globals else "(could not be listed)"
        dangerous = [g for g in unsafe_globals if g in CODE_RUNNING_GLOBALS]
        if dangerous:
            super().__init__(
                path,
                f"refused by weights_only=True: the file would call {', '.join(dangerous)}, "
                "which runs arbitrary code. No model checkpoint needs that: treat the file as "
                "malicious.",
                "do not load it (not even with weights_only=False); delete it and get the "
                "weights as a state_dict from a source you trust.",
            )
            return
        super().__init__(
            path,
            f"refused by weights_only=True: the file needs these Python globals: {listed}. "
            "Unpickling them would import and call code named in the file.",
            "if you trust these classes, pass them explicitly: "
            "safe_load(path, allowed_globals=[TheClass, ...]) "
            "(torch.serialization.safe_globals). If it is a whole pickled model from a source you "
            "trust completely, torch.load(path, weights_only=False). Better: save and share "
            "state_dicts, which need neither.",
        )


def _inspect_zip(path: Path) -> None:
    """Raise if a zip-format file is truncated or is an archive that ``torch.load`` cannot read."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except _ZIP_ERRORS as exc:
        raise CorruptCheckpointError(
            path,
            f"the zip archive is damaged or truncated ({type(exc).__name__}: {exc}; "
            f"{path.stat().st_size} bytes): "
            "typically a save that was interrupted, a full disk, or a partial copy.",
            "load an earlier checkpoint or a backup; write checkpoints with safe_save "
            "so an interrupted save cannot replace a good file.",
        ) from None
    if any(name.endswith("/constants.pkl") for name in names):
        raise ForeignFileError(
            path,
            "this is a TorchScript archive, not a torch.save file. It is a program: "
            "torch.jit.load runs its code while loading.",
            "if you made it or trust its source completely, load it with "
            "course_lib.export.load_torchscript(path, trusted=True); otherwise do not load it.",
        )
    if any(name.endswith("/data.pkl") or name == "data.pkl" for name in names):
        return
    if any("/models/" in name and name.endswith(".json") for name in names) or any(
        name.endswith("/archive_format") for name in names
    ):
        raise ForeignFileError(
            path,
            "this is a torch.export program (.pt2), not a torch.save file.",
            "load it with course_lib.export.load_program(path): it checks first that "
            "torch.export.load will run no code from the file (a .pt2 may hold pickles or "
            "native libraries) and refuses such a file unless trusted=True.",
        )
    raise ForeignFileError(
        path,
        f"this is a zip archive but not a PyTorch checkpoint (no data.pkl among {len(names)} "
        "entries).",
        "check that the path points at a file written by torch.save.",
    )


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 10:
        return False
    (header_len,) = struct.unpack("<Q", head[:8])
    return 0 < header_len < size and head[8:9] == b"{"


def check_checkpoint_file(path: str | os.PathLike[str]) -> Path:
    """Check that ``path`` is a complete ``torch.save`` file; raise a ``CheckpointError`` if not.

    Cheap: reads the header and the zip directory, never the tensors.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointNotFoundError(
            path,
            "no such file.",
            f"check the path (the working directory is {Path.cwd()}).",
        )
    if path.is_dir():
        if (path / ".metadata").exists():
            raise ForeignFileError(
                path,
                "this is a torch.distributed.checkpoint directory, not a single file.",
                "load it with course_lib.distributed.load_dcp(state_dict, path), which reads its "
                ".metadata pickle without running code (dcp.load would unpickle it freely).",
            )
        raise CheckpointNotFoundError(path, "is a directory, not a file.", "pass a file path.")
    size = path.stat().st_size
    if size == 0:
        raise CorruptCheckpointError(
            path,
            "the file is empty (0 bytes): the save that created it never wrote its data.",
            "load an earlier checkpoint or a backup; write checkpoints with safe_save.",
        )
    with path.open("rb") as f:
        head = f.read(16)
    if head.startswith(ZIP_MAGIC):
        _inspect_zip(path)
        return path
    if head[:1] == b"\x80":  # a pickle protocol header: the legacy (pre-1.6) torch.save format
        return path
    if _looks_like_safetensors(head, size):
        raise ForeignFileError(
            path,
            "this is a safetensors file, not a torch.save file.",
            "load it with safetensors.torch.load_file(path).",
        )
    raise ForeignFileError(
        path,
        f"this is not a PyTorch checkpoint (it starts with {head[:8]!r}).",
        "check that the path points at a file written by torch.save.",
    )


def verify_zip_crc(path: str | os.PathLike[str]) -> None:
    """Read every entry of a zip-format checkpoint and check its CRC-32 (``torch.load`` never does).

    A flipped bit in tensor data otherwise loads silently as a wrong weight. This reads the
    whole file once (its cost is measured in ``benchmarks/bench_checkpoint_io.py``). Used by the
    tests (``safe_load``'s ``verify_crc`` checks the same CRC-32s when it loads); not taught in a
    notebook.
    """
    path = Path(path)
    try:
        with path.open("rb") as source:
            records, tensors = _zip_entries(source)
            _check_crcs(source, records + tensors)
    except _ZIP_ERRORS as exc:
        raise _crc_failed(path, exc) from None


def _crc_failed(path: Path, exc: BaseException) -> CorruptCheckpointError:
    return CorruptCheckpointError(
        path,
        f"the file's data fails its CRC-32 check ({type(exc).__name__}: {exc}): its bytes "
        "changed after it was written (a failing disk, memory or a damaged copy).",
        "load an earlier checkpoint or a backup; keep checksums of checkpoints you rely on "
        "(CheckpointManager records a SHA-256 for each).",
    )


# One entry of a zip archive: name, offset of its data, stored size, CRC-32 (None: compressed).
_ZipEntry = tuple[str, int, int, int | None]


def _record(name: str) -> str:
    """An archive entry as the learner knows it: ``data/19``, not ``.model.pth.x1y2/data/19``
    (``torch.save`` puts every entry under a folder named after the file it wrote, which for a
    safe save is the random temporary name)."""
    return repr(name.split("/", 1)[-1])


_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, ..., file name length, extra field length
_CRC_THREADS = 4  # at most, while torch.load reads (each one's CRC-32 runs without the GIL)


def _zip_entries(source: BinaryIO) -> tuple[list[_ZipEntry], list[_ZipEntry]]:
    """The archive's entries: its records (pickle, version, ...) and its tensors' raw bytes.

    Offsets come from each entry's local header; a compressed entry (``torch.save`` never
    writes one) gets ``None`` as its CRC and is read through ``zipfile``, with the records.
    ``source`` is the file opened once: another process may replace or delete the path while
    it is read (a manager pruning), and every read here is of the same file.
    """
    records, tensors = [], []
    fd = source.fileno()
    size = os.fstat(fd).st_size
    with zipfile.ZipFile(source) as archive:
        for info in archive.infolist():
            head = os.pread(fd, _LOCAL_HEADER.size, info.header_offset)
            if len(head) < _LOCAL_HEADER.size or not head.startswith(ZIP_MAGIC):
                raise zipfile.BadZipFile(
                    f"Bad magic number for the header of record {_record(info.filename)}"
                )
            _, name_length, extra_length = _LOCAL_HEADER.unpack(head)
            start = info.header_offset + _LOCAL_HEADER.size + name_length + extra_length
            if start + info.compress_size > size:
                raise EOFError(
                    f"record {_record(info.filename)} ends past the end of the file ({size} bytes)"
                )
            stored = info.compress_type == zipfile.ZIP_STORED
            entry = (info.filename, start, info.compress_size, info.CRC if stored else None)
            is_tensor = "/data/" in info.filename and info.filename.rsplit("/", 1)[-1].isdigit()
            (tensors if is_tensor and stored else records).append(entry)
    return records, tensors


def zip_structure_sha256(source: BinaryIO) -> str | None:
    """The SHA-256 of a zip archive's structure: every byte of the file but its entries' data.

    ``source`` is the archive opened once, in binary mode. The digest covers the file's size,
    where each entry's data lies, and every other byte: the local headers (with their padding),
    the data descriptors, the central directory and its end record. The central directory
    holds each entry's CRC-32 and size, so this digest together with a check of the CRC-32s
    (``safe_load`` checks them on every load) covers every byte of the file, while computing
    it reads a few KB (the headers and the directory) and never the data. A checkpoint
    manager records it for the torch format instead of a SHA-256 of the whole file, which
    would cost a pass over all the bytes at every save.

    ``None`` for a file it cannot vouch for: not a readable zip archive, entries whose data
    overlap, or an entry with data but a CRC-32 of 0 (``torch.save`` writes 0 for every entry
    after ``torch.serialization.set_crc32_options(False)``). Hash the whole file then.
    """
    try:
        records, tensors = _zip_entries(source)
        fd = source.fileno()
        size = os.fstat(fd).st_size
        spans = []
        for _, start, length, crc in records + tensors:
            if length and crc == 0:
                return None  # written without CRC-32s: its data would be covered by nothing
            if length:
                spans.append((start, length))  # compressed (crc None): checked when inflated
        digest = hashlib.sha256(b"zip structure: size, data spans, the bytes outside them\n")
        digest.update(struct.pack("<QQ", size, len(spans)))
        position = 0
        for start, length in sorted(spans):
            if start < position:
                return None  # overlapping entries: not an archive torch.save writes
            digest.update(struct.pack("<QQ", start, length))
            digest.update(_read_exactly(fd, start - position, position))
            position = start + length
        digest.update(_read_exactly(fd, size - position, position))
    except _ZIP_ERRORS:
        return None
    return digest.hexdigest()


def _read_exactly(fd: int, length: int, offset: int) -> bytes:
    data = os.pread(fd, length, offset) if length else b""
    if len(data) != length:
        raise EOFError(f"the file ended while reading {length} bytes at {offset}")
    return data


def _check_crcs(source: BinaryIO, entries: list[_ZipEntry]) -> None:
    """Read ``entries`` and compare each one's CRC-32 with the archive's; raise ``BadZipFile``.

    Stored entries are read with ``os.pread``, which leaves the file's position alone: threads
    can share ``source`` with each other and with ``torch.load``.
    """
    fd = source.fileno()
    for name, start, size, expected in entries:
        if expected is None:  # compressed: zipfile inflates it and checks its CRC-32
            with zipfile.ZipFile(source) as archive, archive.open(name) as entry:
                while entry.read(1 << 22):
                    pass
            continue
        crc, offset, end = 0, start, start + size
        while offset < end:
            chunk = os.pread(fd, min(4 << 20, end - offset), offset)
            if not chunk:
                raise EOFError(f"record {_record(name)} is cut short")
            crc = zlib.crc32(chunk, crc)  # zlib releases the GIL on large buffers
            offset += len(chunk)
        if crc != expected:
            raise zipfile.BadZipFile(f"Bad CRC-32 for record {_record(name)}")


@contextlib.contextmanager
def _crc_checked_while_loading(path: Path, mmap: bool) -> Iterator[Any]:
    """Check a zip checkpoint's CRC-32s around a ``torch.load`` of it, as ``verify_zip_crc`` does.

    Yields what ``torch.load`` is to read. The records the unpickler reads (pickle, version,
    byte order) are checked before the body runs. The tensors' raw bytes, nearly all of the
    file, are checked as ``torch.load`` reads them: it reads through a ``_CrcCheckingReader``,
    which computes each tensor's CRC-32 on the bytes it has just read into the tensor (one
    pass over the data, where a second read of the file would double the memory traffic). A
    memory-mapped load (``mmap=True``) needs the path, and reads lazily: then threads check
    the tensors while the body runs. A tensor the body did not read (it failed first) is
    checked on exit. A failed check raises on exit, in place of whatever the body raised (a
    damaged file may make ``torch.load`` fail too, and the CRC says best what happened to
    it); of several, the one earliest in the file.
    """
    try:
        # Once, unbuffered: the checks and the loading read this file, whatever happens to
        # the path (another process may replace or delete it).
        source = path.open("rb", buffering=0)
    except OSError as exc:
        raise _crc_failed(path, exc) from None
    with source:
        try:
            records, tensors = _zip_entries(source)
            _check_crcs(source, records)
        except _ZIP_ERRORS as exc:
            raise _crc_failed(path, exc) from None
        if mmap:
            with _tensors_checked_in_threads(path, source, tensors):
                yield path
            return
        reader = _CrcCheckingReader(source, tensors)
        try:
            yield reader
        finally:
            reader.close()
            failed = reader.failures
            for entry in reader.unchecked():  # in file order: stop at the first bad one
                if failed and entry[1] > min(failed):
                    break
                try:
                    _check_crcs(source, [entry])
                except _ZIP_ERRORS as exc:
                    failed[entry[1]] = exc
                    break
            if failed:
                raise _crc_failed(path, failed[min(failed)]) from None


_CRC_PIECE = 256 << 10  # read, then CRC-checked while still in the CPU cache (L2 is larger)
_CRC_MIN_PART = 1 << 20  # a tensor is shared among threads in parts of at least this size


class _CrcCheckingReader(io.RawIOBase):
    """The file object ``torch.load`` reads a zip checkpoint through, checking CRC-32s as it goes.

    ``torch.load`` reads each tensor's stored bytes with one ``readinto`` of exactly that
    entry, straight into the tensor's memory. Such a read goes ``_CRC_PIECE`` bytes at a time,
    and each piece's CRC-32 is computed right after it arrives, while it is still in the CPU
    cache: the check costs the CRC-32 alone, not another read of the file. A large tensor is
    cut into parts, one per core (up to ``_CRC_THREADS``), each read and checked by its own
    thread (both release the GIL), and the parts' CRC-32s are combined into the entry's: a
    CRC-32 (zlib's) runs at about the speed of the copy from the page cache, so on one core
    the check would make the load about twice as long. Every part is done before
    ``readinto`` returns, so no thread touches the tensor's memory after that.

    Every other read (headers, the directory, the records) passes through. A tensor read any
    other way (another torch version may read in pieces) is left in ``unchecked()``; a tensor
    whose CRC-32 is wrong is kept in ``failures`` (by its offset) and loads as read, so that
    the load goes on and the earliest damage in the file can be reported.
    """

    def __init__(self, source: BinaryIO, tensors: list[_ZipEntry]) -> None:
        super().__init__()
        self._fd = source.fileno()
        self._size = os.fstat(self._fd).st_size
        self._position = 0
        self._tensors = {entry[1]: entry for entry in tensors}
        self._checked: set[int] = set()
        self._cores = max(1, min(_CRC_THREADS, os.cpu_count() or 1))
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self.failures: dict[int, BaseException] = {}

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._position, os.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._position = base + offset
        return self._position

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        entry = self._tensors.get(self._position)
        if entry is not None and entry[2] == len(view):
            done = self._read_checked(view, entry)
        else:
            done = self._read(view, self._position)
        self._position += done
        return done

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        super().close()

    def _read(self, view: memoryview, offset: int) -> int:
        """Read into ``view`` from ``offset`` until it is full or the file ends."""
        done = 0
        while done < len(view):
            if hasattr(os, "preadv"):
                count = os.preadv(self._fd, [view[done:]], offset + done)
            else:
                data = os.pread(self._fd, len(view) - done, offset + done)
                count = len(data)
                view[done : done + count] = data
            if not count:
                break
            done += count
        return done

    def _read_crc(self, view: memoryview, offset: int) -> tuple[int, int]:
        """Read into ``view`` from ``offset`` piece by piece: (CRC-32, bytes read)."""
        crc, done = 0, 0
        while done < len(view):
            piece = view[done : done + _CRC_PIECE]
            count = self._read(piece, offset + done)
            crc = zlib.crc32(piece[:count], crc)  # zlib releases the GIL on large buffers
            done += count
            if count < len(piece):
                break
        return crc, done

    def _read_checked(self, view: memoryview, entry: _ZipEntry) -> int:
        name, start, size, expected = entry
        parts = max(1, min(self._cores, size // _CRC_MIN_PART))
        bounds = [size * i // parts for i in range(parts + 1)]
        futures = []
        if parts > 1:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    self._cores - 1, thread_name_prefix="checkpoint-crc32"
                )
            futures = [
                self._pool.submit(self._read_crc, view[a:b], start + a)
                for a, b in zip(bounds[:-2], bounds[1:-1], strict=True)
            ]
        try:
            last = self._read_crc(view[bounds[-2] :], start + bounds[-2])
        finally:
            concurrent.futures.wait(futures)  # no thread may touch the memory once we return
        crc, done = 0, 0
        for (part_crc, count), a, b in zip(
            [f.result() for f in futures] + [last], bounds[:-1], bounds[1:], strict=True
        ):
            crc = _crc32_combine(crc, part_crc, count)
            done += count
            if count < b - a:
                break
        self._checked.add(start)
        if done < size:
            self.failures[start] = EOFError(f"record {_record(name)} is cut short")
        elif crc != expected:
            self.failures[start] = zipfile.BadZipFile(f"Bad CRC-32 for record {_record(name)}")
        return done

    def unchecked(self) -> list[_ZipEntry]:
        """The tensors not checked while they were read, in file order."""
        return sorted(
            (entry for start, entry in self._tensors.items() if start not in self._checked),
            key=lambda entry: entry[1],
        )


# zlib's crc32_combine (which Python's zlib does not offer), as zlib 1.2.12 computes it:
# the CRC-32 of A followed by B from the CRC-32s of A and B and the length of B, by
# multiplying polynomials over GF(2) modulo the CRC-32 polynomial (reflected).
_CRC32_POLY = 0xEDB88320


def _multiply_mod_p(a: int, b: int) -> int:
    """``a * b`` modulo the CRC-32 polynomial (bit-reflected, as the CRC-32 is)."""
    product, bit = 0, 1 << 31
    while a:
        if a & bit:
            product ^= b
            a ^= bit
        bit >>= 1
        b = (b >> 1) ^ _CRC32_POLY if b & 1 else b >> 1
    return product


_X_TO_2_TO_THE = [1 << 30]  # x^(2^k) modulo the polynomial, for k = 0..31
for _ in range(31):
    _X_TO_2_TO_THE.append(_multiply_mod_p(_X_TO_2_TO_THE[-1], _X_TO_2_TO_THE[-1]))


def _crc32_combine(crc_a: int, crc_b: int, length_b: int) -> int:
    """The CRC-32 of A + B, given those of A and B and B's length in bytes."""
    shift, k = 1 << 31, 3  # x^(8 * length_b): 2^3 bits per byte
    while length_b:
        if length_b & 1:
            shift = _multiply_mod_p(_X_TO_2_TO_THE[k & 31], shift)
        length_b >>= 1
        k += 1
    return _multiply_mod_p(shift, crc_a) ^ crc_b


@contextlib.contextmanager
def _tensors_checked_in_threads(
    path: Path, source: BinaryIO, tensors: list[_ZipEntry]
) -> Iterator[None]:
    """The tensors' CRC-32s, checked by threads while the body runs; raised on exit."""
    count = max(1, min(_CRC_THREADS, (os.cpu_count() or 2) - 1, len(tensors)))
    shares: list[list[_ZipEntry]] = [[] for _ in range(count)]
    for entry in sorted(tensors, key=lambda e: -e[2]):  # largest first, to the lightest share
        min(shares, key=lambda share: sum(e[2] for e in share)).append(entry)
    failed: dict[int, BaseException] = {}

    def check(share: list[_ZipEntry]) -> None:
        for entry in sorted(share, key=lambda e: e[1]):
            try:
                _check_crcs(source, [entry])
            except _ZIP_ERRORS as exc:
                failed[entry[1]] = exc
                return

    threads = [
        threading.Thread(target=check, args=(share,), name="checkpoint-crc32", daemon=True)
        for share in shares
    ]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        for thread in threads:
            thread.join()
        if failed:
            raise _crc_failed(path, failed[min(failed)]) from None


# Opcodes that import a name (and so can reach code) which torch.save never writes.
_IMPORTING_OPCODES = {"INST", "OBJ", "STACK_GLOBAL"}


def _importing_opcodes(path: Path) -> list[str]:
    """Names a checkpoint's pickle imports with opcodes weights_only does not parse (never run)."""
    try:
        with zipfile.ZipFile(path) as archive:
            name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
            if archive.getinfo(name).file_size > 64 << 20:
                return []
            data = archive.read(name)
    except (*_ZIP_ERRORS, StopIteration):
        return []
    names, strings, importing = [], [], False
    try:
        for opcode, argument, _ in pickletools.genops(data):
            if isinstance(argument, str):
                strings.append(argument)
            importing |= opcode.name in _IMPORTING_OPCODES
            if opcode.name in ("GLOBAL", "INST"):
                names.append(str(argument).replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(f"{strings[-2]}.{strings[-1]}")
    except Exception:  # noqa: BLE001 - a damaged pickle: what was found before the damage counts
        pass
    if not importing:
        return []
    return sorted(set(names)) or ["an object built by pickle opcode OBJ"]


def safe_load(
    path: str | os.PathLike[str],
    map_location: MapLocation = None,
    *,
    allowed_globals: Iterable[Any] = (),
    mmap: bool = False,
    verify_crc: bool = True,
) -> Any:
    """Load a ``torch.save`` file with ``weights_only=True``, onto ``map_location``.

    ``map_location`` defaults to the course device (``try_device()``). ``allowed_globals`` is the
    explicit, scoped opt-in for classes you trust (``torch.serialization.safe_globals``). The
    archive's CRC-32s are checked: the pickle's before it is unpickled, the tensors' on their
    bytes as they are read (``verify_crc=False`` skips the check).
    Sparse tensors are checked for consistent indices. Every failure is a
    ``CheckpointError`` naming the file and the fix. Taught in ``notebooks/02_whole_model.ipynb``.
    """
    path = check_checkpoint_file(path)
    location = try_device() if map_location is None else map_location
    allowed_globals = list(allowed_globals)
    verify = verify_crc and zipfile.is_zipfile(path)
    crc_checked = _crc_checked_while_loading(path, mmap) if verify else contextlib.nullcontext(path)
    try:
        # Sparse invariants on: out-of-range indices would otherwise crash the process later.
        with (
            crc_checked as source,
            torch.serialization.safe_globals(allowed_globals),
            torch.sparse.check_sparse_tensor_invariants(),
        ):
            return torch.load(source, map_location=location, weights_only=True, mmap=mmap)
    except CheckpointError:
        raise
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" not in str(exc):
            raise CorruptCheckpointError(
                path,
                f"the pickled data is damaged ({exc}).",
                "load an earlier checkpoint or a backup.",
            ) from None
        try:
            needed = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # noqa: BLE001 - the pickle uses opcodes torch's scanner cannot read
            needed = []
        needed = needed or _importing_opcodes(path)
        allowed = {
            f"{g.__module__}.{g.__qualname__}" for g in allowed_globals if hasattr(g, "__module__")
        }
        unsafe = sorted(g for g in needed if g not in allowed)
        if not unsafe:  # refused, yet it names no global: the pickled data itself is damaged
            raise _damaged(path, exc) from None
        raise UnsafeCheckpointError(path, unsafe) from None
    except RuntimeError as exc:
        if "Attempting to deserialize object on" in str(exc):
            raise CheckpointDeviceError(
                path,
                f"the file's tensors were saved on a device this machine lacks "
                f"(map_location={location!r}): {str(exc).splitlines()[0]}",
                "pass map_location='cpu' (or leave map_location=None to load onto "
                "course_lib.device.try_device()).",
            ) from None
        raise _damaged(path, exc) from None
    except Exception as exc:  # noqa: BLE001 - a damaged pickle fails anywhere in the unpickler
        raise _damaged(path, exc) from None


def _damaged(path: Path, exc: BaseException) -> CorruptCheckpointError:
    lines = str(exc).splitlines() or [""]
    # torch's refusal text starts with advice about weights_only; the cause is on a later line.
    first_line = next((ln.strip() for ln in lines if "WeightsUnpickler error" in ln), lines[0])
    return CorruptCheckpointError(
        path,
        f"the file is damaged: torch.load failed with {type(exc).__name__}: {first_line}",
        "load an earlier checkpoint or a backup; write checkpoints with safe_save.",
    )


def fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _current_umask() -> int:
    """The process umask, read without changing it where possible (no race with other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0o022)  # elsewhere: the classic read-by-setting, restored at once
    os.umask(umask)
    return umask


def _new_file_mode(existing: Path) -> int:
    """The mode a plain ``open(path, 'wb')`` would leave: the old file's, or 0o666 minus umask."""
    try:
        return existing.stat().st_mode & 0o7777
    except FileNotFoundError:
        return 0o666 & ~_current_umask()


SAFETENSORS_MAX_HEADER = 100_000_000  # safetensors' own limit
#: Every tensor costs about 1.5 KB of memory once loaded, whatever its size: a file may list many
#: only if it holds about as many bytes (a header of 150,000 empty tensors took 218 MB, 2.2 s).
SAFETENSORS_BYTES_PER_TENSOR = 256
SAFETENSORS_FREE_TENSORS = 10_000


def check_safetensors_header(
    path: str | os.PathLike[str], *, fix: str = "load an earlier checkpoint or a backup."
) -> int:
    """Raise ``CorruptCheckpointError`` unless ``path``'s header is one safetensors can read
    within a small multiple of the file's size in memory; return the header's length.

    Reads the 8-byte length and the JSON header only (no tensor data); counts the tensors it
    lists without parsing it. More than ``SAFETENSORS_FREE_TENSORS`` tensors need at least
    ``SAFETENSORS_BYTES_PER_TENSOR`` bytes of file each.
    """
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CorruptCheckpointError(path, f"not a safetensors file ({size} bytes).", fix)
        (length,) = struct.unpack("<Q", head)
        if length > min(SAFETENSORS_MAX_HEADER, size - 8):
            raise CorruptCheckpointError(
                path,
                f"not a readable safetensors file: its header claims {length:,} bytes "
                f"(the file has {size:,}, safetensors allows {SAFETENSORS_MAX_HEADER:,}).",
                fix,
            )
        header = f.read(length)
    tensors = header.count(b'"dtype"')
    allowed = max(SAFETENSORS_FREE_TENSORS, size // SAFETENSORS_BYTES_PER_TENSOR)
    if tensors > allowed:
        raise CorruptCheckpointError(
            path,
            f"its header lists {tensors:,} tensors in a file of {size:,} bytes: each costs "
            f"about 1.5 KB of memory once loaded, so at most {allowed:,} are read from a file "
            "this size (a file crafted to exhaust memory).",
            fix,
        )
    return length


def load_safetensors(
    path: str | os.PathLike[str],
    map_location: MapLocation = "cpu",
    *,
    fix: str = "load an earlier checkpoint or a backup.",
) -> dict[str, torch.Tensor]:
    """A ``.safetensors`` file's tensors (memory-mapped on the CPU), with ``safe_load``'s errors.

    A missing file is a ``CheckpointNotFoundError``; an empty or unreadable one a
    ``CorruptCheckpointError`` whose fix is ``fix`` (what to do where the caller reads it). The
    format holds only tensors, so nothing in the file can run code.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(path, "no such file.", "check the path.")
    if path.stat().st_size == 0:
        raise CorruptCheckpointError(
            path, "the file is empty (0 bytes): the save that created it never wrote its data.", fix
        )
    check_safetensors_header(path, fix=fix)
    device = (
        str(torch.device(map_location)) if isinstance(map_location, (str, torch.device)) else "cpu"
    )
    try:
        with torch.sparse.check_sparse_tensor_invariants():
            return load_file(path, device=device)
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError, OverflowError) as exc:
        raise CorruptCheckpointError(
            path, f"not a readable safetensors file ({type(exc).__name__}: {exc}).", fix
        ) from None


def atomic_write(
    path: str | os.PathLike[str],
    write: Callable[[Path], None],
    *,
    mode: int | None = None,
    sync_directory: bool = True,
    follow_symlinks: bool = True,
) -> Path:
    """Write a file so that ``path`` holds either its old content or the complete new content.

    ``write(temp_path)`` writes the new content to a uniquely named temporary file in the same
    directory; it is then flushed to disk (fsync), renamed over ``path`` (``os.replace``, atomic on
    POSIX and Windows), and the directory is fsynced so the rename survives a power cut. On any
    failure (a full disk, a permission error, an interrupt) the temporary file is removed, ``path``
    is untouched and the error is re-raised with a note saying so. The new file gets ``mode``, or
    else the permissions a plain save would leave. A symlink at ``path`` is written through, as a
    plain ``torch.save`` would; with ``follow_symlinks=False`` the link itself is replaced (what a
    folder the code owns, such as a checkpoint manager's, needs: a planted link must not turn a
    save into a write outside the folder).

    ``sync_directory=False`` skips the final directory fsync, for a caller that commits another
    file in the same directory right after (a manifest): one directory fsync makes every earlier
    rename in that directory durable, and each one costs a disk flush.
    """
    import tempfile

    given = Path(path)
    path = Path(os.path.realpath(given)) if follow_symlinks and given.is_symlink() else given
    directory = path.parent if str(path.parent) else Path(".")
    try:
        fd, temp_name = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        exc.add_note(f"course_lib: cannot create a file in {directory}; {path} is unchanged.")
        raise
    os.close(fd)
    temp_path = Path(temp_name)
    try:
        write(temp_path)
        with temp_path.open("r+b") as written:  # Windows cannot fsync a read-only handle
            os.fsync(written.fileno())
        os.chmod(temp_path, _new_file_mode(path) if mode is None else mode)
        os.replace(temp_path, path)
        # Renaming onto a hard link of the same file is a no-op that leaves the temp name behind.
        temp_path.unlink(missing_ok=True)
    except BaseException as exc:
        temp_path.unlink(missing_ok=True)
        # torch's zip writer reports a full disk as RuntimeError("... unexpected pos ...").
        if isinstance(exc, OSError | RuntimeError):
            try:
                free = f" ({shutil.disk_usage(directory).free / 2**20:.0f} MiB free there)"
            except OSError:
                free = ""
            exc.add_note(f"course_lib: nothing was written; {path} is unchanged{free}.")
        raise
    if sync_directory:
        fsync_directory(directory)
    return given


def torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` to a path (its fast C++ writer), with a failed write raised as ``OSError``.

    Given a path, ``torch.save`` reports a failed write only as ``RuntimeError: [enforce fail at
    inline_container.cc] unexpected pos ...``, which says nothing about the cause. Saving through
    a Python file object would keep the ``OSError`` but costs about 1 ms more per small
    checkpoint, so the cause is found afterwards: no room left in the folder means ``ENOSPC``.
    """
    path = Path(path)
    try:
        torch.save(obj, path)
    except RuntimeError as exc:
        text = str(exc)
        if not any(mark in text for mark in ("inline_container", "unexpected pos", "write")):
            raise
        try:
            free = shutil.disk_usage(path.parent).free
        except OSError:
            free = 0
        code = errno.ENOSPC if free < 2**20 else errno.EIO
        first_line = text.strip().splitlines()[0] if text.strip() else ""
        raise OSError(code, f"{os.strerror(code)} (torch.save: {first_line})", str(path)) from exc


def safe_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save(obj, path)``, atomically and durably (see ``atomic_write``).

    The chapter's version saved to ``path + '.tmp'`` and moved it over ``path``: it never fsynced
    (a power cut could leave an empty file), reused one temporary name (two writers collide), and
    left the ``.tmp`` file behind on failure.

    Taught in notebooks/09_safe_saving.ipynb, in depth in notebooks/09b_durability_in_depth.ipynb.
    """
    return atomic_write(path, lambda temp: torch_save(obj, temp))


def save_with_backup(
    obj: Any, path: str | os.PathLike[str], *, backup_suffix: str = ".backup"
) -> Path:
    """Save ``obj`` to ``path`` atomically, first keeping the previous file as ``path + suffix``.

    The backup is made atomically too (a hard link renamed into place, or a durable copy where the
    file system has no hard links), so at every moment both names hold a complete file. The
    backup rotates only after the new file is completely written: a save that fails (a full
    disk) leaves both the file and its backup as they were. Taught in
    ``notebooks/09b_durability_in_depth.ipynb``.
    """
    path = Path(path)
    backup = path.with_name(path.name + backup_suffix)

    def keep_previous(temp: Path) -> None:
        temp.unlink()
        try:
            os.link(path, temp)
        except OSError:
            shutil.copy2(path, temp)

    def write_then_rotate(temp: Path) -> None:
        torch_save(obj, temp)
        if path.exists():
            # The temp name is a hard link to path: it keeps path's own mode, not the old backup's.
            atomic_write(backup, keep_previous, mode=path.stat().st_mode & 0o7777)

    return atomic_write(path, write_then_rotate)
