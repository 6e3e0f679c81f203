"""The checkpoint manager of chapter 6.3.8, as a package you can read in order.

Reading order (a learner reads the first three; the rest is for maintainers):

1. ``api``: ``CheckpointManager``, the chapter's calls, each delegating to one part below.
2. ``retention``: which checkpoints to keep, as pure functions you can try without files.
3. ``commit``: one save as named steps, in the order that makes it crash-safe.
4. ``files``: one checkpoint's files: names, durable writes with SHA-256, reading back.
5. ``manifest``: ``manifest.json`` as typed records, read (schema checked) and written here only.
6. ``loading``: reading back, verified, with fallback to an older checkpoint.
7. ``reconcile``: repairing a folder when a manager opens it.
8. ``lock``, ``background`` and ``errors``: the folder lock, asynchronous saves, the errors.

Exercise 1 (``exercises/ex1_checkpoint_manager.ipynb``) builds the idea in 25 lines first.
Taught in notebooks/08_checkpoint_manager.ipynb.
"""

from course_lib.manager.api import CheckpointManager
from course_lib.manager.errors import (
    CheckpointFallbackWarning,
    CheckpointLockTimeoutError,
    CheckpointWriteError,
)
from course_lib.manager.loading import LoadOptions
from course_lib.manager.retention import Candidate, RetentionPolicy, retention_reasons

__all__ = [
    "Candidate",
    "CheckpointFallbackWarning",
    "CheckpointLockTimeoutError",
    "CheckpointManager",
    "CheckpointWriteError",
    "LoadOptions",
    "RetentionPolicy",
    "retention_reasons",
]
