"""The export helpers' errors and warnings, in the course's house style: path, problem, fix."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from course_lib.errors import FileError
from course_lib.safe_io import WriteError

__all__ = [
    "ExportError",
    "ExportWriteError",
    "InputCountError",
    "StaticShapeError",
    "TraceMismatchError",
    "TraceMismatchWarning",
    "TrainingModeWarning",
    "write_error",
]


class TrainingModeWarning(UserWarning):
    """A model (or one of its submodules) in training mode was exported; eval mode was used."""


class TraceMismatchWarning(UserWarning):
    """A trace answers differently from the model on inputs other than the example."""


class ExportError(FileError):
    """An export helper failed; the message names the file (or model), the problem and the fix.

    The course's error family (``course_lib.errors.CourseError``), for exports: apart from
    checkpoint errors, so that ``except CheckpointError`` never catches an export's.
    """


class ExportWriteError(ExportError, WriteError):
    """An exported file could not be written (disk full, no permission, ...); the old file is kept.

    ``errno`` is the underlying ``OSError``'s (``errno.ENOSPC`` for a full disk).
    """


class TraceMismatchError(ExportError):
    """``trace_model(..., on_mismatch="raise")``: the trace differs from the model on new inputs."""


class InputCountError(ExportError, TypeError):
    """An exported model was called with another number of inputs than it was exported with."""

    def __init__(self, where: str | os.PathLike[str], expected: Sequence[str], given: int) -> None:
        self.expected = tuple(expected)
        self.given = given
        names = ", ".join(self.expected)
        super().__init__(
            where,
            f"the model takes {len(self.expected)} input{'s' * (len(self.expected) != 1)} "
            f"({names}), but {given} {'was' if given == 1 else 'were'} given.",
            f"call it with one tensor per input, in this order: model({names}).",
        )


def _shape_text(shape: Sequence[int | str | None]) -> str:
    parts = [
        ("batch" if i == 0 else "dynamic") if d is None else str(d) for i, d in enumerate(shape)
    ]
    return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"


class StaticShapeError(ExportError, ValueError):
    """An input's shape differs from the fixed shape an exported program was made for.

    The message names the dimensions that differ. Only when the batch dimension (0) alone is at
    fault does it suggest a dynamic batch; a fixed dimension elsewhere (a sequence length) gets the
    ``dynamic_shapes`` declaration that makes it dynamic, or the size the model needs there.
    """

    def __init__(
        self, where: str, input_name: str, fixed: Sequence[int | None], got: Sequence[int]
    ):
        self.input_name = input_name
        self.fixed = tuple(fixed)
        self.got = tuple(got)
        shown = _shape_text(self.fixed)
        if len(self.got) != len(self.fixed):
            self.dims: tuple[int, ...] = ()
            problem = (
                f"input {input_name!r} has shape {self.got} ({len(self.got)} dimensions), but the "
                f"program takes {len(self.fixed)} dimensions: {shown}."
            )
            fix = f"feed a tensor shaped {shown}; add or remove a dimension (unsqueeze/squeeze)."
            super().__init__(where, problem, fix)
            return
        self.dims = tuple(
            i
            for i, (f, g) in enumerate(zip(self.fixed, self.got, strict=True))
            if f not in (None, g)
        )
        if self.dims == (0,):
            problem = (
                f"input {input_name!r} has shape {self.got}, but the program was exported with the "
                f"fixed shape {shown}."
            )
            fix = (
                "export with a dynamic batch dimension (dynamic_batch=True, the default of the "
                "course's export helpers; with torch.export directly: "
                f"dynamic_shapes={{{input_name!r}: {{0: torch.export.Dim('batch')}}}}), or feed "
                f"inputs of exactly {shown}."
            )
        else:
            named = "; ".join(
                f"dimension {i} is {self.got[i]}, the program has {self.fixed[i]} there (fixed)"
                for i in self.dims
            )
            problem = (
                f"input {input_name!r} has shape {self.got}, but the program takes {shown}: "
                f"{named}."
            )
            spec = ", ".join(
                f"{i}: torch.export.Dim('{'batch' if i == 0 else f'dim{i}'}')" for i in self.dims
            )
            fix = (
                f"if that size may vary (a sequence length, an image size), export with it "
                f"declared dynamic: dynamic_shapes={{{input_name!r}: {{{spec}}}}} (export_onnx and "
                "export_program take dynamic_shapes=); if the model fixes it (features, channels), "
                f"feed inputs shaped {shown}."
            )
        super().__init__(where, problem, fix)


def write_error(path: Path, exc: BaseException, what: str) -> ExportWriteError:
    """The ``ExportWriteError`` for a failed write of ``path`` (the previous file is intact)."""
    folder = path.parent
    kept = "the previous file is unchanged" if path.exists() else "no file was left there"
    return ExportWriteError.from_os_error(
        path,
        exc,
        failed=f"the {what} could not be written",
        kept=f"; {kept}.",
        when_full=f"free space on the disk that holds {folder}, or export to another folder.",
        when_denied=f"make {folder} writable (e.g. chmod u+w {folder}) or export to another folder.",
        otherwise=f"check the disk and the folder {folder}; then export again.",
    )
