"""Exercise 7 is graded on bitwise resumes after real SIGKILLs: the solution gets full marks, the
stub nothing, and answers that leave out part of the training state nothing on the resume checks.
"""

from __future__ import annotations

import nbformat
import pytest
from submissions import CLASS_RUN, needs_bwrap, replacing, without_self_check

from teacher.grading import CheckResult, GradeReport

EXERCISE = "ex7_exact_resume"
RESUME_CHECKS = {
    "test_resumes_bit_for_bit_after_a_kill",
    "test_resumes_bit_for_bit_after_two_kills",
}

# A save of the model alone: the uninterrupted run is right, every resume is wrong.
MODEL_ONLY = """
def save(path, model, optimizer, scheduler, epoch):
    torch.save({"model": model.state_dict(), "start_epoch": epoch + 1}, path)


def resume(path, model, optimizer, scheduler):
    state = torch.load(path, weights_only=True)
    model.load_state_dict(state["model"])
    return state["start_epoch"]
"""

# Everything but NumPy's RNG: one missing RNG is enough to lose the resume checks.
NO_NUMPY_RNG = """
def save(path, model, optimizer, scheduler, epoch):
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "start_epoch": epoch + 1,
                "python": [random.getstate()[0], list(random.getstate()[1])],
                "torch": torch.get_rng_state()}, path)


def resume(path, model, optimizer, scheduler):
    state = torch.load(path, weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    random.setstate((state["python"][0], tuple(state["python"][1]), None))
    torch.set_rng_state(state["torch"])
    return state["start_epoch"]
"""

# Nothing saved, nothing resumed: the run after each kill starts again from scratch, and so ends
# with the uninterrupted run's weights. Only "where did the resumed run start" tells it apart.
STARTS_AGAIN = """
def save(path, model, optimizer, scheduler, epoch):
    pass


def resume(path, model, optimizer, scheduler):
    return 0
"""

pytestmark = [needs_bwrap, *CLASS_RUN]  # on the worker grading the class run (conftest.py)

#: This file's students in the class run; the solution and the stub are test_class's alice and bob.
SOLUTION, STUB = "alice", "bob"


def submit_ex7_answers(submit) -> None:
    """One student per partial answer below, handed in through ``submit(student, nb, exercise)``
    to the class run (conftest.py's ``class_run``)."""

    def answer(source: str) -> nbformat.NotebookNode:
        return without_self_check(replacing(EXERCISE, "def save", source))

    for student, source in [("model_only", MODEL_ONLY), ("no_numpy_rng", NO_NUMPY_RNG),
                            ("starts_again", STARTS_AGAIN), ("kill_switch", KILL_SWITCH)]:  # fmt: skip
        submit(student, answer(source), EXERCISE)


@pytest.fixture(scope="module")
def graded(class_run) -> dict[str, tuple[GradeReport, dict[str, CheckResult]]]:
    return {
        student: (report, {check.name: check for check in report.checks})
        for (student, exercise), report in class_run["reports"].items()
        if exercise == EXERCISE
    }


def test_the_solution_gets_full_marks(graded):
    report, _ = graded[SOLUTION]
    assert report.score == report.max_score == 6, report.summary()


def test_the_stub_gets_nothing(graded):
    report, checks = graded[STUB]
    assert len(checks) == 4 and all(c.points == 0 for c in checks.values()), report.summary()


@pytest.mark.parametrize("student", ["model_only", "no_numpy_rng", "starts_again"])
def test_a_partial_checkpoint_gets_nothing_on_the_resume_checks(graded, student):
    report, checks = graded[student]
    saves = student != "starts_again"  # saving nothing earns nothing, not even the straight run
    assert checks["test_the_uninterrupted_run_trains_as_given"].points == saves, report.summary()
    assert checks["test_the_checkpoint_loads_with_weights_only"].points == saves, report.summary()
    for name in RESUME_CHECKS:
        assert checks[name].points == 0, report.summary()
        assert ("momentum" if saves else "no checkpoint file") in checks[name].message


# A save of the model alone, and the asker's kill switched off from a cell (gc finds the asker's
# module): no run is ever killed, so the run after each "kill" finds the finished run's
# checkpoint. Its resume sets the learning rate to 0 (the rest of the run changes no weight) and
# returns the epoch the kill was drawn in (found with gc too): bitwise right, with the right start.
KILL_SWITCH = """
import gc
import types


def save(path, model, optimizer, scheduler, epoch):
    torch.save({"model": model.state_dict(), "start_epoch": epoch + 1}, path)


def resume(path, model, optimizer, scheduler):
    state = torch.load(path, weights_only=True)
    model.load_state_dict(state["model"])
    for group in optimizer.param_groups:
        group["lr"] = 0.0
    kills = [o.args[5] for o in gc.get_objects()
             if type(o).__name__ == "_Run" and o.args[2] == path and o.args[5] is not None]
    return max(kills) // 8 if kills else state["start_epoch"]


for module in [o for o in gc.get_objects() if isinstance(o, types.ModuleType)]:
    if module.__name__ in ("_answer", "_witness"):
        module._kill = lambda pid, sig: None
"""


def test_switching_off_the_kill_from_a_cell_gains_nothing(graded):
    report, checks = graded["kill_switch"]
    for name in RESUME_CHECKS:
        assert checks[name].points == 0, report.summary()
