"""Hidden checks for exercise 3 (partial loading), run by the grader outside the sandbox."""

import torch

from teacher.grading.judge import points


def questions(rng):
    """Three source/target pairs with random sizes; the later ones miss a key and carry an extra."""
    drawn = []
    for index in range(3):
        fan_in, hidden, classes = rng.randint(3, 9), rng.randint(4, 12), rng.randint(3, 10)
        question = {
            "id": f"q{index}",
            "seed": rng.randrange(2**31),
            "source": [fan_in, hidden, classes],
            "target": [fan_in, hidden, classes + rng.randint(1, 4)],
            "drop": [],
            "extra": {},
        }
        if index:
            question["drop"] = [rng.choice(["0.bias", "0.weight"])]
            extra = rng.choice(["extra", "aux", "old_head", "z_projection"])
            question["extra"] = {f"{extra}.weight": [rng.randint(1, 5)]}
        drawn.append(question)
    return drawn


def _weights(answers, question):
    answers.succeeded(question["id"])
    return answers.tensors(question["id"])


def _report(answers, question):
    answers.succeeded(question["id"])
    report = answers.json(f"{question['id']}.report")
    assert isinstance(report, dict) and report.get("type") == "dict", (
        "load_matching_weights must return a dict with 'loaded' and 'skipped'"
    )
    for key in ("loaded", "skipped"):
        value = report.get(key)
        assert isinstance(value, dict) and value.get("items") is not None, (
            f"the report's {key!r} must be a list of names"
        )
    return report


def _weights_match(student, solution, questions, *, copied: bool, why: str) -> None:
    """The student's model equals the solution's on the weights that were (or were not) copied."""
    for question in questions:
        mine, expected = _weights(student, question), _weights(solution, question)
        loaded = set(_report(solution, question)["loaded"]["items"])
        for name in sorted(loaded if copied else set(expected) - loaded):
            assert name in mine and torch.equal(mine[name], expected[name]), (
                f"{name} {why} (question {question['id']}: source {question['source']}, "
                f"target {question['target']})"
            )


@points(1)
def test_copies_every_fitting_weight(student, solution, questions):
    why = "has the same shape in both models but was not copied"
    _weights_match(student, solution, questions, copied=True, why=why)


@points(1)
def test_leaves_the_rest_untouched(student, solution, questions):
    # Loading nothing leaves everything untouched: this check counts only once weights load.
    why = "has the same shape in both models but was not copied (and copying is the task)"
    _weights_match(student, solution, questions, copied=True, why=why)
    why = "does not fit (other shape, or missing from the checkpoint) and must stay as it was"
    _weights_match(student, solution, questions, copied=False, why=why)


@points(1)
def test_reports_what_it_loaded_and_skipped(student, solution, questions):
    for question in questions:
        mine, expected = _report(student, question), _report(solution, question)
        for key in ("loaded", "skipped"):
            assert set(mine[key]["items"]) == set(expected[key]["items"]), (
                f"the report's {key!r} names the wrong keys (question {question['id']}, which "
                f"drops {question['drop'] or 'nothing'} and adds {list(question['extra']) or 'nothing'})"
            )


@points(1)
def test_report_lists_are_sorted(student, solution, questions):
    for question in questions:
        report, expected = _report(student, question), _report(solution, question)
        for key in ("loaded", "skipped"):
            value = report[key]
            assert value["type"] == "list" and value["items"] == sorted(value["items"]), (
                f"the report's {key!r} must be a sorted list, not {value['type']} in that order"
            )
            # An empty list is sorted, and says nothing: it counts only where nothing happened.
            assert value["items"] or not expected[key]["items"], (
                f"the report's {key!r} is empty (question {question['id']}): list the names"
            )
