"""Reading checkpoint files safely: ``weights_only=True`` always, and a clear error for every bad file.

``torch.load`` on a bad file raises errors from deep inside its zip reader or the unpickler
("PytorchStreamReader failed reading zip archive", "invalid load key"). ``safe_load`` looks at the
file first and says, naming the file, what is wrong and what to do about it.
"""

from __future__ import annotations

import os
import pickle
import struct
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from course_lib.device import try_device

ZIP_MAGIC = b"PK\x03\x04"
MapLocation = str | torch.device | Callable[..., Any] | dict[str, str] | None


class CheckpointError(RuntimeError):
    """A checkpoint file could not be loaded; the message names the file and the fix."""

    def __init__(self, path: str | os.PathLike[str], problem: str, fix: str) -> None:
        self.path = Path(path)
        self.problem = problem
        self.fix = fix
        super().__init__(f"{self.path}: {problem}\n  How to fix: {fix}")


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The path does not exist (or is not a file)."""


class CorruptCheckpointError(CheckpointError):
    """The file is empty, truncated or damaged."""


class ForeignFileError(CheckpointError):
    """The file is not something ``torch.load`` reads (another format, or another kind of archive)."""


class UnsafeCheckpointError(CheckpointError):
    """The file needs Python globals beyond plain weights; loading it would run their code."""

    def __init__(self, path: str | os.PathLike[str], unsafe_globals: list[str]) -> None:
        self.unsafe_globals = unsafe_globals
        listed = ", ".join(unsafe_globals) if unsafe_globals else "(could not be listed)"
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
    except zipfile.BadZipFile as exc:
        raise CorruptCheckpointError(
            path,
            f"the zip archive is damaged or truncated ({exc}; {path.stat().st_size} bytes): "
            "typically a save that was interrupted, a full disk, or a partial copy.",
            "load an earlier checkpoint or a backup; write checkpoints with safe_save "
            "so an interrupted save cannot replace a good file.",
        ) from None
    if any(name.endswith("/data.pkl") or name == "data.pkl" for name in names):
        return
    if any(name.endswith("/constants.pkl") for name in names):
        raise ForeignFileError(
            path,
            "this is a TorchScript archive, not a torch.save file.",
            "load it with torch.jit.load(path).",
        )
    if any("/models/" in name and name.endswith(".json") for name in names) or any(
        name.endswith("/archive_format") for name in names
    ):
        raise ForeignFileError(
            path,
            "this is a torch.export program (.pt2), not a torch.save file.",
            "load it with torch.export.load(path).",
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
                "load it with torch.distributed.checkpoint.load(state_dict, checkpoint_id=path).",
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


def safe_load(
    path: str | os.PathLike[str],
    map_location: MapLocation = None,
    *,
    allowed_globals: Iterable[Any] = (),
    mmap: bool = False,
) -> Any:
    """Load a ``torch.save`` file with ``weights_only=True``, onto ``map_location``.

    ``map_location`` defaults to the course device (``try_device()``). ``allowed_globals`` is the
    explicit, scoped opt-in for classes you trust (``torch.serialization.safe_globals``). Every
    failure is a ``CheckpointError`` naming the file and the fix.
    """
    path = check_checkpoint_file(path)
    location = try_device() if map_location is None else map_location
    try:
        with torch.serialization.safe_globals(list(allowed_globals)):
            return torch.load(path, map_location=location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" not in str(exc):
            raise CorruptCheckpointError(
                path,
                f"the pickled data is damaged ({exc}).",
                "load an earlier checkpoint or a backup.",
            ) from None
        try:
            needed = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # a damaged file can fail here too; the refusal is still the news
            needed = []
        allowed = {f"{g.__module__}.{g.__qualname__}" for g in allowed_globals if hasattr(g, "__module__")}
        raise UnsafeCheckpointError(path, [g for g in needed if g not in allowed]) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise CorruptCheckpointError(
            path,
            f"the file is damaged: torch.load failed with {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}",
            "load an earlier checkpoint or a backup; write checkpoints with safe_save.",
        ) from None
