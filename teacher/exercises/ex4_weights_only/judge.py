"""Hidden checks for exercise 4 (a checkpoint that loads under weights_only=True).

Every file the student's conversion produced is loaded here with ``weights_only=True`` (never
otherwise) and compared, type and value, with the solution's conversion of the same checkpoint.
"""

import torch

from teacher.grading.judge import points


def questions(rng):
    return [{"id": f"q{i}", "seed": rng.randrange(2**31)} for i in range(2)]


def _difference(mine, expected, where="checkpoint"):
    """The first place where two loaded objects differ (type, keys or value), or None."""
    if type(mine) is not type(expected):
        return f"{where} is a {type(mine).__name__}, expected a {type(expected).__name__}"
    if isinstance(expected, torch.Tensor):
        if mine.dtype != expected.dtype or mine.shape != expected.shape:
            return f"{where} is a {mine.dtype} tensor of shape {tuple(mine.shape)}: keep the dtype and shape"
        return None if torch.equal(mine, expected) else f"{where} has other values"
    if isinstance(expected, dict):
        if set(mine) != set(expected):
            return f"{where} has keys {sorted(map(str, mine))}: keep every key"
        for key in expected:
            found = _difference(mine[key], expected[key], f"{where}[{key!r}]")
            if found:
                return found
        return None
    if isinstance(expected, (list, tuple)):
        if len(mine) != len(expected):
            return f"{where} has {len(mine)} items, not {len(expected)}"
        for index, (a, b) in enumerate(zip(mine, expected, strict=True)):
            found = _difference(a, b, f"{where}[{index}]")
            if found:
                return found
        return None
    return None if mine == expected else f"{where} has another value"


def _entry(answers, question, key):
    answers.succeeded(question["id"])
    answers.succeeded(f"{question['id']}.{key}")
    return answers.torch_file(f"{question['id']}/{key}.pt")


def _same_entries(student, solution, questions, keys):
    for question in questions:
        for key in keys:
            found = _difference(
                _entry(student, question, key), _entry(solution, question, key), key
            )
            assert found is None, found


@points(1)
def test_whole_checkpoint_loads_with_weights_only(student, solution, questions):
    for question in questions:
        student.succeeded(question["id"])
        student.succeeded(f"{question['id']}.whole")
        loaded = student.torch_file(f"{question['id']}/checkpoint.pt")
        assert isinstance(loaded, dict), "return a dict, like the checkpoint you were given"
        expected = solution.torch_file(f"{question['id']}/checkpoint.pt")
        assert set(loaded) == set(expected), (
            f"the checkpoint has keys {sorted(map(str, loaded))}: convert every entry, drop none"
        )


@points(1)
def test_numpy_numbers_and_arrays_converted(student, solution, questions):
    _same_entries(student, solution, questions, ["loss", "best_loss", "history", "steps", "epoch"])


@points(1)
def test_python_objects_converted_as_specified(student, solution, questions):
    _same_entries(student, solution, questions, ["saved_at", "config", "data_dir"])


@points(1)
def test_nested_state_converted_and_tensors_kept(student, solution, questions):
    _same_entries(student, solution, questions, ["numpy_rng", "model_state_dict"])
