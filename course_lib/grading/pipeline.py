"""The grading pipeline: collect -> run sandboxed -> judge -> report, for one notebook or a class.

Whatever one submission does, the run goes on: every failure of a submission becomes its status
and message, every scratch folder is removed, and the gradebook is written.
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from course_lib.grading.collect import REPO_ROOT, collect_class, read_submission
from course_lib.grading.judge import Answers, load_exercise
from course_lib.grading.records import GradeReport, SandboxRun, Status, Submission
from course_lib.grading.report import write_feedback, write_gradebook
from course_lib.grading.sandbox import Limits, run_sandboxed

__all__ = ["grade_class", "grade_notebook", "grade_submissions"]

SOLUTIONS_DIR = REPO_ROOT / "solutions"


class SolutionError(RuntimeError):
    """The course's own solution did not answer the questions: the grading run cannot be trusted."""


def _remove_tree(path: Path) -> None:
    """Remove a scratch folder, even one whose modes the student's code changed."""

    def make_writable_and_retry(function, failed_path, _exc) -> None:  # noqa: ANN001
        parent = os.path.dirname(failed_path)
        os.chmod(parent, stat.S_IRWXU)
        if os.path.isdir(failed_path) and not os.path.islink(failed_path):
            os.chmod(failed_path, stat.S_IRWXU)
        function(failed_path)

    shutil.rmtree(path, onerror=make_writable_and_retry)  # onexc is 3.12+


def _status(run: SandboxRun) -> Status:
    if run.returncode is None and not run.output_truncated:
        return Status.TIMEOUT
    if run.problem is not None:
        return Status.CRASHED
    return Status.OK if run.sandboxed else Status.SANDBOX_OFF


class _Run:
    """One grading run: its seed, its scratch folder, and the solution's answers per exercise."""

    def __init__(self, seed: int, limits: Limits) -> None:
        self.seed = seed
        self.limits = limits
        self.scratch = Path(tempfile.mkdtemp(prefix="grade-run-"))
        self._solutions: dict[str, Path] = {}
        self._solution_lock = threading.Lock()
        self._judge_lock = threading.Lock()

    def close(self) -> None:
        _remove_tree(self.scratch)

    def solution_answers(self, exercise: str) -> Path:
        with self._solution_lock:
            if exercise not in self._solutions:
                solution = read_submission(SOLUTIONS_DIR / f"{exercise}.ipynb", "solution")
                questions = load_exercise(exercise).questions(self.seed)
                workdir = Path(tempfile.mkdtemp(prefix=f"solution-{exercise}-", dir=self.scratch))
                run = run_sandboxed(solution.code_cells, exercise, questions, workdir, self.limits)
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
            return GradeReport(
                student=submission.student,
                exercise=submission.exercise,
                notebook=submission.path,
                max_score=load_exercise(submission.exercise).max_score
                if submission.exercise
                else 0,
                status=Status.CRASHED,
                seed=self.seed,
                problem=f"the grader could not grade this submission ({type(exc).__name__}: {exc})",
            )

    def _grade(self, submission: Submission) -> GradeReport:
        started = time.perf_counter()
        exercise = load_exercise(submission.exercise) if submission.exercise else None
        report = GradeReport(
            student=submission.student,
            exercise=submission.exercise,
            notebook=submission.path,
            max_score=exercise.max_score if exercise else 0.0,
            status=Status.MISSING if submission.path is None else Status.UNREADABLE,
            seed=self.seed,
            problem=submission.problem,
        )
        if exercise is None or submission.problem is not None:
            return report
        solution = self.solution_answers(exercise.name)
        questions = exercise.questions(self.seed)
        workdir = Path(tempfile.mkdtemp(prefix="grade-", dir=self.scratch))
        try:
            run = run_sandboxed(
                submission.code_cells, exercise.name, questions, workdir, self.limits
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
        report.seconds = time.perf_counter() - started
        return report


def grade_submissions(
    submissions: list[Submission],
    *,
    seed: int | None = None,
    jobs: int = 2,
    limits: Limits | None = None,
    progress: bool = False,
) -> list[GradeReport]:
    """Run, judge and report every submission; ``seed`` draws the questions (fresh when None)."""
    run = _Run(secrets.randbits(31) if seed is None else seed, limits or Limits())
    try:
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
    return grade_submissions([read_submission(path, path.stem)], seed=seed, jobs=1, limits=limits)[
        0
    ]


def grade_class(
    submissions: str | os.PathLike[str],
    out_csv: str | os.PathLike[str],
    *,
    feedback_dir: str | os.PathLike[str] | None = None,
    seed: int | None = None,
    jobs: int = 2,
    limits: Limits | None = None,
    progress: bool = True,
) -> list[GradeReport]:
    """Grade ``submissions/<student>/*.ipynb`` into a gradebook CSV and a feedback file per student.

    Feedback goes to ``feedback_dir`` (default: ``<out_csv without .csv>-feedback/``).
    """
    root, out = Path(submissions), Path(out_csv)
    collected = collect_class(root)
    if not collected:
        raise FileNotFoundError(f"{root}: no student folders or notebooks to grade")
    reports = grade_submissions(collected, seed=seed, jobs=jobs, limits=limits, progress=progress)
    write_gradebook(root, reports, out)
    write_feedback(reports, Path(feedback_dir or out.with_name(out.stem + "-feedback")))
    return reports
