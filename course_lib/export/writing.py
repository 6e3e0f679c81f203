"""Writing an exported file atomically: a failed export keeps the previous good file.

A temporary folder next to the target, flushed and renamed into place (sidecars first), and a
Python file object between PyTorch's C++ zip writer and the disk, so that a full disk raises an
``ExportWriteError`` instead of aborting the interpreter.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from course_lib.export.errors import write_error
from course_lib.safe_io import fsync_directory

__all__ = [
    "save_through_python",
    "write_atomically",
]


def _fsync(path: Path) -> None:
    with path.open("rb") as written:
        os.fsync(written.fileno())


def write_atomically(
    path: str | os.PathLike[str], write: Callable[[Path], None], what: str = "export"
) -> Path:
    """Call ``write(temp_path)``, then move the file(s) written there over ``path``.

    ``temp_path`` has the same name as ``path`` but lies in a fresh hidden folder next to it (same
    disk, so the rename is atomic; same name, so a sidecar such as ``model.onnx.data`` gets the
    name the file refers to). Every file written there is flushed to disk and renamed into place,
    sidecars first. A failure (a full disk, an interrupt) removes the temporary folder, leaves the
    previous export at ``path`` untouched, and raises ``ExportWriteError`` naming the file.
    Used by every export that writes a file (TorchScript, ``.pt2``, ONNX); not taught in a notebook.
    (``safe_io.safe_save`` is the same idea for checkpoints.)
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    try:
        scratch = Path(tempfile.mkdtemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp"))
    except OSError as exc:
        raise write_error(path, exc, what) from None
    try:
        write(scratch / path.name)
        written = sorted(scratch.iterdir(), key=lambda f: f.name == path.name)  # main file last
        for file in written:
            _fsync(file)
        for file in written:
            os.replace(file, folder / file.name)
    except OSError as exc:
        shutil.rmtree(scratch, ignore_errors=True)
        raise write_error(path, exc, what) from None
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    shutil.rmtree(scratch, ignore_errors=True)
    fsync_directory(folder)  # make the renames durable
    return path


class _ErrorHoldingFile:
    """A file object that never raises from ``write``: it keeps the first ``OSError`` instead.

    PyTorch's C++ zip writer finishes the archive in a destructor; an error raised there (a full
    disk) calls ``std::terminate`` and kills the interpreter (exit 134). Writing through Python
    and holding the error until the writer is done turns that into an exception we can raise.
    """

    def __init__(self, path: Path) -> None:
        self._file = path.open("wb")
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        if self.error is None:
            try:
                self._file.write(data)
            except OSError as exc:
                self.error = exc
        return len(data)

    def flush(self) -> None:
        if self.error is None:
            try:
                self._file.flush()
            except OSError as exc:
                self.error = exc

    def close(self) -> None:
        try:
            self._file.close()
        except OSError as exc:
            self.error = self.error or exc
        if self.error is not None:
            raise self.error


def save_through_python(path: Path, save: Callable[[Any], None]) -> None:
    """``save(file_object)`` into ``path``; a failed write raises ``OSError`` (no abort)."""
    holder = _ErrorHoldingFile(path)
    try:
        save(holder)
    finally:
        holder.close()
