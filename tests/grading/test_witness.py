"""Issue 20 item 7: the witness's records verify only as it wrote them, with this job's key."""

from __future__ import annotations

import json
import shutil
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from teacher.grading.judge import AnswerMissing, Answers
from teacher.grading.witness import GRADER_KEY_NAME, KEY_NAME, MANIFEST_NAME, prepare, sign

EXERCISES = Path(__file__).resolve().parents[2] / "teacher" / "exercises"


def _job(tmp_path, exercise="ex1_checkpoint_manager"):
    for folder in ("job", "answers", "home"):
        (tmp_path / folder).mkdir()
    shutil.copyfile(EXERCISES / exercise / "answer.py", tmp_path / "job" / "answer.py")
    prepare(tmp_path)
    return tmp_path / "answers"


def _manifest(answers_dir, key, records, files=None):
    body = json.dumps({"records": records, "files": files or {}})
    (answers_dir / MANIFEST_NAME).write_text(json.dumps({"body": body, "mac": sign(key, body)}))


def test_prepare_hands_the_key_to_the_witness_and_keeps_it_for_the_judge(tmp_path):
    answers_dir = _job(tmp_path)
    handed = (answers_dir / KEY_NAME).read_text()
    assert handed == (tmp_path / GRADER_KEY_NAME).read_text() and len(handed) == 64
    assert (tmp_path / "job" / "witness.py").is_file()
    assert Answers(answers_dir).key == handed


@pytest.mark.parametrize("exercise", ["ex2_onnx_export", "ex3_partial_loading"])
def test_an_exercise_without_a_witness_gets_no_key(tmp_path, exercise):
    answers_dir = _job(tmp_path, exercise)
    assert not (answers_dir / KEY_NAME).exists() and not (tmp_path / GRADER_KEY_NAME).exists()
    assert not (tmp_path / "job" / "witness.py").exists()
    assert Answers(answers_dir).key is None


class _FinalizedCycle:
    """Garbage whose collection runs Python code: the moment another thread can take over."""

    def __init__(self):
        self.me = self

    def __del__(self):
        sum(range(50))


def test_jobs_prepared_in_parallel_threads_do_not_crash_the_grader(tmp_path):
    """``--jobs 2`` prepares two jobs at once. CPython 3.11's AST constructor keeps its recursion
    depth per interpreter, not per thread (gh-106905): two ``ast.parse`` calls that interleave
    (a garbage collection in one runs Python code, and the other thread takes over) fail with
    "SystemError: AST constructor recursion depth mismatch". In CI that crashed the grading of the
    ex7 solution (0/6); this loop hit it about 30 times a second before the parse was serialized."""
    jobs = []
    for i in range(4):
        (tmp_path / str(i)).mkdir()
        _job(tmp_path / str(i), "ex7_exact_resume")
        jobs.append(tmp_path / str(i))
    errors: list[BaseException] = []

    def prepare_again_and_again(job):
        end = time.monotonic() + 2
        while time.monotonic() < end and not errors:
            _FinalizedCycle()
            try:
                prepare(job)
            except Exception as exc:  # noqa: BLE001 - any failure is the finding
                errors.append(exc)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads take turns as often as they can
    try:
        threads = [threading.Thread(target=prepare_again_and_again, args=(j,)) for j in jobs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert not errors, errors[:2]


def test_records_signed_with_the_key_are_read_and_forged_ones_refused(tmp_path):
    answers_dir = _job(tmp_path)
    key = (tmp_path / GRADER_KEY_NAME).read_text()
    _manifest(answers_dir, key, {"listing:q": ["a.pth"]})
    assert Answers(answers_dir).witnessed_listing("q") == ["a.pth"]
    # The student's code writes its own manifest: without the key, its signature is wrong.
    _manifest(answers_dir, "0" * 64, {"listing:q": ["b.pth"]})
    with pytest.raises(AnswerMissing, match="no record"):
        Answers(answers_dir).witnessed_listing("q")
    (answers_dir / MANIFEST_NAME).write_text(json.dumps({"body": "{}", "mac": "x"}))
    with pytest.raises(AnswerMissing, match="no record"):
        Answers(answers_dir).witnessed("anything")


def test_a_kept_file_changed_afterwards_is_refused(tmp_path):
    import hashlib

    answers_dir = _job(tmp_path)
    key = (tmp_path / GRADER_KEY_NAME).read_text()
    kept = answers_dir / "kept" / "q" / "first.pt"
    kept.parent.mkdir(parents=True)
    torch.save({"step": 0}, kept)
    digest = hashlib.sha256(kept.read_bytes()).hexdigest()
    _manifest(answers_dir, key, {"kept:kept/q/first.pt": True}, {"kept/q/first.pt": digest})
    assert Answers(answers_dir).torch_file("kept/q/first.pt", witnessed=True) == {"step": 0}
    torch.save({"step": 1}, kept)  # what a student's process would do after the witness kept it
    with pytest.raises(AnswerMissing, match="changed after"):
        Answers(answers_dir).torch_file("kept/q/first.pt", witnessed=True)


def test_the_judge_process_verifies_with_the_key_it_is_sent(tmp_path):
    """The key travels in the request: the judge process sees no file beside the answers."""
    answers_dir = _job(tmp_path)
    key = (tmp_path / GRADER_KEY_NAME).read_text()
    _manifest(answers_dir, key, {"listing:q": []})
    answers = Answers(answers_dir)
    moved = tmp_path.parent / f"{tmp_path.name}-moved"
    shutil.copytree(answers_dir, moved)  # no key file beside this copy
    again = Answers.from_description(moved, answers.describe())
    assert again.witnessed_listing("q") == []
    assert Answers.from_description(moved, {"who": "x"}).key == ""
    with pytest.raises(AnswerMissing):
        Answers.from_description(moved, {"who": "x"}).witnessed_listing("q")
