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
    assert "size mismatch for 2.weight" in text and "cell error: In [3]: KeyError" in text
    unsandboxed = _report("ben", Status.SANDBOX_OFF, sandboxed=False)
    assert "WITHOUT a sandbox" in write_feedback([unsandboxed], tmp_path)[0].read_text()
