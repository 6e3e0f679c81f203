"""The checkpoint manager's own errors and warning (the others are ``safe_io``'s).

``CheckpointWriteError`` says that a save failed and that nothing was committed, with the fix
for its cause (a full disk, a folder that cannot be written); ``CheckpointLockTimeoutError``
that another process held the folder's lock too long; ``CheckpointFallbackWarning`` that a
damaged or missing file was skipped and an older checkpoint used instead.
"""

from __future__ import annotations

from pathlib import Path

from course_lib.manager.files import MANIFEST_NAME
from course_lib.safe_io import CheckpointError, WriteError

__all__ = [
    "CheckpointFallbackWarning",
    "CheckpointLockTimeoutError",
    "CheckpointWriteError",
    "write_error",
]


class CheckpointLockTimeoutError(CheckpointError):
    """The folder's lock was held by another process for longer than the timeout."""


class CheckpointWriteError(WriteError):
    """A checkpoint could not be written (disk full, no permission, ...); nothing was committed.

    ``errno`` is the underlying ``OSError``'s. The previous checkpoints and the manifest are
    unchanged, so training can resume from the newest committed checkpoint.
    """


class CheckpointFallbackWarning(UserWarning):
    """``load_latest``/``load_best`` skipped a damaged or missing file and loaded an older one."""


def write_error(path: Path, exc: OSError, newest: str | None) -> CheckpointWriteError:
    """The ``CheckpointWriteError`` for ``exc`` raised while saving ``path``.

    ``newest`` is the newest committed checkpoint, which the message says is still there.
    ``path`` is a checkpoint file, or the checkpoint folder itself when that could not be used.
    """
    folder = path if path.is_dir() or not path.suffix else path.parent
    kept = f"the newest committed checkpoint is still {newest}" if newest else "nothing was lost"
    return CheckpointWriteError.from_os_error(
        path,
        exc,
        failed="could not be saved",
        kept=f". Nothing was committed: {MANIFEST_NAME} and the checkpoints already saved are "
        f"unchanged ({kept}).",
        when_full=f"free space on the disk that holds {folder}, lower max_to_keep, or pass "
        "another checkpoint_dir; then save again.",
        when_denied=f"make {folder} writable (e.g. chmod u+w {folder}) or pass a "
        "checkpoint_dir you can write to; then save again.",
        otherwise=f"check the disk and the folder {folder}; then save again.",
    )
