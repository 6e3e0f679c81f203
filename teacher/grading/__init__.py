"""Grading exercise notebooks so that a teacher can trust the grades.

A pipeline of four steps, one module each; read them in this order:

1. ``collect``: read the handed-in notebooks, tell which exercise each answers (no code runs).
2. ``sandbox``: run a notebook, then the grader's questions, in a bubblewrap sandbox (no network,
   an unprivileged uid, nothing of the course but ``course_lib``, a throw-away disk, limits), with
   ``in_sandbox`` as the process inside (cold: a new process per submission; warm: forked from a
   pre-imported zygote into fresh namespaces). The student's code can only *answer questions*.
   ``witness``: for exercises whose questions kill, age or inspect files, the process that asks
   them, forked before any student cell runs and out of the student's reach; it signs what it saw.
3. ``judge``: the hidden checks (``teacher/exercises/<name>/judge.py``) compare those answers with
   the solution's answers to the same freshly drawn questions; ``judge_process`` runs them in a
   limited process of their own (no network, no file but the answers), each check in a forked
   child with memory and CPU limits, so that no answer can stop or slow the grading run.
4. ``report``: the gradebook CSV (a status per student and exercise) and a feedback file per student.

``pipeline`` joins them (``grade_notebook``, ``grade_class``); ``records`` holds the dataclasses
passed between steps; ``paths`` says where the course's parts are; ``release`` builds the copy
of the course handed to students (``course_lib`` whole, nothing of ``teacher/``).
``python -m teacher.grading --help`` (or ``./course grade``) is the command line.
"""

from teacher.grading.pipeline import grade_class, grade_notebook, grade_submissions
from teacher.grading.records import CheckResult, GradeReport, Status, Submission
from teacher.grading.sandbox import Limits, sandbox_available

__all__ = [
    "CheckResult",
    "GradeReport",
    "Limits",
    "Status",
    "Submission",
    "grade_class",
    "grade_notebook",
    "grade_submissions",
    "sandbox_available",
]
