"""The models every export path is checked on (shared by test_export and test_onnx_export)."""

from __future__ import annotations

import torch

from course_lib.models import ConditionalModel, SmallCNN, make_mlp


def trained_cnn() -> SmallCNN:
    """A SmallCNN whose BatchNorm has non-trivial running statistics (as after training)."""
    torch.manual_seed(1)
    model = SmallCNN().train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 3, 32, 32) * 2 + 0.5)
    return model.eval()


MODELS = {
    "mlp": (make_mlp, (10,)),
    "cnn": (trained_cnn, (3, 32, 32)),
    "conditional": (ConditionalModel, (10,)),
}
