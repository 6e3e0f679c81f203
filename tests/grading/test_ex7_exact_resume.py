"""Exercise 7 is graded on bitwise resumes after real SIGKILLs: the solution gets full marks, the
stub nothing, and answers that leave out part of the training state nothing on the resume checks.
"""

from __future__ import annotations

import nbformat
import pytest
from submissions import needs_bwrap, replacing, with_cells, without_self_check

from teacher.grading import Limits, grade_notebook

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

pytestmark = [pytest.mark.slow, needs_bwrap]


def grade(nb: nbformat.NotebookNode, tmp_path):
    path = tmp_path / f"{EXERCISE}.ipynb"
    nbformat.write(nb, path)
    report = grade_notebook(path, seed=3, limits=Limits(cell_timeout=60, timeout=300))
    return report, {check.name: check for check in report.checks}


def test_the_solution_gets_full_marks(tmp_path):
    report, _ = grade(with_cells(EXERCISE), tmp_path)
    assert report.score == report.max_score == 6, report.summary()


def test_the_stub_gets_nothing(tmp_path):
    report, checks = grade(with_cells(EXERCISE, solved=False), tmp_path)
    assert len(checks) == 4 and all(c.points == 0 for c in checks.values()), report.summary()


@pytest.mark.parametrize(
    "answer",
    [MODEL_ONLY, NO_NUMPY_RNG, STARTS_AGAIN],
    ids=["model_only", "no_numpy_rng", "starts_again"],
)
def test_a_partial_checkpoint_gets_nothing_on_the_resume_checks(answer, tmp_path):
    nb = without_self_check(replacing(EXERCISE, "def save", answer))
    report, checks = grade(nb, tmp_path)
    saves = answer is not STARTS_AGAIN  # saving nothing earns nothing, not even the straight run
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


def test_switching_off_the_kill_from_a_cell_gains_nothing(tmp_path):
    nb = without_self_check(replacing(EXERCISE, "def save", KILL_SWITCH))
    report, checks = grade(nb, tmp_path)
    for name in RESUME_CHECKS:
        assert checks[name].points == 0, report.summary()
