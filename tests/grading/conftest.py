"""Fixtures shared by the grading tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def class_run(tmp_path_factory):
    """One real class run for test_class.py's honest, broken and hostile students,
    test_judge_attacks.py's attackers, test_stubs_earn_nothing.py's do-nothing answers and
    test_ex7_exact_resume.py's partial checkpoints (``test_class.grade_the_class``): the
    solutions run once, the zygotes start once."""
    from test_class import grade_the_class

    return grade_the_class(tmp_path_factory)
