"""Hidden checks for exercise 3 (partial loading). Each check gets the notebook's namespace."""

from __future__ import annotations

import torch
from torch import nn

MAX_POINTS = 4


def _function(ns):
    fn = ns.get("load_matching_weights")
    assert callable(fn), "load_matching_weights is not defined"
    return fn


def _pair(seed):
    torch.manual_seed(seed)
    source = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 4))
    target = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 2))
    return source, target


def check_copies_every_fitting_weight(ns, workdir):
    source, target = _pair(1)
    _function(ns)(target, source.state_dict())
    for name in ("0.weight", "0.bias"):
        assert torch.equal(target.state_dict()[name], source.state_dict()[name]), (
            f"{name} has the same shape in both models but was not copied"
        )


def check_leaves_the_rest_untouched(ns, workdir):
    source, target = _pair(2)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    _function(ns)(target, source.state_dict())
    for name in ("2.weight", "2.bias"):
        assert torch.equal(target.state_dict()[name], before[name]), (
            f"{name} does not fit (different shape) and must stay as it was"
        )


def check_tolerates_unexpected_and_missing_keys(ns, workdir):
    source, target = _pair(3)
    state = dict(source.state_dict())
    state["extra.weight"] = torch.ones(3)
    del state["0.bias"]
    report = _function(ns)(target, state)
    assert report["loaded"] == ["0.weight"], (
        f"loaded should be ['0.weight'], got {report['loaded']}"
    )
    assert report["skipped"] == ["2.bias", "2.weight", "extra.weight"], (
        f"skipped should list the mis-shaped and unknown keys, sorted; got {report['skipped']}"
    )


def check_report_is_sorted_lists(ns, workdir):
    source, target = _pair(4)
    report = _function(ns)(target, source.state_dict())
    assert set(report) >= {"loaded", "skipped"}, "the report needs 'loaded' and 'skipped'"
    assert all(
        isinstance(report[k], list) and report[k] == sorted(report[k])
        for k in ("loaded", "skipped")
    ), "'loaded' and 'skipped' must be sorted lists"


CHECKS = [
    (check_copies_every_fitting_weight, 1),
    (check_leaves_the_rest_untouched, 1),
    (check_tolerates_unexpected_and_missing_keys, 1),
    (check_report_is_sorted_lists, 1),
]
