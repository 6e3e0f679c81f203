"""The grader: solutions get full marks, untouched exercises none, and broken or hostile notebooks
get a precise message without stopping the class's grading or losing earlier grades."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nbformat
import pytest

from course_lib.grading import grade_class, grade_notebook

ROOT = Path(__file__).resolve().parent.parent
EXERCISES = sorted(p.stem for p in (ROOT / "exercises").glob("ex*.ipynb"))


def _with_cells(template: str, *sources: str, metadata: bool = True) -> nbformat.NotebookNode:
    """The solved notebook of exercise ``template`` with extra code cells appended."""
    nb = nbformat.read(ROOT / "solutions" / f"{template}.ipynb", as_version=4)
    for source in sources:
        nb.cells.append(nbformat.v4.new_code_cell(source))
    if not metadata:
        nb.metadata.pop("course", None)
    return nb


NAIVE_MANAGER = """
import glob, os
class SimpleCheckpointManager:  # the chapter's approach: plain torch.save, newest by ctime
    def __init__(self, directory, max_to_keep=3):
        self.directory = Path(directory); self.directory.mkdir(parents=True, exist_ok=True)
        self.max_to_keep = max_to_keep
    def path_for(self, epoch):
        return self.directory / f"checkpoint_epoch_{epoch:04d}.pth"
    def epochs(self):
        return sorted(int(p.stem.split("_")[-1]) for p in self.directory.glob("checkpoint_epoch_*.pth"))
    def save(self, state, epoch):
        torch.save(state, self.path_for(epoch))
        files = sorted(glob.glob(str(self.directory / "*.pth")), key=os.path.getctime)
        for old in files[: -self.max_to_keep]:
            os.remove(old)
        return self.path_for(epoch)
    def load_latest(self):
        files = glob.glob(str(self.directory / "*.pth"))
        if not files:
            raise FileNotFoundError(self.directory)
        return torch.load(max(files, key=os.path.getctime), weights_only=False)
"""


@pytest.fixture(scope="module")
def graded_class(tmp_path_factory):
    """A class folder with good, empty, naive, broken and hostile submissions, graded once."""
    root = tmp_path_factory.mktemp("submissions")
    students = {}

    def submit(student: str, name: str, nb) -> None:
        folder = root / student
        folder.mkdir(exist_ok=True)
        if isinstance(nb, (str, bytes)):
            (folder / name).write_bytes(nb if isinstance(nb, bytes) else nb.encode())
        else:
            nbformat.write(nb, folder / name)
        students[student] = folder / name

    for exercise in EXERCISES:
        shutil.copy(
            ROOT / "solutions" / f"{exercise}.ipynb",
            (root / "alice").mkdir(exist_ok=True) or root / "alice",
        )
        shutil.copy(
            ROOT / "exercises" / f"{exercise}.ipynb",
            (root / "bob").mkdir(exist_ok=True) or root / "bob",
        )
    submit("carol", "ex3_partial_loading.ipynb", '{"cells": [ {"cell_type": "code", "sour')
    submit(
        "erin",
        "ex3_partial_loading.ipynb",
        _with_cells("ex3_partial_loading", "import os\nos._exit(3)"),
    )
    submit(
        "frank",
        "ex3_partial_loading.ipynb",
        _with_cells("ex3_partial_loading", "hog = bytearray(50 * 2**30)"),
    )
    submit(
        "gina",
        "ex3_partial_loading.ipynb",
        _with_cells("ex3_partial_loading", "open('big.bin', 'wb').write(b'0' * (300 << 20))"),
    )
    naive = _with_cells("ex1_checkpoint_manager")
    solution_cell = next(c for c in naive.cells if "class SimpleCheckpointManager" in c.source)
    solution_cell.source = NAIVE_MANAGER
    submit("ivan", "ex1_checkpoint_manager.ipynb", naive)
    submit("judy", "my homework.ipynb", _with_cells("ex3_partial_loading"))
    submit("ken", "untitled.ipynb", _with_cells("ex3_partial_loading", metadata=False))

    out = root.parent / "grades.csv"
    out.write_text("previous grades\n")
    reports = grade_class(root, out, jobs=2, progress=False)
    by_path = {r.notebook: r for r in reports}
    return root, out, by_path, students


@pytest.mark.timeout(600)
@pytest.mark.parametrize("exercise", EXERCISES)
def test_solutions_get_full_marks(graded_class, exercise):
    root, _, reports, _ = graded_class
    report = reports[root / "alice" / f"{exercise}.ipynb"]
    assert report.problem is None and not report.cell_errors, report.summary()
    assert report.score == report.max_score > 0, report.summary()


@pytest.mark.parametrize("exercise", EXERCISES)
def test_untouched_exercises_get_nothing_and_say_why(graded_class, exercise):
    root, _, reports, _ = graded_class
    report = reports[root / "bob" / f"{exercise}.ipynb"]
    assert report.problem is None
    assert report.score == 0 and len(report.checks) > 0, report.summary()
    assert any("not implemented yet" in e for e in report.cell_errors), report.summary()


def test_naive_chapter_style_manager_gets_partial_credit(graded_class):
    _, _, reports, students = graded_class
    report = reports[students["ivan"]]
    failed = {c.name for c in report.checks if not c.passed}
    assert {
        "check_latest_by_epoch_not_file_time",
        "check_failed_save_loses_nothing",
        "check_refuses_code_in_checkpoints",
    } <= failed
    assert 0 < report.score < report.max_score, report.summary()


@pytest.mark.parametrize(
    ("student", "expected_problem", "expected_cell_error", "full_marks"),
    [
        ("carol", "not a readable notebook", None, False),
        ("erin", "exited with code 3 in cell", None, False),
        ("frank", None, "MemoryError", True),
        ("gina", None, "File too large", True),
        ("judy", None, None, True),
        ("ken", "cannot tell which exercise", None, False),
    ],
)
def test_broken_and_hostile_notebooks_get_a_precise_message(
    graded_class, student, expected_problem, expected_cell_error, full_marks
):
    _, _, reports, students = graded_class
    report = reports[students[student]]
    if expected_problem:
        assert report.problem and expected_problem in report.problem, report.summary()
    else:
        assert report.problem is None, report.summary()
    if expected_cell_error:
        assert any(expected_cell_error in e for e in report.cell_errors), report.summary()
    assert (report.score == report.max_score > 0) == full_marks, report.summary()


def test_class_csv_has_a_row_per_submission_and_keeps_the_previous_file(graded_class):
    root, out, reports, _ = graded_class
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == len(reports) == len(list(root.rglob("*.ipynb")))
    alice = [r for r in rows if r["submission"].startswith("alice/")]
    assert all(r["score"] == r["max_score"] for r in alice)
    carol = next(r for r in rows if r["submission"].startswith("carol/"))
    assert carol["score"] == "0" and "not a readable notebook" in carol["problem"]
    assert Path(str(out) + ".backup").read_text() == "previous grades\n"
    assert not list(out.parent.glob(".grades.csv.*.tmp"))


def test_grading_leaves_no_processes_or_files_behind(graded_class, tmp_path):
    root, _, _, students = graded_class
    assert not (root / "gina" / "big.bin").exists()  # the submission ran in a temporary folder
    report = grade_notebook(students["judy"])
    assert report.score == report.max_score
    assert json.loads(students["judy"].read_text())  # the submission itself is untouched


def test_an_endless_cell_is_stopped_and_the_rest_still_graded(tmp_path):
    path = tmp_path / "ex3_partial_loading.ipynb"
    nbformat.write(_with_cells("ex3_partial_loading", "while True:\n    pass"), path)
    report = grade_notebook(path, cell_timeout=20, timeout=120)
    assert report.problem is None, report.summary()
    assert any("still running after 20 s (stopped)" in e for e in report.cell_errors), (
        report.summary()
    )
    assert report.score == report.max_score, report.summary()


def test_a_cell_that_blocks_the_time_limit_is_killed_with_its_cell_named(tmp_path):
    path = tmp_path / "ex3_partial_loading.ipynb"
    sneaky = "import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\nwhile True:\n    pass"
    nb = _with_cells("ex3_partial_loading", sneaky)
    nbformat.write(nb, path)
    report = grade_notebook(path, cell_timeout=20, timeout=30)
    cell_number = sum(c.cell_type == "code" for c in nb.cells)
    assert report.problem == (
        f"stopped after 30 s in cell {cell_number} (an endless loop that ignores interrupts?)"
    )
    assert report.score == 0
