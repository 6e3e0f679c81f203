"""The student release holds the course and nothing of the teacher's; the learner's check works in it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from submissions import ROOT

from teacher.grading.release import build_release, is_released


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    out = tmp_path_factory.mktemp("handout") / "course"
    return out, build_release(out)


def test_release_has_the_course_and_nothing_of_the_teacher(release):
    out, copied = release
    present = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert present == set(copied)
    for needed in ("README.md", "course", "pyproject.toml", "notebooks/01_state_dict.ipynb",
                   "exercises/ex1_checkpoint_manager.ipynb", "course_lib/safe_io.py",
                   "course_lib/selfcheck.py"):  # fmt: skip
        assert needed in present, needed
    forbidden = ("solutions/", "teacher/", "nbsrc/", "tests/test_", "tools/")
    assert not [p for p in present if p.startswith(forbidden)]
    code = [p for p in present if p.endswith((".py", ".ipynb"))]
    assert not [p for p in code if "# BEGIN SOLUTION" in (out / p).read_text(errors="replace")]


def test_release_refuses_to_overwrite(release):
    out, _ = release
    with pytest.raises(FileExistsError):
        build_release(out)


def test_only_listed_paths_are_released():
    assert is_released("course_lib/safe_io.py") and is_released("course_lib/selfcheck.py")
    assert not is_released("teacher/grading/judge.py")
    assert not is_released("solutions/ex1_checkpoint_manager.ipynb")
    assert not is_released("teacher/exercises/ex1_checkpoint_manager/judge.py")


@pytest.mark.timeout(300)
def test_learner_check_in_the_release_runs_the_self_check_and_names_the_teacher(release):
    out, _ = release
    student_copy = out / "exercises" / "ex3_partial_loading.ipynb"
    solved = (ROOT / "solutions" / "ex3_partial_loading.ipynb").read_text()
    student_copy.write_text(solved)  # a learner who solved it
    result = subprocess.run(
        [str(out / "course"), "check", str(student_copy)],
        cwd=out, capture_output=True, text=True, timeout=280,
        env={**os.environ, "PYTHONPATH": str(out), "COURSE_PYTHON": sys.executable},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "self-check passed" in result.stdout
    assert "hidden checks your teacher grades with are not part of this copy" in result.stdout
    grade = subprocess.run([str(out / "course"), "grade", str(student_copy)],
                           capture_output=True, text=True)  # fmt: skip
    assert grade.returncode == 2 and "./course check" in grade.stderr
