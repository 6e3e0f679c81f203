"""Everything of the course a student does not get: the grader and the hidden checks.

``teacher/grading`` is the sandboxed grading pipeline (``./course grade``), ``teacher/exercises``
holds per exercise the hidden checks (``judge.py``) and the questions put to a notebook
(``answer.py``). ``./course release`` copies ``course_lib`` whole and leaves this folder out.
"""
