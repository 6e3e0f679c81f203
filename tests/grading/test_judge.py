"""Step 3: the judge reads answers written by untrusted code defensively, and scores by points."""

from __future__ import annotations

import json
import os

import pytest
import torch

from teacher.grading.judge import AnswerMissing, Answers, load_exercise
from teacher.grading.records import CheckResult


def test_answers_refuse_links_oversized_and_damaged_files(tmp_path):
    secret = tmp_path / "secret.json"
    secret.write_text('{"teacher": "only"}')
    answers_dir = tmp_path / "answers"
    answers_dir.mkdir()
    os.symlink(secret, answers_dir / "q0.json")
    (answers_dir / "q1.json").write_text("{not json")
    (answers_dir / "q2.safetensors").write_bytes(b"\x00" * 100)
    with open(answers_dir / "q3.json", "wb") as handle:
        handle.truncate((64 << 20) + 1)
    answers = Answers(answers_dir)
    with pytest.raises(AnswerMissing, match="symbolic link"):
        answers.json("q0")
    with pytest.raises(AnswerMissing, match="not valid JSON"):
        answers.json("q1")
    with pytest.raises(AnswerMissing, match="cannot be read"):
        answers.tensors("q2")
    with pytest.raises(AnswerMissing, match="larger than 64 MB"):
        answers.json("q3")
    with pytest.raises(AnswerMissing, match="gave no answer"):
        answers.json("q4")


def test_a_raised_function_is_reported_with_its_own_message(tmp_path):
    (tmp_path / "q0.raised.json").write_text(
        json.dumps({"type": "KeyError", "mro": ["KeyError"], "message": "KeyError: '0.bias'"})
    )
    answers = Answers(tmp_path)
    with pytest.raises(AnswerMissing, match="your code raised KeyError: '0.bias'"):
        answers.succeeded("q0")
    with pytest.raises(AnswerMissing, match="your code raised KeyError"):
        answers.tensors("q0")


def test_torch_answers_load_weights_only_and_never_run_code(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('x')",))

    torch.save({"x": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(AnswerMissing):
        Answers(tmp_path).torch_file("evil.pt")
    assert not marker.exists()


def test_each_check_is_worth_its_points_and_keeps_its_full_message(tmp_path):
    exercise = load_exercise("ex3_partial_loading")
    assert exercise.max_score == 4 and len(exercise.checks) == 4
    questions = exercise.questions(7)
    assert questions == exercise.questions(7) != exercise.questions(8)
    empty = tmp_path / "empty"
    empty.mkdir()
    results = exercise.judge(Answers(empty), Answers(empty, "the solution"), questions)
    assert all(isinstance(r, CheckResult) and r.points == 0 for r in results)
    assert all("gave no answer" in r.message for r in results)


def test_every_exercise_has_questions_checks_and_an_asker():
    from submissions import EXERCISES

    from teacher.grading.collect import EXERCISES_DIR, known_exercises

    assert known_exercises() == EXERCISES
    for name in EXERCISES:
        exercise = load_exercise(name)
        assert exercise.max_score >= 4, name
        assert json.dumps(exercise.questions(1)), name  # plain JSON, as the sandbox receives it
        assert (EXERCISES_DIR / name / "answer.py").is_file()


def test_links_in_the_middle_of_an_answer_path_are_refused(tmp_path):
    host = tmp_path / "host"
    (host / "checkpoints").mkdir(parents=True)
    answers_dir = tmp_path / "answers"
    answers_dir.mkdir()
    (answers_dir / "retention").symlink_to(host)
    with pytest.raises(AnswerMissing, match="symbolic link"):
        Answers(answers_dir).listing("retention/checkpoints")
    with pytest.raises(AnswerMissing, match="not a name inside"):
        Answers(answers_dir).listing("../host")


def test_compressed_and_large_json_answers_are_refused(tmp_path):
    import zipfile

    torch.save({"w": torch.zeros(10)}, tmp_path / "plain.pt")
    with (
        zipfile.ZipFile(tmp_path / "plain.pt") as src,
        zipfile.ZipFile(tmp_path / "bomb.pt", "w", zipfile.ZIP_DEFLATED) as dst,
    ):
        for item in src.infolist():
            dst.writestr(item.filename, src.read(item))
    answers = Answers(tmp_path)
    assert torch.equal(answers.torch_file("plain.pt")["w"], torch.zeros(10))
    with pytest.raises(AnswerMissing, match="compressed"):
        answers.torch_file("bomb.pt")
    (tmp_path / "big.json").write_text("[" + "0," * (1 << 20) + "0]")
    with pytest.raises(AnswerMissing, match="larger than 1 MB"):
        answers.json("big")
