"""Asks a notebook of exercise 5 the judge's questions (runs inside the sandbox, untrusted)."""

import torch
from torch import nn


class _Plain(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8))
        self.head = nn.Linear(8, 3)


class _Tricky(nn.Module):
    """Names that contain the wrappers' words without being wrappers."""

    def __init__(self):
        super().__init__()
        self.submodule = nn.Linear(6, 8)
        self.module_list = nn.ModuleList([nn.Linear(8, 8)])
        self.encoder = nn.Sequential()
        self.encoder.add_module("module", nn.Linear(8, 8))
        self.orig_mod_head = nn.Linear(8, 3)


def _model(kind, seed):
    torch.manual_seed(seed)
    return {"plain": _Plain, "tricky": _Tricky}[kind]()


def answer(questions, ask):
    for question in questions:
        saved = _model(question["model"], question["seed"]).state_dict()
        prefix = "".join(question["prefixes"])
        wrapped = {prefix + key: value for key, value in saved.items()}
        model = _model(question["model"], question["seed"] + 1)
        ok, _ = ask.call(question["id"], "load_unwrapped", model, wrapped)
        if ok:
            ask.save_tensors(question["id"], model.state_dict())
