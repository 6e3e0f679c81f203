"""``manager.retention``: the policies as pure functions, against a from-scratch model."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import pytest

from course_lib.manager import Candidate, CheckpointManager, RetentionPolicy, retention_reasons
from course_lib.manager.retention import BestMetric, best_so_far, order_key

_spec = importlib.util.spec_from_file_location(
    "retention_model", Path(__file__).resolve().parent / "helpers" / "retention_model.py"
)
retention_model = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(retention_model)
entry = retention_model.entry
reference_kept = retention_model.reference_kept
random_policy = retention_model.random_policy
random_history = retention_model.random_history


def test_retention_applied_save_by_save_equals_the_policies_on_the_whole_history():
    """200 random sequences through retention_reasons, dropping what it drops, as save() does."""
    rng = random.Random(2024)
    for _ in range(200):
        policy = random_policy(rng)
        history = random_history(rng, rng.randint(1, 25))
        alive: dict[str, Candidate] = {}
        pointer = None
        for i, (epoch, value, protected, is_best) in enumerate(history):
            new = entry(epoch, value, protected)
            alive[new.file] = new
            if is_best:
                pointer = new.file
            reasons = retention_reasons(
                alive.values(),
                best_metric="val_loss",
                keep=[new.file] + ([pointer] if pointer else []),
                **policy,
            )
            alive = {name: e for name, e in alive.items() if reasons[name]}
            expected = reference_kept(history[: i + 1], **policy)
            assert {e.epoch for e in alive.values()} == expected, (policy, history[: i + 1])


def test_policy_arguments_are_checked():
    with pytest.raises(ValueError, match="max_to_keep"):
        CheckpointManager("unused", max_to_keep=0)
    with pytest.raises(ValueError, match="mode"):
        CheckpointManager("unused", mode="lowest")
    with pytest.raises(ValueError, match="format"):
        CheckpointManager("unused", format="pickle")


def test_each_policy_names_its_reason():
    entries = [
        Candidate("a", epoch=0, metrics={"val_loss": 0.1}),
        Candidate("b", epoch=1, metrics={"val_loss": 0.9}, protected=True),
        Candidate("c", epoch=2, metrics={"val_loss": 0.5}),
        Candidate("d", epoch=3, metrics={"val_loss": float("nan")}),
    ]
    reasons = retention_reasons(entries, max_to_keep=1, keep_best=1, keep_every=3, keep=["c"])
    assert reasons == {"a": ["best"], "b": ["protected"], "c": ["every", "kept"], "d": ["latest"]}
    maximise = retention_reasons(entries, max_to_keep=1, keep_best=1, mode="max")
    assert maximise["b"] == ["best", "protected"]


def test_order_is_by_epoch_then_step_never_by_name():
    entries = [Candidate("z", epoch=1, step=5), Candidate("a", epoch=2), Candidate("m", epoch=1)]
    assert [e.file for e in sorted(entries, key=order_key)] == ["m", "z", "a"]


def test_the_best_value_outlives_its_checkpoint_and_follows_a_change_of_metric():
    stored = BestMetric("val_loss", "min", 0.2)
    still_here = [Candidate("x", epoch=5, metrics={"val_loss": 0.7, "acc": 0.6})]
    assert (
        best_so_far(stored, still_here, {"val_loss": 0.4}, best_metric="val_loss", mode="min")
        == stored
    )
    switched = best_so_far(stored, still_here, {"acc": 0.5}, best_metric="acc", mode="max")
    assert switched == BestMetric("acc", "max", 0.6)


def test_a_policy_is_checked_once_where_it_is_made():
    with pytest.raises(ValueError, match="keep_every"):
        RetentionPolicy(keep_every=0)
    policy = RetentionPolicy(max_to_keep=2, keep_best=0)
    assert policy.reasons([Candidate(str(e), epoch=e) for e in range(4)]) == {
        "0": [],
        "1": [],
        "2": ["latest"],
        "3": ["latest"],
    }
