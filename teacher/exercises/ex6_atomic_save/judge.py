"""Hidden checks for exercise 6 (a durable atomic save that survives being killed).

Inside the sandbox the grader's witness has the student's ``atomic_save`` killed with SIGKILL
part-way through saves; here every copy of the file the witness kept after a kill must load
(``weights_only``) as one whole checkpoint, the old one or a new one, never a torn or missing
file, and a save that is not killed must write the new checkpoint.
"""

import torch

from teacher.grading.judge import AnswerMissing, points

NUMEL = 4_000_000  # 16 MB: a save takes long enough for a kill to land inside it


def _state(seed, step, numel):
    generator = torch.Generator().manual_seed(seed * 1000 + step)
    return {"step": step, "weights": torch.randn(numel, generator=generator)}


def questions(rng):
    return [
        {"id": "basic", "kind": "basic", "seed": rng.randrange(2**20), "numel": 1000},
        {"id": "unpicklable", "kind": "unpicklable", "seed": rng.randrange(2**20), "numel": 1000},
        {"id": "killed", "kind": "kills", "seed": rng.randrange(2**20), "numel": NUMEL,
         "kill_at": [round(rng.uniform(0.02, 0.7), 3) for _ in range(6)]},
    ]  # fmt: skip


def _question(questions, qid):
    return next(q for q in questions if q["id"] == qid)


def _is_state(loaded, question, steps):
    if not isinstance(loaded, dict) or loaded.get("step") not in steps:
        return False
    expected = _state(question["seed"], loaded["step"], question["numel"])
    weights = loaded.get("weights")
    return isinstance(weights, torch.Tensor) and torch.equal(weights, expected["weights"])


@points(1)
def test_saves_a_file_that_loads(student, questions):
    question = _question(questions, "basic")
    student.succeeded("basic.first")
    loaded = student.torch_file("kept/basic/first.pt", witnessed=True)
    assert _is_state(loaded, question, {0}), "the saved file does not hold what was saved"


@points(2)
def test_survives_being_killed_mid_save(student, questions):
    question = _question(questions, "killed")
    student.succeeded("killed.first")
    for index in range(len(question["kill_at"])):
        outcome = student.witnessed(f"killed.kill_{index}")
        if outcome != "killed":
            raise AssertionError(
                f"save {index + 2} was not killed mid-save ({outcome}): it wrote nothing into the "
                "checkpoint's folder within 10 s, or the notebook's process was gone"
            )
        try:
            loaded = student.torch_file(f"kept/killed/after_kill_{index}.pt", witnessed=True)
        except AnswerMissing as exc:
            raise AssertionError(
                f"after kill {index + 1} the file was missing or torn ({exc}): write a temporary "
                "file, fsync it, then os.replace it onto the target"
            ) from None
        assert _is_state(loaded, question, set(range(index + 2))), (
            f"after kill {index + 1} the file holds neither the old checkpoint nor a new one"
        )
    last = len(question["kill_at"]) + 1
    loaded = student.torch_file("kept/killed/last.pt", witnessed=True)
    assert _is_state(loaded, question, {last}), (
        "after the kills, a save that was not interrupted did not write the new checkpoint"
    )


@points(1)
def test_failed_save_keeps_the_old_file_and_no_temp(student, questions):
    question = _question(questions, "unpicklable")
    student.succeeded("unpicklable.first")
    assert student.raised("unpicklable.bad") is not None, (
        "saving an object that cannot be pickled should raise"
    )
    kept = student.torch_file("kept/unpicklable/after_failure.pt", witnessed=True)
    assert _is_state(kept, question, {0}), "a failed save damaged the file that was there before"
    left = [name for name in student.witnessed_listing("unpicklable") if name != "model.pt"]
    assert not left, f"a failed save left {left} behind: remove the temporary file when it fails"
