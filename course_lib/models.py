"""The chapter's models, made in code (no downloads)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "ConditionalModel",
    "MyModel",
    "SmallCNN",
    "make_mlp",
]


def make_mlp(in_features: int = 10, hidden: int = 20, out_features: int = 5) -> nn.Sequential:
    """The chapter's 6.3.1 model: ``Sequential(Linear(10, 20), ReLU(), Linear(20, 5))``.

    Taught in notebooks/05_data_parallel.ipynb.
    """
    return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, out_features))


class MyModel(nn.Module):
    """The chapter's 6.3.2 model: one ``Linear(10, 5)``.

    Taught in notebooks/02_whole_model.ipynb.
    """

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(10, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class ConditionalModel(nn.Module):
    """The chapter's 6.3.6 model, fixed so that ``torch.jit.script`` accepts it.

    The chapter writes ``forward(self, x, use_relu=True)``; TorchScript assumes an unannotated
    argument is a Tensor, so the default ``True`` does not type-check. ``use_relu: bool`` fixes it.

    Taught in notebooks/06_torchscript.ipynb.
    """

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(10, 20)
        self.fc2 = nn.Linear(20, 5)

    def forward(self, x: torch.Tensor, use_relu: bool = True) -> torch.Tensor:
        x = self.fc1(x)
        if use_relu:
            x = torch.relu(x)
        return self.fc2(x)


class SmallCNN(nn.Module):
    """A small image classifier on 3x32x32 inputs, standing in for the chapter's 3x224x224 model.

    It has BatchNorm (buffers in the state_dict) and dropout (train/eval differ), the two things
    that make ``model.eval()`` matter.

    Taught in notebooks/06_torchscript.ipynb.
    """

    def __init__(self, num_classes: int = 10, dropout: float = 0.2) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, kernel_size=3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(32 * 4 * 4, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
