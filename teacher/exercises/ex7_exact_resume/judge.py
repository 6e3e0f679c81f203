"""Hidden checks for exercise 7 (a training run that resumes exactly after SIGKILL).

Inside the sandbox the exercise's training loop runs with the student's ``save`` and ``resume``:
uninterrupted, then killed with SIGKILL at drawn steps by the grader's witness (which the student's
code cannot reach) and resumed each time in a fresh process. Here every kill must be one the
witness recorded, and the final weights it kept must equal, bit for bit, those of the solution's
uninterrupted run.
"""

import json

import torch

from teacher.grading.judge import AnswerMissing, points

STEPS_PER_EPOCH = 8  # 256 samples in batches of 32
STEPS = 6 * STEPS_PER_EPOCH

HINT = (
    "resume must put back everything the next epoch depends on: the model, the optimizer (SGD's "
    "momentum buffers), the scheduler, the epoch to start from, and the Python, NumPy and torch "
    "RNG states (augmentation, shuffling, dropout), all saved by save"
)


def questions(rng):
    seed, first = rng.randrange(2**20), rng.randrange(9, 24)  # one run: every kill compares to it
    return [
        {"id": "straight", "seed": seed, "kill_at": []},
        {"id": "killed_once", "seed": seed, "kill_at": [rng.randrange(9, STEPS - 2)]},
        {"id": "killed_twice", "seed": seed, "kill_at": [first, rng.randrange(first + 9, STEPS - 2)]},
    ]  # fmt: skip


def _tensors(answers, qid):
    """The final weights of question ``qid``'s last run, as the grader's witness kept them."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    answers.succeeded(qid)  # the last run raised: say what
    path = answers.witnessed_file(f"kept/{qid}.safetensors")
    try:
        return load(path.read_bytes())
    except (SafetensorError, ValueError) as exc:
        raise AnswerMissing(f"the tensors answered to {qid} cannot be read ({exc})") from None


def _same_weights(student, solution, qid, what):
    got, expected = _tensors(student, qid), _tensors(solution, "straight")
    assert set(got) == set(expected), f"{what}: the model's state_dict has other keys"
    different = [k for k in expected if not torch.equal(got[k], expected[k])]
    return different


@points(1)
def test_the_uninterrupted_run_trains_as_given(student, solution):
    # Saving nothing leaves the given loop untouched too: the point is for a save that leaves it so.
    assert student.exists("straight/checkpoint.pt"), "save wrote no file at the path it was given"
    different = _same_weights(student, solution, "straight", "the uninterrupted run")
    assert not different, (
        f"the uninterrupted run ended with other weights ({len(different)} tensors differ): save "
        "and resume must not draw random numbers or change the model, the optimizer or the data"
    )


@points(1)
def test_the_checkpoint_loads_with_weights_only(student):
    if not student.exists("straight/checkpoint.pt"):
        student.succeeded("straight")  # it raised: say what
        raise AssertionError("save wrote no file at the path it was given")
    student.torch_file("straight/checkpoint.pt")  # AnswerMissing says why it does not load


def _resumed_after_the_last_checkpoint(student, questions, qid):
    """A run that trains from scratch after the kill would end "bit for bit" right too."""
    question = next(q for q in questions if q["id"] == qid)
    for index, step in enumerate(question["kill_at"]):
        student.succeeded(f"{qid}.run{index}")  # it raised before its kill: say what
        outcome = student.witnessed(f"{qid}.kill_{index}")
        assert outcome == "killed", (
            f"run {index + 1} was not killed at step {step} ({outcome}): the exercise's loop must "
            "reach that step with the notebook's save and resume"
        )
    student.succeeded(qid)
    start = json.loads(student.witnessed_file(f"kept/{qid}.start.json").read_text())
    assert start == question["kill_at"][-1] // STEPS_PER_EPOCH, (
        f"after the kill, resume returned {start!r}: it must return the epoch after the last "
        "one saved (the run must continue, not start again)"
    )


def _resumes_bit_for_bit(student, solution, questions, qid, times):
    """``times``: "once" or "twice", as the question ``qid`` kills the run."""
    _resumed_after_the_last_checkpoint(student, questions, qid)
    different = _same_weights(student, solution, qid, f"killed {times}")
    assert not different, (
        f"killed {times} and resumed each time in a fresh process, the run ended with other "
        f"weights ({len(different)} tensors differ): {HINT}"
    )


@points(2)
def test_resumes_bit_for_bit_after_a_kill(student, solution, questions):
    _resumes_bit_for_bit(student, solution, questions, "killed_once", "once")


@points(2)
def test_resumes_bit_for_bit_after_two_kills(student, solution, questions):
    _resumes_bit_for_bit(student, solution, questions, "killed_twice", "twice")
