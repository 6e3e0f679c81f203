"""Asks a notebook of exercise 2 the judge's questions (runs inside the sandbox, untrusted)."""

import torch
from torch import nn


class _Net(nn.Module):
    """BatchNorm and dropout, so that exporting in training mode gives wrong answers."""

    def __init__(self, features, hidden, classes):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(features, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Dropout(0.5),
            nn.Linear(hidden, classes),
        )  # fmt: skip

    def forward(self, x):
        return self.body(x)


def answer(questions, ask):
    for question in questions:
        torch.manual_seed(question["seed"])
        model = _Net(question["features"], question["hidden"], question["classes"])
        model.train()
        model(torch.randn(32, question["features"]))  # non-trivial BatchNorm running statistics
        example = torch.randn(question["example_batch"], question["features"])
        path = ask.folder(question["id"]) / "model.onnx"
        ok, error = ask.call(question["id"], "export_and_verify", model, example, path)
        if ok:
            value = float(error) if isinstance(error, (int, float)) else repr(error)
            kind = "float" if isinstance(error, float) else type(error).__name__  # np.float64 too
            ask.save_json(f"{question['id']}.returned", {"type": kind, "value": value})
