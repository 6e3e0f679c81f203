"""The grading pipeline: collect -> run sandboxed -> judge -> report, for one notebook or a class.

Whatever one submission does, the run goes on: every failure of a submission becomes its status
and message, every scratch folder is removed, and the gradebook is written.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from teacher.grading.collect import collect_class, read_submission
from teacher.grading.judge import Answers, load_exercise
from teacher.grading.paths import SOLUTIONS_DIR
from teacher.grading.records import GradeReport, SandboxRun, Status, Submission
from teacher.grading.report import write_feedback, write_gradebook
from teacher.grading.sandbox import Limits, WarmSandbox, run_sandboxed, sandbox_available

__all__ = ["grade_class", "grade_notebook", "grade_submissions"]


class SolutionError(RuntimeError):
    """The course's own solution did not answer the questions: the grading run cannot be trusted."""


def _remove_tree(path: Path) -> None:
    """Remove a scratch folder however deep, whatever modes the student's code set; never raise.

    GNU chmod and rm walk trees without recursion (shutil.rmtree overflows Python's stack on a
    few thousand nested folders) and, recursing, never follow symbolic links.
    """
    if not path.exists():
        return
    subprocess.run(["chmod", "-R", "u+rwx", str(path)], capture_output=True, check=False)
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], capture_output=True, check=False)
    if path.exists():
        shutil.rmtree(path, ignore_errors=True)
    if path.exists():
        print(f"grading: could not remove {path}; remove it by hand", file=sys.stderr)


def _status(run: SandboxRun) -> Status:
    if run.returncode is None and not run.output_truncated:
        return Status.TIMEOUT
    if run.problem is not None:
        return Status.CRASHED
    return Status.OK if run.sandboxed else Status.SANDBOX_OFF


class _Run:
    """One grading run: its seed, its scratch folder, and the solution's answers per exercise."""

    def __init__(self, seed: int, limits: Limits, warm: bool) -> None:
        self.seed = seed
        self.limits = limits
        self.scratch = Path(tempfile.mkdtemp(prefix="grade-run-"))
        self.warm = warm and sandbox_available()
        self._per_thread = threading.local()
        self._warm_sandboxes: list[WarmSandbox] = []
        self._solutions: dict[str, Path] = {}
        self._solution_sandboxes: list[WarmSandbox] = []
        self._solutions_done = False
        self._solution_lock = threading.Lock()
        self._exercise_locks: dict[str, threading.Lock] = {}
        self._judge_lock = threading.Lock()

    def close(self) -> None:
        for sandbox in self._warm_sandboxes + self._solution_sandboxes:
            sandbox.close()
        _remove_tree(self.scratch)

    def _warm_sandbox(self) -> WarmSandbox | None:
        """This thread's zygote (students only: the solutions' answers never share its folder)."""
        if not self.warm:
            return None
        if getattr(self._per_thread, "sandbox", None) is None:
            self._per_thread.sandbox = WarmSandbox(self.scratch, self.limits)
            self._warm_sandboxes.append(self._per_thread.sandbox)
        return self._per_thread.sandbox

    def _solution_sandbox(self) -> WarmSandbox | None:
        """This thread's zygote for the solutions, closed before any student's code runs."""
        if not self.warm or self._solutions_done:
            return None
        if getattr(self._per_thread, "solution_sandbox", None) is None:
            self._per_thread.solution_sandbox = WarmSandbox(self.scratch, self.limits)
            self._solution_sandboxes.append(self._per_thread.solution_sandbox)
        return self._per_thread.solution_sandbox

    def solutions_done(self) -> None:
        """Every solution has run: their zygotes go, so no student job ever shares one."""
        self._solutions_done = True
        for sandbox in self._solution_sandboxes:
            sandbox.close()

    def solution_answers(self, exercise: str) -> Path:
        with self._solution_lock:  # one lock per exercise: different solutions run at once
            lock = self._exercise_locks.setdefault(exercise, threading.Lock())
        with lock:
            if exercise not in self._solutions:
                solution = read_submission(SOLUTIONS_DIR / f"{exercise}.ipynb", "solution")
                questions = load_exercise(exercise).questions(self.seed)
                warm, prefix = self._solution_sandbox(), f"solution-{exercise}-"
                workdir = (
                    warm.new_workdir(prefix)
                    if warm
                    else Path(tempfile.mkdtemp(prefix=prefix, dir=self.scratch))
                )
                run = run_sandboxed(
                    solution.code_cells, exercise, questions, workdir, self.limits, warm
                )
                if run.problem or run.cell_errors:
                    raise SolutionError(
                        f"the solution of {exercise} failed ({run.problem or run.cell_errors}); "
                        f"fix solutions/{exercise}.ipynb before grading.\n{run.output_tail}"
                    )
                self._solutions[exercise] = run.answers_dir
            return self._solutions[exercise]

    def grade(self, submission: Submission) -> GradeReport:
        """Grade one submission; a failure of the grader itself is reported, not raised."""
        try:
            return self._grade(submission)
        except SolutionError:
            raise
        except Exception as exc:  # noqa: BLE001 - one submission must never end the class's run
            report = self._report(submission)
            report.status = Status.CRASHED
            report.problem = (
                f"the grader could not grade this submission ({type(exc).__name__}: {exc})"
            )
            return report

    def _report(self, submission: Submission) -> GradeReport:
        """The report before anything ran: missing, or unreadable until a run says otherwise."""
        try:  # a teacher's broken exercise must not end the run from this fallback either
            max_score = load_exercise(submission.exercise).max_score if submission.exercise else 0.0
        except Exception:  # noqa: BLE001 - the crash itself is reported by ``grade``
            max_score = 0.0
        return GradeReport(
            student=submission.student,
            exercise=submission.exercise,
            notebook=submission.path,
            max_score=max_score,
            status=Status.MISSING if submission.path is None else Status.UNREADABLE,
            seed=self.seed,
            problem=submission.problem,
            note=submission.note,
        )

    def _grade(self, submission: Submission) -> GradeReport:
        started = time.perf_counter()
        exercise = load_exercise(submission.exercise) if submission.exercise else None
        report = self._report(submission)
        if exercise is None or submission.problem is not None:
            return report
        solution = self.solution_answers(exercise.name)
        questions = exercise.questions(self.seed)
        warm = self._warm_sandbox()
        workdir = warm.new_workdir() if warm else Path(tempfile.mkdtemp(dir=self.scratch))
        try:
            run = run_sandboxed(
                submission.code_cells, exercise.name, questions, workdir, self.limits, warm
            )
            with self._judge_lock:
                report.checks = exercise.judge(
                    Answers(run.answers_dir), Answers(solution, "the solution"), questions
                )
        finally:
            _remove_tree(workdir)
        report.status = _status(run)
        report.sandboxed = run.sandboxed
        report.problem = run.problem
        report.cell_errors = run.cell_errors
        report.notes = run.notes
        if run.where == "questions failed":  # what went wrong is in the output: the student's
            report.student_output = "\n".join(run.output_tail.strip().splitlines()[-8:])
        report.seconds = time.perf_counter() - started
        return report


def grade_submissions(
    submissions: list[Submission],
    *,
    seed: int | None = None,
    jobs: int = 2,
    limits: Limits | None = None,
    progress: bool = False,
    warm: bool = True,
) -> list[GradeReport]:
    """Run, judge and report every submission; ``seed`` draws the questions (fresh when None).

    ``warm`` forks each submission from a pre-imported zygote per thread (``WarmSandbox``) instead
    of starting a new Python per submission; ``warm=False`` starts a cold sandbox for each.
    """
    run = _Run(secrets.randbits(31) if seed is None else seed, limits or Limits(), warm)
    try:
        # The solutions' answers first, before any student's code runs: a submission's bomb
        # then never runs beside the solution it is compared with.
        exercises = sorted({s.exercise for s in submissions if s.exercise and not s.problem})
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            list(pool.map(run.solution_answers, exercises))
        run.solutions_done()
        from tqdm.auto import tqdm

        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            graded = pool.map(run.grade, submissions)
            return list(tqdm(graded, total=len(submissions), desc="grading", disable=not progress))
    finally:
        run.close()


def grade_notebook(
    notebook: str | os.PathLike[str], *, seed: int | None = None, limits: Limits | None = None
) -> GradeReport:
    """Grade one exercise notebook against its hidden checks (self-study feedback)."""
    path = Path(notebook)
    submission = read_submission(path, path.stem)
    # One submission: a zygote would cost as much to start as the cold sandbox it replaces.
    return grade_submissions([submission], seed=seed, jobs=1, limits=limits, warm=False)[0]


def grade_class(
    submissions: str | os.PathLike[str],
    out_csv: str | os.PathLike[str],
    *,
    feedback_dir: str | os.PathLike[str] | None = None,
    seed: int | None = None,
    jobs: int = 2,
    limits: Limits | None = None,
    progress: bool = True,
    warm: bool = True,
) -> list[GradeReport]:
    """Grade ``submissions/<student>/*.ipynb`` into a gradebook CSV and a feedback file per student.

    Feedback goes to ``feedback_dir`` (default: ``<out_csv without .csv>-feedback/``).
    """
    root, out = Path(submissions), Path(out_csv)
    collected = collect_class(root)
    if not collected:
        raise FileNotFoundError(f"{root}: no student folders or notebooks to grade")
    reports = grade_submissions(
        collected, seed=seed, jobs=jobs, limits=limits, progress=progress, warm=warm
    )
    write_gradebook(root, reports, out)
    write_feedback(reports, Path(feedback_dir or out.with_name(out.stem + "-feedback")))
    return reports
