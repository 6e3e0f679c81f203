"""Fixtures shared by the grading tests."""

from __future__ import annotations

import nbformat
import pytest

from teacher.grading import grade_class


@pytest.fixture(scope="session")
def attacked_class(tmp_path_factory):
    """One real class run for test_judge_attacks.py's attackers and honest students and
    test_stubs_earn_nothing.py's stubs and do-nothing answers (``submit_attacks``,
    ``submit_stubs``): their reports by (student, exercise), the gradebook and the class folder."""
    from test_judge_attacks import submit_attacks
    from test_stubs_earn_nothing import submit_stubs

    root = tmp_path_factory.mktemp("attacked-class")

    def submit(student: str, nb: nbformat.NotebookNode, exercise: str) -> None:
        (root / student).mkdir(exist_ok=True)
        path = root / student / f"{exercise}.ipynb"
        assert not path.exists(), f"two files hand in {student}'s {exercise}"
        nbformat.write(nb, path)

    submit_attacks(submit)
    submit_stubs(submit)
    out = root.parent / "grades.csv"
    reports = grade_class(root, out, seed=2020, jobs=2, progress=False)
    return {"reports": {(r.student, r.exercise): r for r in reports}, "out": out, "root": root}
