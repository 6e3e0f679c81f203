"""Issue 20 item 8: every check fails on the stub and on an answer that does nothing.

Per exercise the solution (full marks), the untouched stub and an answer that does nothing
("return empty"), each of which must score 0 on *every* check, not only in total: graded in the
class run this file shares with test_class.py and test_judge_attacks.py (conftest.py's
``class_run``).
"""

from __future__ import annotations

import pytest
from submissions import (
    CLASS_RUN,
    EXERCISES,
    needs_bwrap,
    replacing,
    without_self_check,
)

pytestmark = [needs_bwrap, *CLASS_RUN]  # on the worker grading the class run (conftest.py)

# Per exercise: the cell that defines the answer, and an answer that does nothing.
DOES_NOTHING = {
    "ex1_checkpoint_manager": (
        "class SimpleCheckpointManager",
        """
class SimpleCheckpointManager:
    def __init__(self, directory, max_to_keep=3):
        self.directory = Path(directory)
    def save(self, state, epoch):
        pass
    def epochs(self):
        return []
    def load_latest(self):
        raise FileNotFoundError(self.directory)
""",
    ),
    "ex2_onnx_export": (
        "def export_and_verify",
        "def export_and_verify(model, example_input, path):\n    return 0.0\n",
    ),
    "ex3_partial_loading": (
        "def load_matching_weights",
        'def load_matching_weights(model, state_dict):\n    return {"loaded": [], "skipped": []}\n',
    ),
    "ex4_weights_only": (
        "def make_weights_only_loadable",
        "def make_weights_only_loadable(checkpoint):\n    return {}\n",
    ),
    "ex5_unwrap_prefixes": (
        "def load_unwrapped",
        "def load_unwrapped(model, state_dict):\n    pass\n",
    ),
    "ex6_atomic_save": ("def atomic_save", "def atomic_save(obj, path):\n    pass\n"),
    "ex7_exact_resume": (
        "def save",
        "def save(path, model, optimizer, scheduler, epoch):\n    pass\n\n\n"
        "def resume(path, model, optimizer, scheduler):\n    return 0\n",
    ),
}


def submit_stubs(submit) -> None:
    """Per exercise an answer that does nothing (the solutions are ``alice``'s and the untouched
    stubs ``bob``'s, handed in by test_class.py to the same class run)."""
    for exercise in EXERCISES:
        defines, source = DOES_NOTHING[exercise]
        submit("nothing", without_self_check(replacing(exercise, defines, source)), exercise)


@pytest.fixture(scope="module")
def reports(class_run):
    return class_run["reports"]


def test_every_exercise_has_an_answer_that_does_nothing():
    assert set(DOES_NOTHING) == set(EXERCISES)


@pytest.mark.parametrize("exercise", EXERCISES)
def test_the_solution_gets_full_marks(reports, exercise):
    report = reports[("alice", exercise)]
    assert report.score == report.max_score > 0, report.summary()


@pytest.mark.parametrize("student", ["bob", "nothing"])  # bob: test_class's untouched stubs
@pytest.mark.parametrize("exercise", EXERCISES)
def test_every_check_fails_on_the_stub_and_on_doing_nothing(reports, student, exercise):
    report = reports[(student, exercise)]
    assert report.checks, report.summary()
    passed = [c.name for c in report.checks if c.points]
    assert not passed, report.summary()
