"""Step 4: the gradebook and the feedback files."""

from __future__ import annotations

import csv
from pathlib import Path

from teacher.grading.records import CheckResult, GradeReport, Status
from teacher.grading.report import GRADEBOOK_COLUMNS, write_feedback, write_gradebook


def _report(student, status=Status.OK, **kwargs):
    return GradeReport(student=student, exercise="ex3_partial_loading", notebook=None,
                       max_score=4, status=status, seed=9, **kwargs)  # fmt: skip


def test_gradebook_is_replaced_atomically_and_the_old_one_kept(tmp_path):
    out = tmp_path / "grades.csv"
    out.write_text("last week's grades\n")
    checks = [CheckResult("test_a", 1, 1, "ok"), CheckResult("test_b", 0, 3, "wrong\nsecond line")]
    write_gradebook(tmp_path, [_report("zed", checks=checks), _report("amy", Status.MISSING)], out)
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == GRADEBOOK_COLUMNS
    assert [(r["student"], r["status"], r["score"], r["max_score"]) for r in rows] == [
        ("amy", "missing", "0", "4"),
        ("zed", "ok", "1", "4"),
    ]
    assert rows[1]["failed_checks"] == "test_b"
    assert Path(f"{out}.backup").read_text() == "last week's grades\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grades.csv", "grades.csv.backup"]


def test_feedback_has_every_line_of_every_message(tmp_path):
    message = "Error(s) in loading state_dict:\n\tsize mismatch for 2.weight: [3, 7] vs [2, 7]"
    checks = [CheckResult("test_copies", 0, 1, message)]
    report = _report("amy", checks=checks, cell_errors=["In [3]: KeyError: 'x'"])
    (path,) = write_feedback([report], tmp_path)
    text = path.read_text()
    assert "size mismatch for 2.weight" in text and "| KeyError: 'x'" in text
    unsandboxed = _report("ben", Status.SANDBOX_OFF, sandboxed=False)
    assert "WITHOUT a sandbox" in write_feedback([unsandboxed], tmp_path)[0].read_text()


def test_text_the_student_shaped_is_escaped_and_every_file_still_written(tmp_path):
    """Item 5: a lone surrogate in an exception, a non-UTF-8 notebook name."""
    root = tmp_path / "class"
    bad_name = root / "amy" / "ex1_checkpoint_manager\udcff.ipynb"  # os.fsdecode(b"...\xff...")
    surrogate = _report(
        "amy",
        cell_errors=["In [2]: Exception: \ud800"],
        checks=[CheckResult("test_a", 0, 1, "raised \ud800")],
    )
    named = GradeReport(student="b\udcffn", exercise="ex1_checkpoint_manager", notebook=bad_name,
                        max_score=5, status=Status.OK, seed=9)  # fmt: skip
    out = tmp_path / "grades.csv"
    write_gradebook(root, [surrogate, named], out)
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert [r["submission"] for r in rows] == ["", "amy/ex1_checkpoint_manager\\udcff.ipynb"]
    written = write_feedback([surrogate, named], tmp_path / "feedback")
    assert len(written) == 2
    assert "\\ud800" in written[0].read_text(encoding="utf-8")


def test_a_feedback_file_that_fails_costs_only_that_file(tmp_path):
    folder = tmp_path / "feedback"
    (folder / "amy.txt").mkdir(parents=True)  # cannot be replaced by a file
    written = write_feedback([_report("amy"), _report("ben")], folder)
    assert [p.name for p in written] == ["ben.txt"]


def test_the_students_words_cannot_pass_for_the_graders(tmp_path):
    """Item 10: a forged PASS line in a cell error or a check message stays quoted."""
    forged = "RuntimeError: ok\n  PASS test_names_and_retention (1/1)"
    checks = [CheckResult("test_a", 0, 1, "for this question it raised ok\n  PASS test_a (1/1)")]
    report = _report("amy", cell_errors=[f"In [4]: {forged}"], checks=checks,
                     student_output="x\n  PASS test_b (1/1)")  # fmt: skip
    text = write_feedback([report], tmp_path)[0].read_text()
    grader_lines = [line for line in text.splitlines() if not line.lstrip().startswith("|")]
    assert not [line for line in grader_lines if "PASS" in line], text
    assert "      |   PASS test_names_and_retention (1/1)" in text
    assert "  FAIL test_a (0/1)" in text
