"""Reading a ``torch.distributed.checkpoint`` (DCP) folder without running code from it.

A DCP folder's ``.metadata`` file is a pickle, and DCP reads it with plain ``pickle.load``: a
hostile ``.metadata`` runs code the moment a folder is inspected or resumed from. DCP's default
load planner also reads every non-tensor entry (an optimizer's ``lr``) with
``torch.load(weights_only=False)``, and follows whatever ``relative_path`` the metadata names,
``../../elsewhere`` or an absolute path included. This module reads the same folders safely:

1. ``read_dcp_metadata``: ``.metadata`` through an unpickler that only knows DCP's own metadata
   classes, ``torch.Size`` and dtypes, then checked: a real ``Metadata``, shapes of at most 64
   non-negative ints, every shard a plain file name of a regular file in the folder (no symlink),
   every recorded byte range inside its file.
2. ``SafeFileSystemReader`` and ``SafeLoadPlanner``: a storage reader that uses (1) and a planner
   whose non-tensor entries load with ``weights_only=True``, for any ``dcp.load``.
3. ``load_dcp`` and ``dcp_to_torch_save``: ``dcp.load`` and the format conversion with both.

Every refusal is a ``CheckpointError`` naming the folder, the problem and the fix.

Taught in notebooks/05b_torchrun_elastic.ipynb, section 6.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import pickletools
import re
import stat
from collections.abc import Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.format_utils import _EmptyStateDictLoadPlanner
from torch.distributed.checkpoint.metadata import (
    _MEM_FORMAT_ENCODING,
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import LoadPlanner, ReadItem

from course_lib.safe_io import CheckpointError, CorruptCheckpointError, UnsafeCheckpointError

__all__ = [
    "MAX_METADATA_BYTES",
    "MAX_PLAIN_ENTRY_BYTES",
    "MAX_SHAPE_DIMS",
    "SafeFileSystemReader",
    "SafeLoadPlanner",
    "UnsafeDCPFolderError",
    "check_plain_entries",
    "dcp_to_torch_save",
    "load_dcp",
    "read_dcp_metadata",
    "shard_name",
]

MAX_SHAPE_DIMS = 64  # torch itself refuses tensors of more than 64 dimensions
MAX_METADATA_BYTES = 256 << 20  # a model of a trillion parameters has a few MB of metadata
_KEEP = "load the previous step (newest_complete_step does), or save the checkpoint again"

_DTYPES = {name: value for name, value in vars(torch).items() if isinstance(value, torch.dtype)}
_LAYOUTS = {"torch.strided", "torch.sparse_coo", "torch.sparse_csr", "torch.sparse_csc"}
_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch.distributed.checkpoint.metadata", cls.__name__): cls
    for cls in (
        Metadata,
        TensorStorageMetadata,
        BytesStorageMetadata,
        ChunkStorageMetadata,
        TensorProperties,
        MetadataIndex,
        StorageMeta,
        _MEM_FORMAT_ENCODING,
    )
}
_ALLOWED[("torch.distributed.checkpoint.filesystem", "_StorageInfo")] = _StorageInfo
_ALLOWED[("torch", "Size")] = torch.Size
_ALLOWED.update({("torch", name): dtype for name, dtype in _DTYPES.items()})
_ALLOWED[("torch.serialization", "_get_layout")] = lambda name: _layout(name)
for _name in ("PosixPath", "WindowsPath", "Path", "PurePosixPath", "PureWindowsPath"):
    _ALLOWED[("pathlib", _name)] = lambda *parts: _path_text(parts)  # storage_meta.checkpoint_id
_ALLOWED[("collections", "OrderedDict")] = dict


class UnsafeDCPFolderError(UnsafeCheckpointError):
    """A DCP folder's metadata asks for something no checkpoint needs (code, files elsewhere)."""

    def __init__(self, path: str | os.PathLike[str], problem: str, fix: str) -> None:
        self.unsafe_globals = []
        CheckpointError.__init__(self, path, problem, fix)


def _path_text(parts: tuple[Any, ...]) -> str:
    """A saved ``Path`` as text (the folder's old location: shown, never opened)."""
    if not all(isinstance(p, str) for p in parts) or len(parts) > 4096:
        raise pickle.UnpicklingError("a path made of something other than strings")
    return str(PurePosixPath(*parts))


def _layout(name: Any) -> torch.layout:
    if not isinstance(name, str) or name not in _LAYOUTS:
        raise pickle.UnpicklingError(f"unknown tensor layout {name!r}")
    return getattr(torch, name.removeprefix("torch."))


class _MetadataUnpickler(pickle.Unpickler):
    """Knows DCP's metadata classes, torch.Size and dtypes; any other global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise _Refused(f"{module}.{name}") from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not part of DCP metadata")


class _Refused(pickle.UnpicklingError):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def shard_name(name: str) -> str:
    """``rank 1's shard __1_0.distcp`` for DCP's shard names, else the name itself."""
    match = re.fullmatch(r"__([0-9]+)_[0-9]+\.distcp", name, flags=re.ASCII)
    return f"rank {match.group(1)}'s shard {name}" if match else name


def _globals_named(data: bytes) -> list[str]:
    """Every global the pickle names (GLOBAL, STACK_GLOBAL), found without running it."""
    names: list[str] = []
    memo: dict[int, Any] = {}
    strings: list[Any] = [None, None]
    last: Any = None
    try:
        for opcode, argument, _ in pickletools.genops(data):
            if opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                last = argument
                strings = [strings[1], argument]
            elif opcode.name in ("BINGET", "LONG_BINGET", "GET"):
                last = memo.get(int(argument))
                strings = [strings[1], last]
            elif opcode.name == "MEMOIZE":
                memo[len(memo)] = last
            elif opcode.name in ("BINPUT", "LONG_BINPUT", "PUT"):
                memo[int(argument)] = last
            elif opcode.name == "GLOBAL":
                names.append(str(argument).replace(" ", "."))
                last = None
            elif opcode.name == "STACK_GLOBAL":
                if all(isinstance(x, str) for x in strings):
                    names.append(f"{strings[0]}.{strings[1]}")
                last = None
            else:
                last = None
    except Exception:  # noqa: BLE001 - a damaged pickle: what was found before the damage counts
        pass
    return list(dict.fromkeys(names))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _shape(value: Any, what: str, problems: list[str]) -> bool:
    if not isinstance(value, torch.Size) and not (
        isinstance(value, (tuple, list)) and len(value) <= MAX_SHAPE_DIMS
    ):
        problems.append(f"{what} is a {type(value).__name__}, not a shape")
        return False
    if len(value) > MAX_SHAPE_DIMS:
        problems.append(f"{what} has {len(value)} dimensions (at most {MAX_SHAPE_DIMS})")
        return False
    if not all(_is_int(n) and 0 <= n < 2**63 for n in value):
        problems.append(f"{what} is not a list of non-negative ints")
        return False
    return True


def _plain_name(name: Any) -> bool:
    if not isinstance(name, str) or not name or len(name) > 255 or "\x00" in name:
        return False
    if name in (".", "..") or name.startswith("."):  # .metadata itself, hidden files, ..
        return False
    return (
        PurePosixPath(name).name == name
        and PureWindowsPath(name).name == name
        and "/" not in name
        and "\\" not in name
    )


def _validate(folder: Path, metadata: Any) -> Metadata:
    """Raise unless ``metadata`` is a plain DCP ``Metadata`` whose shards lie inside ``folder``."""

    def damaged(problem: str) -> CorruptCheckpointError:
        return CorruptCheckpointError(folder, f".metadata is damaged: {problem}", _KEEP)

    if type(metadata) is not Metadata:
        raise damaged(f"it holds a {type(metadata).__name__}, not DCP's Metadata")
    problems: list[str] = []
    entries = metadata.state_dict_metadata
    if not isinstance(entries, dict):
        raise damaged("its state_dict_metadata is not a dict")
    for key, entry in entries.items():
        where = f"entry {str(key)[:80]!r}"
        if not isinstance(key, str):
            problems.append(f"{where}: the key is not a string")
        elif type(entry) is BytesStorageMetadata:
            continue
        elif type(entry) is not TensorStorageMetadata:
            problems.append(f"{where} is a {type(entry).__name__}")
        elif type(entry.properties) is not TensorProperties or not isinstance(
            getattr(entry.properties, "dtype", None), torch.dtype
        ):
            problems.append(f"{where} has no torch dtype")
        elif _shape(entry.size, f"{where}'s shape", problems):
            if not isinstance(entry.chunks, list):
                problems.append(f"{where}'s chunks are not a list")
                continue
            for chunk in entry.chunks:
                if type(chunk) is not ChunkStorageMetadata:
                    problems.append(f"{where} has a chunk of type {type(chunk).__name__}")
                elif _shape(chunk.offsets, f"{where}'s chunk offsets", problems) and _shape(
                    chunk.sizes, f"{where}'s chunk sizes", problems
                ):
                    if not (len(chunk.offsets) == len(chunk.sizes) == len(entry.size)) or any(
                        o + s > n
                        for o, s, n in zip(chunk.offsets, chunk.sizes, entry.size, strict=False)
                    ):
                        problems.append(f"{where} has a chunk outside its shape")
        if len(problems) >= 3:
            break
    if problems:
        raise damaged("; ".join(problems[:3]))
    planner_data = metadata.planner_data
    if planner_data is not None:
        if not isinstance(planner_data, dict):
            raise damaged("its planner_data is not a dict")
        for key, keys in planner_data.items():
            if not (
                isinstance(key, str)
                and isinstance(keys, (tuple, list))
                and 0 < len(keys) <= MAX_SHAPE_DIMS
                and all(isinstance(k, str) or (_is_int(k) and 0 <= k <= len(entries)) for k in keys)
            ):
                raise damaged(f"the nesting recorded for {str(key)[:80]!r} is not a short path")
    storage = metadata.storage_data
    if not isinstance(storage, dict):
        raise damaged("its storage_data is not a dict")
    sizes: dict[str, int] = {}
    needed: dict[str, int] = {}
    for index, info in storage.items():
        if type(index) is not MetadataIndex or type(info) is not _StorageInfo:
            raise damaged("storage_data holds something other than DCP's index and file records")
        name = info.relative_path
        if not _plain_name(name):
            raise UnsafeDCPFolderError(
                folder,
                f".metadata points entry {index.fqn!r} at {str(name)[:200]!r}, which is not a file "
                "name inside the folder: DCP would read a file elsewhere on the machine",
                "do not load this folder: delete it and use a checkpoint from a source you trust",
            )
        if name not in sizes:
            file = folder / name
            try:
                info_stat = os.lstat(file)
            except FileNotFoundError:
                raise CheckpointError(
                    folder,
                    f"{shard_name(name)} is missing (the metadata lists it)",
                    "a rank crashed or its file was lost: load the previous step, or save again",
                ) from None
            if stat.S_ISLNK(info_stat.st_mode) or not stat.S_ISREG(info_stat.st_mode):
                raise UnsafeDCPFolderError(
                    folder,
                    f"{name} is a {'symbolic link' if stat.S_ISLNK(info_stat.st_mode) else 'special file'}, "
                    "not a regular file: reading it would read something outside the folder",
                    "replace it with the shard itself (copy the folder with its files, not links), "
                    "or load the previous step",
                )
            sizes[name] = info_stat.st_size
        if (
            not (_is_int(info.offset) and _is_int(info.length))
            or info.offset < 0
            or info.length < 0
        ):
            raise damaged(
                f"entry {index.fqn!r} has an offset or length that is not a non-negative int"
            )
        if info.transform_descriptors:
            raise damaged(
                f"entry {index.fqn!r} is stored with transforms {info.transform_descriptors!r}, "
                "which the course does not read"
            )
        needed[name] = max(needed.get(name, 0), info.offset + info.length)
    for name, size in sorted(needed.items()):
        if size > sizes[name]:
            raise CheckpointError(
                folder,
                f"{shard_name(name)} is truncated: {sizes[name]} bytes, the metadata needs {size}",
                "the file was cut short (a full disk, a copy interrupted): load the previous step",
            )
    described = 0
    for entry in entries.values():
        if type(entry) is TensorStorageMetadata:
            numel = 1
            for n in entry.size:
                numel = min(numel * n, 2**63)
            described += numel * _itemsize(entry.properties.dtype)
    if described > sum(sizes.values()):
        raise damaged(
            f"its tensors would take {described:,} bytes, more than its shards hold "
            f"({sum(sizes.values()):,} bytes)"
        )
    return metadata


def _itemsize(dtype: torch.dtype) -> int:
    return max(1, dtype.itemsize)


def read_dcp_metadata(path: str | os.PathLike[str]) -> Metadata:
    """A DCP folder's ``.metadata``, unpickled without running code and checked.

    Only DCP's metadata classes, ``torch.Size`` and dtypes can appear in it; anything else is an
    ``UnsafeCheckpointError``. A damaged file is a ``CorruptCheckpointError``; a shard that is a
    link or lies outside the folder an ``UnsafeDCPFolderError``; a missing or short shard a
    ``CheckpointError``. Taught in notebooks/05b_torchrun_elastic.ipynb, section 6.
    """
    folder = Path(path)
    file = folder / ".metadata"
    try:
        info = os.lstat(file)
    except FileNotFoundError:
        raise CheckpointError(
            folder,
            "no .metadata file: the save did not finish on every rank (or this is not a DCP folder)",
            _KEEP,
        ) from None
    except OSError as exc:
        raise CheckpointError(folder, f".metadata cannot be read ({exc.strerror})", _KEEP) from None
    if not stat.S_ISREG(info.st_mode):
        raise CorruptCheckpointError(
            folder, ".metadata is not a regular file (a folder, a link or a device)", _KEEP
        )
    if info.st_size > MAX_METADATA_BYTES:
        raise CorruptCheckpointError(
            folder,
            f".metadata is {info.st_size:,} bytes, more than any checkpoint's "
            f"({MAX_METADATA_BYTES:,})",
            _KEEP,
        )
    data = file.read_bytes()
    try:
        metadata = _MetadataUnpickler(io.BytesIO(data)).load()
    except _Refused as exc:
        names = _globals_named(data) or [exc.name]
        foreign = [n for n in names if tuple(n.rsplit(".", 1)) not in _ALLOWED] or [exc.name]
        error = UnsafeDCPFolderError(
            folder,
            f".metadata is a pickle that would call {', '.join(foreign[:8])}: DCP reads it with "
            "plain pickle.load, which runs such calls as code. A checkpoint's metadata holds only "
            "DCP's own classes, shapes and dtypes",
            "do not load this folder with dcp.load or FileSystemReader; delete it and use a "
            "checkpoint from a source you trust (the course's readers refuse it)",
        )
        error.unsafe_globals = foreign
        raise error from None
    except RecursionError:
        raise CorruptCheckpointError(
            folder, ".metadata is damaged: it nests without end", _KEEP
        ) from None
    except Exception as exc:  # noqa: BLE001 - a damaged pickle fails anywhere in the unpickler
        text = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise CorruptCheckpointError(
            folder,
            f".metadata is damaged or not DCP metadata ({type(exc).__name__}: {text})",
            _KEEP,
        ) from None
    return _validate(folder, metadata)


MAX_PLAIN_ENTRY_BYTES = 64 << 20  # a learning rate, a list of betas: a few hundred bytes


def check_plain_entries(path: str | os.PathLike[str], metadata: Metadata | None = None) -> None:
    """Load every non-tensor entry of a DCP folder with ``weights_only=True``; raise if one fails.

    These entries (an optimizer's ``lr``, ``betas``) are small ``torch.save`` payloads inside the
    shards, which DCP's own planner loads with ``weights_only=False``: a payload that needs more
    than plain data is refused here (``UnsafeDCPFolderError``), before any state is touched.
    Used by ``check_step_folder``; not taught in a notebook.
    """
    folder = Path(path)
    metadata = read_dcp_metadata(folder) if metadata is None else metadata
    plain = {
        key
        for key, entry in metadata.state_dict_metadata.items()
        if type(entry) is BytesStorageMetadata
    }
    for index, info in metadata.storage_data.items():
        if index.fqn not in plain:
            continue
        if info.length > MAX_PLAIN_ENTRY_BYTES:
            raise UnsafeDCPFolderError(
                folder,
                f"entry {index.fqn!r} (not a tensor) is {info.length:,} bytes: no training "
                "state stores that much outside tensors",
                "do not load this folder; use a checkpoint from a source you trust",
            )
        with (folder / info.relative_path).open("rb") as f:
            f.seek(info.offset)
            data = f.read(info.length)
        _load_plain(io.BytesIO(data), index.fqn, folder)


class SafeFileSystemReader(FileSystemReader):
    """``FileSystemReader`` that reads ``.metadata`` with ``read_dcp_metadata`` and opens shards
    only as regular files inside the folder (checked again when they are opened)."""

    _checked: Metadata | None = None

    def read_metadata(self) -> Metadata:  # no rank=: DCP's per-rank fallback is not read
        """The checked metadata (read once: ``load_dcp`` reads it before ``dcp.load`` does)."""
        if self._checked is None:
            metadata = read_dcp_metadata(Path(self.path))
            if type(metadata.storage_meta) is not StorageMeta:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            self._checked = metadata
        return self._checked

    def read_data(self, plan: Any, planner: LoadPlanner) -> Any:
        folder = Path(self.path)
        for item in plan.items:
            name = self.storage_data[item.storage_index].relative_path
            if not _plain_name(name) or not stat.S_ISREG(os.lstat(folder / name).st_mode):
                raise UnsafeDCPFolderError(
                    folder,
                    f"{name!r} changed into something other than a file in the folder while loading",
                    "do not load this folder; use a checkpoint from a source you trust",
                )
        return super().read_data(plan, planner)


def _load_plain(value: io.BytesIO, fqn: str, folder: Path | None) -> Any:
    try:
        with torch.sparse.check_sparse_tensor_invariants():
            return torch.load(value, weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - weights_only refusal or damaged bytes
        lines = str(exc).splitlines() or [""]
        first = next((ln.strip() for ln in lines if "WeightsUnpickler error" in ln), lines[0])[:200]
        raise UnsafeDCPFolderError(
            folder or Path("."),
            f"entry {fqn!r} (not a tensor) does not load with "
            f"weights_only=True "
            f"({type(exc).__name__}: {first})",
            "do not load this folder: what DCP saves for a training state (numbers, strings, "
            "lists, tensors) always loads this way, so the entry is damaged or hostile; use a "
            "checkpoint from a source you trust",
        ) from None


class _WeightsOnlyBytes:
    """A load planner's ``load_bytes`` with ``weights_only=True``: mixed into DCP's planners."""

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        _set_bytes(
            self,  # always mixed into a DefaultLoadPlanner
            read_item,
            _load_plain(value, read_item.dest_index.fqn, getattr(self, "folder", None)),
        )


class SafeLoadPlanner(_WeightsOnlyBytes, DefaultLoadPlanner):
    """DCP's default load planner, but non-tensor entries load with ``weights_only=True``."""


class _SafeEmptyPlanner(_WeightsOnlyBytes, _EmptyStateDictLoadPlanner):
    """DCP's planner for loading into an empty state dict, with ``weights_only=True`` too."""


def _set_bytes(planner: DefaultLoadPlanner, read_item: ReadItem, obj: Any) -> None:
    from torch.distributed.checkpoint._traverse import set_element as set_path

    if planner.flatten_state_dict:
        set_path(planner.original_state_dict, planner.mappings[read_item.dest_index.fqn], obj)
    else:
        planner.state_dict[read_item.dest_index.fqn] = obj


def load_dcp(
    state: dict[str, Any], path: str | os.PathLike[str], *, no_dist: bool | None = None
) -> dict[str, Any]:
    """``dcp.load(state, checkpoint_id=path)`` that runs no code from the folder; returns ``state``.

    Uses ``SafeFileSystemReader`` and ``SafeLoadPlanner``; sparse tensors are checked for
    consistent indices. ``no_dist=True`` loads in a process without a process group (the default
    when none is initialized). Taught in notebooks/05b_torchrun_elastic.ipynb, section 6.
    """
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    if no_dist is None:
        no_dist = not dist.is_initialized()
    folder = Path(path)
    reader = SafeFileSystemReader(folder)
    reader.read_metadata()  # a refusal raised here, not logged and wrapped by DCP
    planner = SafeLoadPlanner()
    planner.folder = folder
    with _course_errors_unwrapped():
        dcp.load(state, storage_reader=reader, planner=planner, no_dist=no_dist)
    return state


@contextlib.contextmanager
def _course_errors_unwrapped() -> Iterator[None]:
    """Around a DCP load: sparse tensors checked as they are built, and our refusal raised as it
    is when DCP has wrapped it in its ``CheckpointException`` (or logged and re-raised it)."""
    with torch.sparse.check_sparse_tensor_invariants():
        try:
            yield
        except CheckpointError:
            raise
        except (Exception, CheckpointException) as exc:  # a rank's error, wrapped by DCP
            inner = _course_error(exc)
            if inner is not None:
                raise inner from None
            raise


def _course_error(exc: BaseException) -> CheckpointError | None:
    """The ``CheckpointError`` inside DCP's ``CheckpointException`` (it collects each rank's)."""
    if isinstance(exc, CheckpointError):
        return exc
    failures = getattr(exc, "failures", None)
    for failure in failures.values() if isinstance(failures, dict) else ():
        failure = failure[0] if isinstance(failure, tuple) and failure else failure  # (exc, tb)
        if isinstance(failure, BaseException) and (found := _course_error(failure)) is not None:
            return found
    cause = exc.__cause__ or exc.__context__
    return _course_error(cause) if isinstance(cause, BaseException) and cause is not exc else None


def dcp_to_torch_save(
    dcp_checkpoint_dir: str | os.PathLike[str], torch_save_path: str | os.PathLike[str]
) -> Path:
    """DCP's ``format_utils.dcp_to_torch_save``, reading the folder without running its code.

    The whole state in one ``torch.save`` file, written atomically (``safe_save``). Taught in
    notebooks/05b_torchrun_elastic.ipynb, section 6.
    """
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    from course_lib.safe_io import safe_save

    folder = Path(dcp_checkpoint_dir)
    state: dict[str, Any] = {}
    reader = SafeFileSystemReader(folder)
    reader.read_metadata()  # a refusal raised here, not logged and wrapped by DCP
    planner = _SafeEmptyPlanner()
    planner.folder = folder
    with _course_errors_unwrapped():
        _load_state_dict(state, storage_reader=reader, planner=planner, no_dist=True)
    return safe_save(state, torch_save_path)
