"""The checkpoint manager's own errors and warning (the others are ``safe_io``'s).

``CheckpointWriteError`` says that a save failed and that nothing was committed, with the fix
for its cause (a full disk, a folder that cannot be written); ``CheckpointLockTimeoutError``
that another process held the folder's lock too long; ``CheckpointFallbackWarning`` that a
damaged or missing file was skipped and an older checkpoint used instead.
"""

from __future__ import annotations

import errno
from pathlib import Path

from course_lib.manager.files import MANIFEST_NAME
from course_lib.safe_io import CheckpointError

__all__ = [
    "CheckpointFallbackWarning",
    "CheckpointLockTimeoutError",
    "CheckpointWriteError",
    "write_error",
]


class CheckpointLockTimeoutError(CheckpointError):
    """The folder's lock was held by another process for longer than the timeout."""


class CheckpointWriteError(CheckpointError, OSError):
    """A checkpoint could not be written (disk full, no permission, ...); nothing was committed.

    ``errno`` is the underlying ``OSError``'s. The previous checkpoints and the manifest are
    unchanged, so training can resume from the newest committed checkpoint.
    """

    def __str__(self) -> str:  # OSError's own would print only "[Errno 28] ..."
        return f"{self.path}: {self.problem}\n  How to fix: {self.fix}"


class CheckpointFallbackWarning(UserWarning):
    """``load_latest``/``load_best`` skipped a damaged or missing file and loaded an older one."""


def write_error(path: Path, exc: OSError, newest: str | None) -> CheckpointWriteError:
    """The ``CheckpointWriteError`` for ``exc`` raised while saving ``path``.

    ``newest`` is the newest committed checkpoint, which the message says is still there.
    ``path`` is a checkpoint file, or the checkpoint folder itself when that could not be used.
    """
    folder = path if path.is_dir() or not path.suffix else path.parent
    code = exc.errno
    if code == errno.ENOSPC or code == getattr(errno, "EDQUOT", None):
        fix = (
            f"free space on the disk that holds {folder}, lower max_to_keep, or pass "
            "another checkpoint_dir; then save again."
        )
    elif code in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = (
            f"make {folder} writable (e.g. chmod u+w {folder}) or pass a "
            "checkpoint_dir you can write to; then save again."
        )
    else:
        fix = f"check the disk and the folder {folder}; then save again."
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
