"""One error family: every error the course raises is a ``CourseError(subject, problem, fix)``."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import course_lib
from course_lib.errors import CourseError, FileError
from course_lib.export.errors import StaticShapeError
from course_lib.safe_io import CheckpointError, CorruptCheckpointError


def _public_exceptions():
    found = {}
    for info in pkgutil.walk_packages(course_lib.__path__, "course_lib."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if (
                inspect.isclass(obj)
                and issubclass(obj, Exception)
                and not issubclass(obj, Warning)
                and obj.__module__ == module.__name__
                and not name.startswith("_")
            ):
                found[f"{module.__name__}.{name}"] = obj
    return found


def test_every_public_error_of_the_course_is_a_course_error():
    errors = _public_exceptions()
    assert len(errors) >= 20, sorted(errors)
    outside = sorted(name for name, cls in errors.items() if not issubclass(cls, CourseError))
    assert not outside, f"not under CourseError: {outside}"


def test_the_message_is_subject_problem_fix():
    error = CourseError("state_dict", "does not match the model", "pass strict=False")
    assert str(error) == "state_dict: does not match the model\n  How to fix: pass strict=False"
    assert (error.subject, error.problem, error.fix) == (
        "state_dict",
        "does not match the model",
        "pass strict=False",
    )
    file_error = CorruptCheckpointError("runs/a.pth", "is truncated", "save it again")
    assert isinstance(file_error, FileError) and file_error.path.name == "a.pth"
    assert str(file_error).startswith("runs/a.pth: is truncated\n  How to fix:")


def test_except_checkpoint_error_does_not_catch_an_export_error():
    with pytest.raises(StaticShapeError):
        try:
            raise StaticShapeError("model.pt2", "x", [3, 32, 32], [3, 64, 64])
        except CheckpointError:  # a checkpoint handler must not swallow an export's error
            pytest.fail("CheckpointError caught an export error")
