"""Small models and manifest edits shared by the manager's tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from course_lib.manager.files import MANIFEST_NAME


def tiny(seed=0):
    """A one-weight linear model and its optimizer."""
    torch.manual_seed(seed)
    model = nn.Linear(2, 1)
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def mark(model, value):
    """Write ``value`` into every weight, so that a loaded model tells which save it came from."""
    with torch.no_grad():
        model.weight.fill_(float(value))


def weight(model):
    return float(model.weight.detach().flatten()[0])


def tamper(folder: Path, change) -> None:
    """Edit a folder's manifest.json by hand, as a person or a tool might."""
    document = json.loads((folder / MANIFEST_NAME).read_text())
    change(document)
    (folder / MANIFEST_NAME).write_text(json.dumps(document))
