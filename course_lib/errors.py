"""The course's one error family: every error says what it is about, what went wrong, the fix.

``CourseError(subject, problem, fix)`` prints as::

    <subject>: <problem>
      How to fix: <fix>

where the subject is the file (a path) or the thing (``"state_dict"``, ``"torchrun -m job"``)
the error is about; ``FileError`` is the branch about one file (``.path``). Each topic has its own branch, so that ``except`` catches only its kind:

- ``CheckpointError`` (``safe_io``): a checkpoint file could not be loaded (6.3.1-6.3.3, 6.3.8);
- ``WriteError`` (``safe_io``): a file could not be written (6.3.8, 6.3.9);
- ``StateDictMismatchError`` (``state_dict``): a strict load does not fit the model (6.3.4);
- ``ExportError`` (``export.errors``): TorchScript, ``torch.export`` and ONNX (6.3.6, 6.3.7);
- ``TorchrunError`` (``distributed.torchrun``), ``InterruptError`` (``interrupt``),
  ``TorchFreeRunError`` (``torch_free``): the notebooks' harnesses.

Taught in notebooks/01b_big_models.ipynb, where the first ``CheckpointError`` is read.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CourseError", "FileError"]


class CourseError(RuntimeError):
    """An error of the course: ``subject`` (a path or a name), ``problem`` and ``fix``.

    The base class of the course's errors (``FileError`` and so ``CheckpointError``,
    ``StateDictMismatchError``, the export errors); not taught in a notebook.
    """

    def __init__(self, subject: str | os.PathLike[str], problem: str, fix: str) -> None:
        self.subject = subject
        self.problem = problem
        self.fix = fix
        super().__init__(str(self))

    def __str__(self) -> str:  # one format for every error, whatever else it derives from
        return f"{self.subject}: {self.problem}\n  How to fix: {self.fix}"


class FileError(CourseError):
    """A course error about one file: ``.path`` is that file (a ``Path``)."""

    def __init__(self, path: str | os.PathLike[str], problem: str, fix: str) -> None:
        self.path = Path(path)
        super().__init__(self.path, problem, fix)
