"""The folder lock: two managers (or processes) on one folder take turns to commit.

For maintainers. ``fcntl.flock`` on ``.manager.lock``, released by the kernel when its holder
dies, so a killed writer never leaves the folder locked; a stopped or hung holder gives a
``CheckpointLockTimeoutError`` after ``timeout`` seconds instead of a hang.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import TracebackType

from course_lib.manager.errors import CheckpointLockTimeoutError
from course_lib.manager.files import LOCK_NAME

try:  # POSIX; on Windows two managers on one folder are not serialised
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = ["FolderLock"]


class FolderLock:
    """``with FolderLock(folder):`` holds ``folder/.manager.lock`` (``fcntl.flock``).

    Creating it opens the lock file, which raises ``OSError`` in a folder that cannot be
    written. With a ``timeout`` (seconds), a lock held longer than that raises a
    ``CheckpointLockTimeoutError`` instead of waiting for ever.
    """

    def __init__(self, folder: Path, timeout: float | None = None) -> None:
        self._path = folder / LOCK_NAME
        self._timeout = timeout
        self._handle = open(self._path, "a+b")  # noqa: SIM115 (closed by __exit__)

    def __enter__(self) -> None:
        try:
            if fcntl is None:
                return
            if self._timeout is None:
                fcntl.flock(self._handle.fileno(), fcntl.LOCK_EX)
                return
            deadline = time.monotonic() + self._timeout
            while True:
                try:
                    fcntl.flock(self._handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise CheckpointLockTimeoutError(
                            self._path,
                            f"another process holds the folder's lock for more than "
                            f"{self._timeout:g} s (a writer that is stopped, hung, or saving "
                            "a very large checkpoint).",
                            f"find it (fuser {self._path}), then resume or end it; or pass a "
                            "longer lock_timeout= to CheckpointManager.",
                        ) from None
                    time.sleep(0.05)
        except BaseException:
            self._handle.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if fcntl is not None:
                fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
        finally:
            self._handle.close()
