"""Hidden checks for exercise 5 (loading checkpoints saved with or without wrappers)."""

import torch

from teacher.grading.judge import points

WRAPPERS = ["module.", "_orig_mod."]


def questions(rng):
    three = [rng.choice(WRAPPERS) for _ in range(3)]
    drawn = [
        {"id": "plain", "model": "plain", "prefixes": []},
        {"id": "data_parallel", "model": "plain", "prefixes": ["module."]},
        {"id": "compiled", "model": "plain", "prefixes": ["_orig_mod."]},
        {"id": "nested", "model": "plain", "prefixes": ["module.", "_orig_mod."]},
        {"id": "nested_reversed", "model": "plain", "prefixes": ["_orig_mod.", "module."]},
        {"id": "nested_three", "model": "plain", "prefixes": three},
        {"id": "tricky", "model": "tricky", "prefixes": [rng.choice(WRAPPERS)]},
    ]
    return [dict(question, seed=rng.randrange(2**31)) for question in drawn]


def _same_weights(student, solution, questions, qid):
    question = next(q for q in questions if q["id"] == qid)
    mine, expected = student.tensors(qid), solution.tensors(qid)
    for name, value in expected.items():
        assert name in mine and torch.equal(mine[name], value), (
            f"a checkpoint saved with prefix {''.join(question['prefixes']) or '(none)'!r} did not "
            f"load {name} into the model"
        )


@points(1)
def test_loads_plain_checkpoints(student, solution, questions):
    _same_weights(student, solution, questions, "plain")


@points(1)
def test_strips_the_ddp_and_data_parallel_prefix(student, solution, questions):
    _same_weights(student, solution, questions, "data_parallel")


@points(1)
def test_strips_compile_and_nested_wrappers(student, solution, questions):
    _same_weights(student, solution, questions, "compiled")
    for qid in ("nested", "nested_reversed", "nested_three"):
        _same_weights(student, solution, questions, qid)


@points(1)
def test_keeps_names_that_merely_contain_the_words(student, solution, questions):
    _same_weights(student, solution, questions, "tricky")
