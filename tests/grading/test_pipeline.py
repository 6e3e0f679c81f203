"""The grading package as a declared pipeline, and the pipeline's own behaviour, step by step.

The layout tests check that each step has its module and its test file. The unit tests below run
``pipeline.py`` with its steps replaced (``run_sandboxed``, ``load_exercise``, ``WarmSandbox``,
``sandbox_available``): nothing is sandboxed and no hidden check runs, so each behaviour of the
pipeline itself (statuses, the solution's failure, crashes, scratch folders, warm or cold) is
checked in milliseconds. ``test_class.py`` runs the real steps end to end.
"""

from __future__ import annotations

import csv
import os
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import pytest
from submissions import EXERCISES, with_cells

import teacher.grading as grading
from teacher.grading import pipeline
from teacher.grading.collect import read_submission
from teacher.grading.paths import SOLUTIONS_DIR
from teacher.grading.pipeline import SolutionError, _Run, _status, grade_submissions
from teacher.grading.records import CheckResult, SandboxRun, Status, Submission
from teacher.grading.sandbox import Limits

PACKAGE = Path(grading.__file__).parent
TESTS = Path(__file__).parent
STEPS = ["collect", "sandbox", "judge", "report"]


def test_the_front_file_names_the_steps_in_reading_order():
    doc = grading.__doc__
    positions = [doc.index(f"``{step}``") for step in STEPS]
    assert positions == sorted(positions)
    assert set(grading.__all__) <= set(dir(grading))


def test_every_step_has_its_module_and_its_test_file():
    for step in STEPS:
        assert (PACKAGE / f"{step}.py").is_file(), step
    tested = {p.stem.removeprefix("test_") for p in TESTS.glob("test_*.py")}
    assert set(STEPS) <= tested, f"steps without a test file: {set(STEPS) - tested}"


# --- the pipeline's behaviour, its steps replaced -------------------------------------------------

EX3, EX5 = "ex3_partial_loading", "ex5_unwrap_prefixes"
MAX_SCORE = 3.0


@dataclass
class Call:
    """One call of the replaced ``run_sandboxed``."""

    cells: tuple[str, ...]
    exercise: str
    questions: list
    workdir: Path
    limits: Limits | None
    warm: object

    @property
    def solution(self) -> bool:
        return self.workdir.name.startswith(f"solution-{self.exercise}-")


@dataclass
class Judged:
    """One call of the replaced exercise's ``judge``."""

    student: Path
    student_existed: bool
    solution: Path
    solution_who: str
    questions: list


class FakeWarm:
    """Stands in for ``WarmSandbox``: hands out job folders under the run's scratch folder."""

    def __init__(self, steps: Steps, scratch: Path, limits: Limits) -> None:
        self.scratch, self.limits, self.closed = scratch, limits, False
        steps.zygotes.append(self)

    def new_workdir(self, prefix: str = "warm-job-") -> Path:
        return Path(tempfile.mkdtemp(prefix=prefix, dir=self.scratch))

    def close(self) -> None:
        self.closed = True


class FakeExercise:
    """Stands in for an ``Exercise``: two checks, 3 points, questions that name the seed."""

    def __init__(self, steps: Steps, name: str) -> None:
        self.steps, self.name = steps, name

    @property
    def max_score(self) -> float:
        return MAX_SCORE

    def questions(self, seed: int) -> list:
        return [{"exercise": self.name, "seed": seed}]

    def judge(self, student, solution, questions) -> list[CheckResult]:
        cells = (student.folder / "cells.txt").read_text()
        if "JUDGE CRASH" in cells:
            raise ValueError("the check broke")
        self.steps.judged.append(
            Judged(
                student.folder, student.folder.is_dir(), solution.folder, solution.who, questions
            )
        )
        right = "right" in cells
        return [
            CheckResult("test_answered", 2, 2, "ok"),
            CheckResult("test_right", 1 if right else 0, 1, "ok" if right else "wrong"),
        ]


@dataclass
class Steps:
    """The replaced steps, what they were called with, and what each student's run returns."""

    bwrap: bool = False  # what ``sandbox_available`` says
    runs: list[Call] = field(default_factory=list)
    judged: list[Judged] = field(default_factory=list)
    zygotes: list[FakeWarm] = field(default_factory=list)
    outcomes: dict[str, dict] = field(default_factory=dict)  # first cell -> SandboxRun fields
    solution_outcomes: dict[str, dict] = field(default_factory=dict)  # exercise -> fields
    left_behind: list[Path] = field(default_factory=list)  # job folders there at a later start
    open_solution_zygotes: list[object] = field(default_factory=list)  # seen at a student's start
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run_sandboxed(self, cells, exercise, questions, workdir, limits=None, warm=None):
        assert workdir.is_dir(), "the job's folder must exist when the sandbox starts"
        call = Call(tuple(cells), exercise, questions, workdir, limits, warm)
        with self.lock:
            self.left_behind += [c.workdir for c in self.student_runs() if c.workdir.exists()]
            if not call.solution:  # a solution's zygote still running beside a student's job?
                self.open_solution_zygotes += [
                    c.warm for c in self.solution_runs() if c.warm and not c.warm.closed
                ]
            self.runs.append(call)
        answers = workdir / "answers"
        answers.mkdir()
        (answers / "cells.txt").write_text("\n".join(cells))
        fields = {"sandboxed": True, "returncode": 0, "where": "done"}
        if call.solution:
            fields.update(self.solution_outcomes.get(exercise, {}))
        else:
            fields.update(self.outcomes.get(cells[0], {}))
        if "raise" in fields:
            raise fields["raise"]
        return SandboxRun(answers_dir=answers, **fields)

    def student_runs(self) -> list[Call]:
        return [c for c in self.runs if not c.solution]

    def solution_runs(self) -> list[Call]:
        return [c for c in self.runs if c.solution]


@pytest.fixture
def steps(monkeypatch):
    """Every step that would need a sandbox or a hidden check replaced by a scripted one."""
    steps = Steps()
    monkeypatch.setattr(pipeline, "run_sandboxed", steps.run_sandboxed)
    monkeypatch.setattr(pipeline, "load_exercise", lambda name: FakeExercise(steps, name))
    monkeypatch.setattr(pipeline, "sandbox_available", lambda: steps.bwrap)
    monkeypatch.setattr(pipeline, "WarmSandbox", lambda *args: FakeWarm(steps, *args))
    return steps


def student(name: str, exercise: str | None = EX3, *cells: str, **fields) -> Submission:
    fields.setdefault("path", Path("/class", name, f"{exercise}.ipynb"))
    fields.setdefault("code_cells", cells or (f"cells of {name}",))
    return Submission(student=name, exercise=exercise, **fields)


def _run(**fields) -> SandboxRun:
    base = {"answers_dir": Path("/nowhere"), "sandboxed": True, "returncode": 0, "where": "done"}
    return SandboxRun(**{**base, **fields})


@pytest.mark.parametrize(
    ("run", "status"),
    [
        (_run(), Status.OK),
        (_run(sandboxed=False), Status.SANDBOX_OFF),
        (_run(returncode=3, problem="it exited with code 3"), Status.CRASHED),
        (_run(returncode=-9, problem="more than 10 MB of memory"), Status.CRASHED),
        (_run(sandboxed=False, returncode=3, problem="exited"), Status.CRASHED),
        (_run(returncode=None, problem="stopped after 20 s"), Status.TIMEOUT),
        (_run(returncode=None, sandboxed=False, problem="stopped"), Status.TIMEOUT),
        (_run(returncode=None, output_truncated=True), Status.OK),
        (_run(returncode=None, output_truncated=True, problem="flooded"), Status.CRASHED),
    ],
    ids=[
        "ran",
        "ran-unsandboxed",
        "exited",
        "killed-at-a-limit",
        "crash-beats-sandbox-off",
        "stopped-at-the-time-limit",
        "timeout-beats-sandbox-off",
        "output-truncated-is-graded",
        "output-truncated-with-a-problem",
    ],
)
def test_each_sandbox_outcome_maps_to_its_status(run, status):
    assert _status(run) == status


def test_the_report_takes_its_status_and_what_the_run_saw(steps):
    output = "\n".join(f"line {i}" for i in range(20)) + "\n\n"
    steps.outcomes = {
        "ok": {},
        "off": {"sandboxed": False},
        "crash": {"returncode": 3, "problem": "it exited with code 3", "where": "cell In [2]"},
        "slow": {"returncode": None, "problem": "stopped after 20 s"},
        "failed": {
            "where": "questions failed",
            "output_tail": output,
            "problem": "no answers",
            "cell_errors": ["In [1]: KeyError: 'x'"],
            "notes": ["In [1] raised"],
        },
        "printed": {"output_tail": output},
    }
    names = list(steps.outcomes)
    reports = grade_submissions([student(n, EX3, n) for n in names], seed=7, jobs=1)
    by_name = {r.student: r for r in reports}
    assert [r.student for r in reports] == names
    assert {n: by_name[n].status for n in names} == {
        "ok": Status.OK,
        "off": Status.SANDBOX_OFF,
        "crash": Status.CRASHED,
        "slow": Status.TIMEOUT,
        "failed": Status.CRASHED,
        "printed": Status.OK,
    }
    assert by_name["off"].sandboxed is False and by_name["ok"].sandboxed is True
    assert by_name["crash"].problem == "it exited with code 3"
    failed = by_name["failed"]
    assert failed.cell_errors == ["In [1]: KeyError: 'x'"] and failed.notes == ["In [1] raised"]
    # Only when the questions failed is the output the student's explanation: its last 8 lines.
    assert failed.student_output == "\n".join(f"line {i}" for i in range(12, 20))
    assert by_name["printed"].student_output == ""
    for report in reports:
        assert (report.score, report.max_score, report.seed) == (2, MAX_SCORE, 7)
        assert report.notebook == Path("/class", report.student, f"{EX3}.ipynb")
        assert report.seconds > 0


@pytest.mark.parametrize(
    ("failure", "named"),
    [
        ({"problem": "it exited with code 1 in In [4]"}, "it exited with code 1 in In [4]"),
        ({"cell_errors": ["In [2]: ImportError: no torch"]}, "In [2]: ImportError: no torch"),
    ],
    ids=["problem", "cell-error"],
)
def test_a_failing_solution_stops_the_run_before_any_student_runs(steps, failure, named):
    """Every solution runs first: not one student is graded against answers that cannot be
    trusted, even students of another exercise whose solution worked."""
    steps.solution_outcomes[EX5] = {**failure, "output_tail": "Traceback: the solution's output"}
    with pytest.raises(SolutionError) as raised:
        grade_submissions([student("amy", EX3), student("ben", EX5)], seed=1, jobs=2)
    message = str(raised.value)
    assert f"the solution of {EX5} failed" in message
    assert named in message
    assert f"fix solutions/{EX5}.ipynb before grading" in message
    assert message.endswith("Traceback: the solution's output")
    assert steps.student_runs() == [], "a student's code ran beside a broken solution"
    assert not steps.runs[0].workdir.parent.exists(), "the run's scratch folder was left behind"


def test_a_solution_error_while_grading_one_submission_is_raised_not_reported(steps, monkeypatch):
    run = _Run(seed=1, limits=Limits(), warm=False)
    try:
        monkeypatch.setattr(run, "solution_answers", _raises(SolutionError("solution broke")))
        with pytest.raises(SolutionError, match="solution broke"):
            run.grade(student("amy"))
    finally:
        run.close()


def _raises(exc: Exception):
    def step(*args, **kwargs):
        raise exc

    return step


@pytest.mark.parametrize(
    ("cell", "outcome", "problem"),
    [
        (
            "sandbox breaks",
            {"raise": OSError("no space for the job")},
            "(OSError: no space for the job)",
        ),
        ("JUDGE CRASH", {}, "(ValueError: the check broke)"),
        ("sandbox raises an odd error", {"raise": KeyError("answers")}, "(KeyError: 'answers')"),
    ],
    ids=["in-the-sandbox-step", "in-the-judge-step", "any-exception"],
)
def test_a_crash_grading_one_submission_is_its_report_and_the_rest_are_graded(
    steps, cell, outcome, problem
):
    steps.outcomes = {cell: outcome, "right": {}}
    submissions = [student("amy", EX3, "right"), student("bad", EX3, cell), student("zoe", EX5)]
    reports = grade_submissions(submissions, seed=4, jobs=2)
    assert [r.student for r in reports] == ["amy", "bad", "zoe"]
    amy, bad, zoe = reports
    assert bad.status == Status.CRASHED and bad.score == 0, bad.summary()
    assert bad.problem == f"the grader could not grade this submission {problem}"
    assert (bad.exercise, bad.max_score, bad.seed) == (EX3, MAX_SCORE, 4)
    assert (amy.status, amy.score) == (Status.OK, 3) and (zoe.status, zoe.score) == (Status.OK, 2)


def test_an_exercise_that_cannot_load_costs_its_submissions_not_the_run(steps, monkeypatch):
    def load_exercise(name):
        if name == EX5:
            raise SyntaxError("the teacher's judge.py is broken")
        return FakeExercise(steps, name)

    monkeypatch.setattr(pipeline, "load_exercise", load_exercise)
    unreadable = student("ben", EX5, problem="not a readable notebook (ValueError)")
    amy, ben = grade_submissions([student("amy", EX3, "right"), unreadable], seed=2, jobs=1)
    assert (amy.status, amy.score) == (Status.OK, 3)
    assert ben.status == Status.CRASHED and ben.max_score == 0
    assert "SyntaxError: the teacher's judge.py is broken" in ben.problem


def test_submissions_that_cannot_run_are_reported_without_running(steps):
    submissions = [
        student("amy", EX5, problem="no notebook handed in", path=None),
        student("ben", EX5, problem="not a readable notebook (ValueError)", note="also: x"),
        student("cy", None, problem="cannot tell which exercise this is"),
    ]
    amy, ben, cy = grade_submissions(submissions, seed=2, jobs=1)
    assert steps.runs == [], "nothing to grade, so not even the solution may run"
    assert (amy.status, amy.notebook) == (Status.MISSING, None)
    assert amy.problem == "no notebook handed in"
    assert (ben.status, ben.note) == (Status.UNREADABLE, "also: x")
    assert ben.problem == "not a readable notebook (ValueError)"
    assert (cy.status, cy.exercise, cy.max_score) == (Status.UNREADABLE, None, 0)
    for report in (amy, ben):
        assert (report.score, report.max_score, report.seed) == (0, MAX_SCORE, 2)


def test_the_solution_runs_once_per_exercise_and_is_asked_the_students_questions(steps):
    steps.bwrap = True
    submissions = [student(n, EX3) for n in ("amy", "ben", "cy", "dee")] + [student("eve", EX5)]
    grade_submissions(submissions, seed=11, jobs=2)
    solutions = {c.exercise: c for c in steps.solution_runs()}
    assert sorted(c.exercise for c in steps.solution_runs()) == [EX3, EX5]
    for exercise, call in solutions.items():
        solved = read_submission(SOLUTIONS_DIR / f"{exercise}.ipynb", "solution")
        assert call.cells == solved.code_cells
        assert call.questions == [{"exercise": exercise, "seed": 11}]
        assert call.warm is not None and call.warm.closed, "the solution ran cold"
        assert call.warm not in {c.warm for c in steps.student_runs()}, "a shared zygote"
    assert steps.open_solution_zygotes == [], "a solution's zygote ran beside a student's job"
    assert len(steps.judged) == 5
    for judged in steps.judged:
        exercise = judged.questions[0]["exercise"]
        assert judged.questions == solutions[exercise].questions
        assert judged.solution == solutions[exercise].workdir / "answers"
        assert judged.solution_who == "the solution"
        assert judged.student != judged.solution and judged.student_existed
    assert [c.questions for c in steps.student_runs() if c.exercise == EX5] == [
        solutions[EX5].questions
    ]


def test_the_seed_draws_the_questions_and_is_fresh_when_not_given(steps):
    (given,) = grade_submissions([student("amy")], seed=123, jobs=1)
    fresh = [grade_submissions([student("amy")], jobs=1)[0].seed for _ in range(3)]
    assert given.seed == 123
    assert all(0 <= seed < 2**31 for seed in fresh) and len(set(fresh)) > 1
    drawn = [c.questions[0]["seed"] for c in steps.student_runs()]
    assert drawn == [123, *fresh]


def test_each_job_folder_is_removed_after_its_run_and_the_scratch_at_the_end(steps):
    steps.outcomes = {"JUDGE CRASH": {}, "sandbox breaks": {"raise": OSError("full")}}
    submissions = [student("amy"), student("bad", EX3, "JUDGE CRASH"),
                   student("worse", EX3, "sandbox breaks"), student("zoe", EX5)]  # fmt: skip
    grade_submissions(submissions, seed=3, jobs=1)
    assert all(j.student_existed for j in steps.judged), "removed before it was judged"
    assert steps.left_behind == [], "a job's folder outlived its run (crashed or not)"
    scratch = {c.workdir.parent for c in steps.runs}
    assert len(scratch) == 1 and next(iter(scratch)).name.startswith("grade-run-")
    assert not [c.workdir for c in steps.runs if c.workdir.exists()]
    assert not next(iter(scratch)).exists()


def test_removing_a_tree_handles_locked_and_deep_folders_and_follows_no_link(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("the teacher's")
    tree = tmp_path / "scratch"
    tree.mkdir()
    _nest(tree, 3000)  # deeper than Python's recursion limit and longer than PATH_MAX
    locked = tree / "locked"
    locked.mkdir()
    (locked / "inner").write_text("x")
    (tree / "link").symlink_to(outside, target_is_directory=True)
    locked.chmod(0o000)  # (as root, a mode stops nothing: then only the rest is checked)
    tree.chmod(0o500)
    try:
        pipeline._remove_tree(tree)
        assert not tree.exists()
    finally:  # whatever happened, leave nothing too deep for pytest's own clean-up
        subprocess.run(["chmod", "-R", "u+rwx", str(tmp_path)], check=False)
        subprocess.run(["rm", "-rf", str(tree)], check=False)
    assert (outside / "keep.txt").read_text() == "the teacher's"
    pipeline._remove_tree(tree)  # gone already: nothing to do, nothing raised


def _nest(folder: Path, depth: int) -> None:
    """``folder/d/d/.../d``, ``depth`` folders deep, made relative to each parent's descriptor."""
    parent = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(depth):
        os.mkdir("d", dir_fd=parent)
        child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=parent)
        os.close(parent)
        parent = child
    os.close(parent)


def test_removing_a_tree_never_raises_and_says_what_is_left(tmp_path, monkeypatch, capsys):
    stuck = tmp_path / "stuck"
    stuck.mkdir()
    monkeypatch.setattr(pipeline.subprocess, "run", lambda *a, **k: None)
    monkeypatch.setattr(pipeline.shutil, "rmtree", lambda *a, **k: None)
    pipeline._remove_tree(stuck)
    assert f"could not remove {stuck}; remove it by hand" in capsys.readouterr().err


def test_warm_runs_fork_students_from_one_zygote_per_thread(steps):
    steps.bwrap = True
    limits = Limits(timeout=9)
    grade_submissions([student(n) for n in ("amy", "ben", "cy")], seed=5, jobs=1, limits=limits)
    (zygote,) = {c.warm for c in steps.student_runs()}
    assert zygote.closed, "the zygote was left running"
    assert zygote.limits is limits and zygote.scratch.name.startswith("grade-run-")
    for call in steps.student_runs():
        assert call.warm is zygote and call.limits is limits
        assert call.workdir.name.startswith("warm-job-"), "the job's folder is not the zygote's"
    (solution,) = steps.solution_runs()
    assert solution.warm is not zygote and solution.warm in steps.zygotes
    assert len(steps.zygotes) == 2 and all(z.closed for z in steps.zygotes)


def test_several_threads_get_a_zygote_each_and_all_are_closed(steps, monkeypatch):
    steps.bwrap = True
    both_waiting = threading.Barrier(2, timeout=10)

    def run_sandboxed(cells, *args, **kwargs):
        if cells[0].startswith("cells of"):
            both_waiting.wait()  # the two students' runs overlap: one per thread
        return Steps.run_sandboxed(steps, cells, *args, **kwargs)

    monkeypatch.setattr(pipeline, "run_sandboxed", run_sandboxed)
    grade_submissions([student("amy"), student("ben")], seed=5, jobs=2)
    warm = {id(c.warm) for c in steps.student_runs()}
    assert len(warm) == 2 and warm.isdisjoint(id(c.warm) for c in steps.solution_runs())
    assert all(z.closed for z in steps.zygotes)


@pytest.mark.parametrize(
    ("warm", "bwrap"), [(False, True), (True, False)], ids=["cold", "no-bubblewrap"]
)
def test_no_zygote_when_cold_or_without_bubblewrap(steps, warm, bwrap):
    steps.bwrap = bwrap
    grade_submissions([student("amy"), student("ben")], seed=5, jobs=1, warm=warm)
    assert steps.zygotes == []
    for call in steps.student_runs():
        assert call.warm is None and call.workdir.parent.name.startswith("grade-run-")


def test_grade_notebook_grades_one_file_in_a_cold_sandbox(steps, tmp_path):
    steps.bwrap = True
    path = tmp_path / "my homework.ipynb"
    nbformat.write(with_cells(EX3, "print('right')"), path)
    report = pipeline.grade_notebook(path, seed=8, limits=Limits(timeout=5))
    assert steps.zygotes == [], "one notebook does not pay for a zygote"
    (call,) = steps.student_runs()
    assert call.cells == read_submission(path).code_cells and call.cells[-1] == "print('right')"
    assert call.limits == Limits(timeout=5)
    assert (report.student, report.exercise, report.notebook) == ("my homework", EX3, path)
    assert (report.status, report.score, report.seed) == (Status.OK, 3, 8)


def test_grade_class_writes_the_gradebook_and_each_students_feedback(steps, tmp_path):
    root = tmp_path / "class"
    (root / "amy").mkdir(parents=True)
    (root / "ben").mkdir()
    nbformat.write(with_cells(EX3, "print('right')"), root / "amy" / f"{EX3}.ipynb")
    out = tmp_path / "grades.csv"
    reports = pipeline.grade_class(root, out, seed=6, jobs=1, progress=False, warm=False)
    assert len(reports) == 2 * len(EXERCISES)
    rows = list(csv.DictReader(out.open()))
    graded = {(r["student"], r["exercise"]): (r["status"], r["score"]) for r in rows}
    assert graded[("amy", EX3)] == ("ok", "3")
    assert graded[("ben", EX3)] == ("missing", "0")
    assert len(graded) == len(rows) == 2 * len(EXERCISES)
    feedback = tmp_path / "grades-feedback"
    assert sorted(p.name for p in feedback.iterdir()) == ["amy.txt", "ben.txt"]
    assert f"amy/{EX3}.ipynb: 3/3 points" in (feedback / "amy.txt").read_text()
    other = tmp_path / "elsewhere"
    pipeline.grade_class(root, out, feedback_dir=other, seed=6, jobs=1, progress=False)
    assert sorted(p.name for p in other.iterdir()) == ["amy.txt", "ben.txt"]


def test_grade_class_refuses_a_folder_with_nothing_to_grade(steps, tmp_path):
    empty, out = tmp_path / "empty", tmp_path / "grades.csv"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no student folders or notebooks"):
        pipeline.grade_class(empty, out)
    assert not out.exists() and steps.runs == []
