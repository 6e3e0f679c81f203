"""Hidden checks for exercise 1 (checkpoint management), run by the grader outside the sandbox.

The sandbox runs the student's ``SimpleCheckpointManager`` through each question's steps, asked by
the grader's witness (which also ages files and plants the malicious checkpoint itself); the
checks then read the folders' listings as the witness recorded them and the values the manager's
methods returned.
"""

import torch

from teacher.grading.judge import points


def _epochs(rng, count):
    """Distinct epochs that cross a power of ten, so that sorting names as text goes wrong."""
    low = sorted(rng.sample(range(1, 10), count - 2))
    return low + sorted(rng.sample(range(10, 120), 2))


def questions(rng):
    keep = rng.randint(2, 3)
    retention = _epochs(rng, 5)
    times = sorted(rng.sample(range(1, 60), 3))
    first = rng.randint(1, 50)
    marker = f"PAYLOAD_RAN_{rng.randrange(10**9)}"
    return [
        {"id": "retention", "seed": rng.randrange(2**31), "max_to_keep": keep,
         "steps": [["save", e] for e in retention] + [["epochs"]]},
        {"id": "times", "seed": rng.randrange(2**31), "max_to_keep": 5,
         "steps": [["save", e] for e in times] + [["age_oldest"], ["load_latest"]]},
        {"id": "failure", "seed": rng.randrange(2**31), "max_to_keep": 3,
         "steps": [["save", first], ["save_unpicklable", first + 1], ["load_latest"]]},
        {"id": "malicious", "seed": rng.randrange(2**31), "max_to_keep": 3,
         "steps": [["save", first], ["load_latest"], ["plant_payload", first + 1, marker],
                   ["load_latest"]]},
        {"id": "empty", "seed": rng.randrange(2**31), "max_to_keep": 3,
         "steps": [["load_latest"], ["save", first], ["load_latest"]]},
    ]  # fmt: skip


def _question(questions, qid):
    return next(q for q in questions if q["id"] == qid)


def _started(answers, qid):
    answers.succeeded(f"{qid}.init")


def _step(question, operation):
    return next(i for i, (op, *_) in enumerate(question["steps"]) if op == operation)


def _loaded(answers, question):
    key = f"{question['id']}.{_step(question, 'load_latest')}"
    answers.succeeded(key)
    return answers.json(key)["epoch"], answers.tensors(key)["weights"]


@points(1)
def test_names_and_retention(student, solution, questions):
    question = _question(questions, "retention")
    _started(student, "retention")
    saved = [e for op, *e in question["steps"] if op == "save"]
    key = f"retention.{_step(question, 'epochs')}"
    student.succeeded(key)
    mine = student.witnessed_listing("retention/checkpoints")
    assert mine == solution.witnessed_listing("retention/checkpoints"), (
        f"with max_to_keep={question['max_to_keep']} after saving epochs {[e[0] for e in saved]} "
        f"the folder holds {mine}: keep the newest epochs, named checkpoint_epoch_NNNN.pth"
    )
    assert student.json(key) == solution.json(key), (
        f"epochs() returned {student.json(key)}: the sorted epochs, as integers, read from the names"
    )


@points(1)
def test_latest_by_epoch_not_file_time(student, solution, questions):
    question = _question(questions, "times")
    _started(student, "times")
    epoch, weights = _loaded(student, question)
    expected_epoch, expected_weights = _loaded(solution, question)
    assert epoch == expected_epoch and torch.equal(weights, expected_weights), (
        f"after the oldest file's time was moved into the future, load_latest returned epoch "
        f"{epoch}: pick the highest epoch, whatever the file times say"
    )


@points(1)
def test_failed_save_loses_nothing(student, solution, questions):
    question = _question(questions, "failure")
    _started(student, "failure")
    failing = f"failure.{_step(question, 'save_unpicklable')}"
    assert student.raised(failing) is not None, (
        "saving an object that cannot be pickled should raise"
    )
    mine = student.witnessed_listing("failure/checkpoints")
    assert mine == solution.witnessed_listing("failure/checkpoints"), (
        f"after a failed save the folder holds {mine}: a failed save must leave no file behind "
        "and keep the earlier checkpoint"
    )
    assert _loaded(student, question)[0] == _loaded(solution, question)[0], (
        "after a failed save, load_latest must still return the earlier checkpoint"
    )


@points(1)
def test_refuses_code_in_checkpoints(student, solution, questions):
    question = _question(questions, "malicious")
    _started(student, "malicious")
    marker = next(args[1] for op, *args in question["steps"] if op == "plant_payload")
    assert marker not in student.witnessed_listing("malicious"), (
        "load_latest ran code hidden in a checkpoint: load with weights_only=True (safe_load)"
    )
    assert _loaded(student, question)[0] == _loaded(solution, question)[0], (
        "load_latest must load the good checkpoint before the malicious one appears"
    )
    key = f"malicious.{len(question['steps']) - 1}"
    assert student.raised(key) is not None, (
        "load_latest returned a checkpoint that hides code instead of refusing it"
    )


@points(1)
def test_empty_folder_raises_file_not_found(student, solution, questions):
    question = _question(questions, "empty")
    _started(student, "empty")
    raised = student.raised("empty.0")
    assert raised is not None, "load_latest on an empty folder should raise FileNotFoundError"
    assert "FileNotFoundError" in raised["mro"], (
        f"an empty folder should raise FileNotFoundError, not {raised['type']}"
    )
    # Raising FileNotFoundError always is not the answer: once a checkpoint is saved, it loads.
    key = f"empty.{len(question['steps']) - 1}"
    student.succeeded(key)
    assert student.json(key)["epoch"] == solution.json(key)["epoch"], (
        "after the first save into the empty folder, load_latest must return that checkpoint"
    )
