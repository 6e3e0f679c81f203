"""Issue 20, the judging side, in one real class run: bombs, leaks and hijacks beside honest students.

Items 1, 2 and 9 (ONNX time bomb, memory bomb, a ``Constant`` whose external data names the
solution), 6 (an answer holding a huge Python list) and 7 (the asker found with ``gc`` and patched,
answers written directly): each attacker gets nothing it did not earn, and ``alice`` (all six
solutions, graded before the attackers) and ``zoe`` (honest ex2 and ex6, after them) keep full
marks; the run ends with a complete gradebook.
"""

from __future__ import annotations

import csv
import inspect
import textwrap

import pytest
import test_judge_isolation as bombs
from submissions import (
    CHAPTER_MANAGER,
    CLASS_RUN,
    EXERCISES,
    PLAIN_SAVE,
    ROOT,
    needs_bwrap,
    replacing,
    with_cells,
    without_self_check,
)

from teacher.grading import Status

pytestmark = [needs_bwrap, *CLASS_RUN]  # on the worker grading the class run (conftest.py)

EX1, EX2, EX4, EX6 = (
    "ex1_checkpoint_manager",
    "ex2_onnx_export",
    "ex4_weights_only",
    "ex6_atomic_save",
)

FIND_THE_ASKER = """
import gc, types
askers = [o for o in gc.get_objects()
          if isinstance(o, types.ModuleType) and o.__name__ in ("_answer", "_witness")]
print("found", sorted({a.__name__ for a in askers}))
"""

# Issue item 7, ex1: the chapter's manager, and the asker's file-aging and payload switched off.
EX1_HIJACK = (
    CHAPTER_MANAGER
    + FIND_THE_ASKER
    + """
for A in askers:
    A._age_oldest = lambda folder: None
    A._torch_save = lambda obj, path: torch.save({"epoch": obj["epoch"]}, path)
    A.witness = lambda questions, w: None
"""
)

# Issue item 7, ex6: the plain save, and the asker's kill switched off.
EX6_KILL_SWITCH = (
    PLAIN_SAVE
    + FIND_THE_ASKER
    + """
for A in askers:
    A._kill = lambda pid, sig: None
    if hasattr(A, "Witness"):
        A.Witness._stop_everything_else = lambda self: None
"""
)

# Issue item 7, the ex6 stub: the asker replaced, and every answer file written directly.
EX6_STUB_FORGER = (
    FIND_THE_ASKER
    + """
import json, os, torch
for A in askers:
    A.answer = lambda questions, ask: None
    A.witness = lambda questions, w: None
    A.save = lambda *args, **kwargs: None
def state(seed, step, numel):
    generator = torch.Generator().manual_seed(seed * 1000 + step)
    return {"step": step, "weights": torch.randn(numel, generator=generator)}
records, files = {}, {}
for q in json.load(open("/grader/questions.json")):
    kills = q.get("kill_at", [])
    for folder in (f"/answers/{q['id']}", f"/answers/kept/{q['id']}"):
        os.makedirs(folder, exist_ok=True)
        names = ["model.pt", "first.pt", "after_failure.pt", "last.pt"]
        for name in names + [f"after_kill_{i}.pt" for i in range(len(kills))]:
            step = len(kills) + 1 if name == "last.pt" else 0
            torch.save(state(q["seed"], step, q["numel"]), f"{folder}/{name}")
    records[f"listing:{q['id']}"] = ["model.pt"]
    for name in os.listdir(f"/answers/kept/{q['id']}"):
        records[f"kept:kept/{q['id']}/{name}"] = True
    for i in range(len(kills)):
        records[f"{q['id']}.kill_{i}"] = "killed"
body = json.dumps({"records": records, "files": files})
json.dump({"body": body, "mac": "0" * 64}, open("/answers/witness.json", "w"))
json.dump({"type": "PicklingError", "mro": ["PicklingError"], "message": "no"},
          open("/answers/unpicklable.bad.raised.json", "w"))
"""
)


def _bomb_source(call: str) -> str:
    """A notebook's export_and_verify that writes an ONNX file built by ``call``."""
    helpers = [bombs._graph_model, bombs._expanded, bombs.time_bomb, bombs.memory_bomb,
               bombs.leaking_constant]  # fmt: skip
    source = "\n\n".join(textwrap.dedent(inspect.getsource(f)) for f in helpers)
    return f"""
import onnx
from onnx import TensorProto, helper

{source}

def export_and_verify(model, example_input, path):
    onnx.save_model({call}, str(path))
    return 1e-7
"""


# Issue item 6: a conversion that keeps the history as a Python list of four million floats.
EX4_HUGE_LIST = """
_solved = make_weights_only_loadable
def make_weights_only_loadable(checkpoint):
    converted = _solved(checkpoint)
    converted["history"] = [0.5] * 4_000_000
    return converted
"""


def submit_attacks(submit) -> None:
    """This file's students, handed in through ``submit(student, notebook, exercise)``."""
    for exercise in EXERCISES:
        submit("alice", with_cells(exercise), exercise)
    for exercise in (EX2, EX6):
        submit("zoe", with_cells(exercise), exercise)  # sorted after every attacker
    submit("dana", without_self_check(replacing(EX1, "class SimpleCheckpointManager", CHAPTER_MANAGER)), EX1)  # fmt: skip
    submit("hijack1", without_self_check(replacing(EX1, "class SimpleCheckpointManager", EX1_HIJACK)), EX1)  # fmt: skip
    submit("fay", without_self_check(replacing(EX6, "def atomic_save", PLAIN_SAVE)), EX6)
    submit("killswitch", without_self_check(replacing(EX6, "def atomic_save", EX6_KILL_SWITCH)), EX6)  # fmt: skip
    submit("forger6", with_cells(EX6, EX6_STUB_FORGER, solved=False), EX6)
    leak = "../" * 12 + str(ROOT / "solutions" / "ex6_atomic_save.ipynb").lstrip("/")
    for student, call in (
        ("timebomb", "time_bomb(20_000)"),
        ("membomb", "memory_bomb()"),
        ("leaker", f"leaking_constant({leak!r})"),
        ("leaker_relative", "leaking_constant('solutions/ex6_atomic_save.ipynb')"),
    ):
        submit(student, replacing(EX2, "def export_and_verify", _bomb_source(call)), EX2)
    submit("hoarder", without_self_check(with_cells(EX4, EX4_HUGE_LIST)), EX4)


@pytest.fixture(scope="module")
def graded(class_run):
    """The one class run (conftest.py's ``class_run``), these attackers among its students."""
    return class_run


def _report(graded, student, exercise):
    return graded["reports"][(student, exercise)]


@pytest.mark.parametrize(
    ("student", "exercise"), [*(("alice", e) for e in EXERCISES), ("zoe", EX2), ("zoe", EX6)]
)
def test_honest_students_keep_full_marks(graded, student, exercise):
    report = _report(graded, student, exercise)
    assert report.status == Status.OK and report.score == report.max_score, report.summary()


def test_the_run_ends_with_a_complete_gradebook(graded):
    rows = list(csv.DictReader(graded["out"].open()))
    students: set[str] = set()  # this file's; test_class.py checks its own students' rows
    submit_attacks(lambda student, notebook, exercise: students.add(student))
    rows = [r for r in rows if r["student"] in students]
    assert {(r["student"], r["exercise"]) for r in rows} == {
        (s, e) for s in students for e in EXERCISES
    }


@pytest.mark.parametrize("student", ["timebomb", "membomb", "leaker", "leaker_relative"])
def test_onnx_bombs_and_leaks_cost_their_author_the_checks(graded, student):
    report = _report(graded, student, EX2)
    assert report.score == 0, report.summary()
    solution = (ROOT / "solutions" / "ex6_atomic_save.ipynb").read_text()
    secret_lines = [line.strip() for line in solution.splitlines() if len(line.strip()) > 25]
    summary = report.summary()
    assert not [line for line in secret_lines if line in summary], summary
    if student.startswith("leaker"):
        assert "point to external data" in summary, summary


def test_a_huge_list_is_refused_before_unpickling(graded):
    """Issue item 6: 177 s for this row before, through the weights-only unpickler."""
    report = _report(graded, "hoarder", EX4)
    failed = {c.name for c in report.checks if not c.passed}
    assert "test_numpy_numbers_and_arrays_converted" in failed, report.summary()
    assert "pickled Python objects" in report.summary(), report.summary()


def test_switching_off_the_ex1_askers_steps_gains_nothing(graded):
    """The issue's hijack took the chapter's manager from 2/5 to 4/5; it scores as without."""
    naive, hijack = _report(graded, "dana", EX1), _report(graded, "hijack1", EX1)
    assert 0 < naive.score < naive.max_score, naive.summary()
    assert [c.points for c in hijack.checks] == [c.points for c in naive.checks], hijack.summary()


def test_switching_off_the_ex6_kill_gains_nothing(graded):
    """The issue's hijack took a plain torch.save from 1/4 to 3/4; it scores as without."""
    plain, hijack = _report(graded, "fay", EX6), _report(graded, "killswitch", EX6)
    failed = {c.name for c in hijack.checks if not c.passed}
    assert "test_survives_being_killed_mid_save" in failed, hijack.summary()
    assert hijack.score == plain.score < plain.max_score, hijack.summary()


def test_replacing_the_asker_and_writing_the_answers_gains_the_stub_nothing(graded):
    """The issue's forger took the ex6 stub from 0/4 to 4/4."""
    report = _report(graded, "forger6", EX6)
    assert report.checks and all(c.points == 0 for c in report.checks), report.summary()
