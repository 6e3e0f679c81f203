"""Hidden checks for exercise 2 (ONNX export). Each check gets the notebook's namespace."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

MAX_POINTS = 4
_exported: dict[str, object] = {}


class _Net(nn.Module):
    """BatchNorm and dropout, so that exporting in training mode gives wrong answers."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(6, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Dropout(0.5), nn.Linear(12, 3)
        )

    def forward(self, x):
        return self.body(x)


def _export(ns, workdir):
    """Export once and share it between the checks (the exporter takes seconds)."""
    if "path" not in _exported:
        fn = ns.get("export_and_verify")
        assert callable(fn), "export_and_verify is not defined"
        torch.manual_seed(0)
        model = _Net()
        model.train()
        model(torch.randn(32, 6))  # give BatchNorm non-trivial running statistics
        path = workdir / "graded.onnx"
        _exported.update(model=model, path=path, error=fn(model, torch.randn(4, 6), path))
    return _exported


def _run(path, x):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    return out


def check_writes_one_valid_file(ns, workdir):
    import onnx

    path = _export(ns, workdir)["path"]
    assert path.exists(), f"no file at {path}"
    assert not path.with_name(path.name + ".data").exists(), (
        "weights went to a .onnx.data sidecar: export one self-contained file"
    )
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def check_batch_is_dynamic(ns, workdir):
    path = _export(ns, workdir)["path"]
    for batch in (1, 7, 16):
        out = _run(path, torch.randn(batch, 6))
        assert out.shape == (batch, 3), (
            f"batch {batch} gave output shape {out.shape}: make the batch dimension dynamic"
        )


def check_matches_the_model_in_eval_mode(ns, workdir):
    exported = _export(ns, workdir)
    model = exported["model"].eval()
    x = torch.randn(9, 6)
    with torch.no_grad():
        expected = model(x).numpy()
    got = _run(exported["path"], x)
    worst = float(np.abs(got - expected).max())
    assert worst < 1e-4, (
        f"onnxruntime differs from the model in eval mode by {worst:.2e}: export after model.eval()"
    )


def check_returns_the_error_as_float(ns, workdir):
    error = _export(ns, workdir)["error"]
    assert isinstance(error, float), f"return a Python float, not {type(error).__name__}"
    assert 0 <= error < 1e-4, f"returned error {error!r} is not a small non-negative difference"


CHECKS = [
    (check_writes_one_valid_file, 1),
    (check_batch_is_dynamic, 1),
    (check_matches_the_model_in_eval_mode, 1),
    (check_returns_the_error_as_float, 1),
]
