"""Asks a notebook of exercise 3 the judge's questions (runs inside the sandbox, untrusted)."""

import torch
from torch import nn


def _mlp(sizes, seed):
    torch.manual_seed(seed)
    layers = []
    for index, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:], strict=False)):
        if index:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(fan_in, fan_out))
    return nn.Sequential(*layers)


def _describe(report):
    """The report as plain JSON that keeps what the checks look at: types and order."""
    if not isinstance(report, dict):
        return {"type": type(report).__name__}
    described = {"type": "dict"}
    for key in ("loaded", "skipped"):
        value = report.get(key)
        items = [str(v) for v in value] if isinstance(value, (list, tuple, set)) else None
        described[key] = {"type": type(value).__name__, "items": items}
    return described


def answer(questions, ask):
    for question in questions:
        source = _mlp(question["source"], question["seed"])
        target = _mlp(question["target"], question["seed"] + 1)
        state = dict(source.state_dict())
        for name in question["drop"]:
            del state[name]
        for name, shape in question["extra"].items():
            state[name] = torch.ones(shape)
        ok, report = ask.call(question["id"], "load_matching_weights", target, state)
        # The model's weights after the call, whatever it did: the judge compares them.
        ask.save_tensors(question["id"], target.state_dict())
        if ok:
            ask.save_json(f"{question['id']}.report", _describe(report))
