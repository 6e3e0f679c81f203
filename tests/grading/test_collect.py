"""Step 1: naming each notebook's exercise, and rows for what a student did not hand in."""

from __future__ import annotations

import nbformat
from submissions import EXERCISES, with_cells

from teacher.grading.collect import collect_class, read_submission


def test_exercise_from_metadata_survives_renaming(tmp_path):
    path = tmp_path / "homework final (2).ipynb"
    nbformat.write(with_cells("ex5_unwrap_prefixes"), path)
    submission = read_submission(path, "amy")
    assert submission.exercise == "ex5_unwrap_prefixes" and submission.problem is None
    assert any("def load_unwrapped" in cell for cell in submission.code_cells)


def test_an_unreadable_notebook_still_names_its_exercise(tmp_path):
    path = tmp_path / "ex2_onnx_export.ipynb"
    path.write_bytes(b"\xff\xfe not json")
    submission = read_submission(path, "amy")
    assert submission.exercise == "ex2_onnx_export"
    assert "not a readable notebook" in submission.problem


def test_a_link_is_not_followed(tmp_path):
    (tmp_path / "ex1_checkpoint_manager.ipynb").symlink_to("/etc/passwd")
    submission = read_submission(tmp_path / "ex1_checkpoint_manager.ipynb", "amy")
    assert "not a regular file" in submission.problem


def test_each_student_gets_a_row_per_exercise(tmp_path):
    (tmp_path / "amy").mkdir()
    nbformat.write(
        with_cells("ex3_partial_loading"), tmp_path / "amy" / "ex3_partial_loading.ipynb"
    )
    (tmp_path / "ben").mkdir()
    collected = collect_class(tmp_path)
    assert {(s.student, s.exercise) for s in collected} == {
        (student, exercise) for student in ("amy", "ben") for exercise in EXERCISES
    }
    missing = [s for s in collected if s.path is None]
    assert len(missing) == 2 * len(EXERCISES) - 1
    assert all(s.problem == "no notebook handed in" for s in missing)


def test_hand_edited_json_never_stops_collection(tmp_path):
    (tmp_path / "ex4_weights_only.ipynb").write_text('{"cells": [], "metadata": []}')
    (tmp_path / "ex5_unwrap_prefixes.ipynb").write_text("[" * 100000 + "]" * 100000)
    listed = read_submission(tmp_path / "ex4_weights_only.ipynb", "amy")
    nested = read_submission(tmp_path / "ex5_unwrap_prefixes.ipynb", "amy")
    assert listed.exercise == "ex4_weights_only" and listed.code_cells == ()
    assert nested.exercise == "ex5_unwrap_prefixes" and "not" in nested.problem


def test_copies_of_one_exercise_give_one_submission_and_a_note(tmp_path):
    folder = tmp_path / "amy"
    folder.mkdir()
    nbformat.write(with_cells("ex3_partial_loading"), folder / "ex3_partial_loading.ipynb")
    nbformat.write(with_cells("ex3_partial_loading"), folder / "ex3_partial_loading-Copy1.ipynb")
    ex3 = [s for s in collect_class(tmp_path) if s.exercise == "ex3_partial_loading"]
    assert len(ex3) == 1 and ex3[0].path.name == "ex3_partial_loading.ipynb"
    assert "ex3_partial_loading-Copy1.ipynb" in ex3[0].note
