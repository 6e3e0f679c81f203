"""course_lib.torch_free: an ONNX file run by a real child interpreter in which torch cannot load."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

from course_lib.torch_free import TorchFreeRunError, run_onnx_without_torch


class _TwoInTwoOut(nn.Module):
    """Two inputs, a tuple of two outputs: names and order must survive the round trip."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.fc(x) + y, x.sum(dim=1)


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    torch.manual_seed(0)
    model = _TwoInTwoOut().eval()
    args = (torch.randn(2, 4), torch.randn(2, 3))
    path = tmp_path_factory.mktemp("torch-free") / "two.onnx"
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    batch = torch.export.Dim("batch")
    torch.onnx.export(
        model,
        args,
        path,
        dynamo=True,
        input_names=["x", "y"],
        output_names=["sum", "rowsum"],
        dynamic_shapes={"x": {0: batch}, "y": {0: batch}},
        external_data=False,
        verbose=False,
    )
    return model, path


def test_outputs_match_eager_and_torch_cannot_be_imported(onnx_file):
    model, path = onnx_file
    x, y = torch.randn(5, 4), torch.randn(5, 3)
    run = run_onnx_without_torch(path, [x, y])
    with torch.inference_mode():
        want = model(x, y)
    assert list(run.outputs) == ["sum", "rowsum"]
    for got, expected in zip(run.outputs.values(), want, strict=True):
        np.testing.assert_allclose(got, expected.numpy(), atol=1e-6)
    # The evidence: import torch raised inside the child, and no torch module was ever loaded.
    assert run.torch_import_error.startswith("ModuleNotFoundError: No module named 'torch'")
    assert run.torch_modules_loaded == ()
    assert "without PyTorch" in str(run)


def test_inputs_by_name_in_any_order(onnx_file):
    model, path = onnx_file
    x, y = np.ones((1, 4), np.float32), np.zeros((1, 3), np.float32)
    run = run_onnx_without_torch(path, {"y": y, "x": x})
    with torch.inference_mode():
        want = model(torch.from_numpy(x), torch.from_numpy(y))[0]
    np.testing.assert_allclose(run.outputs["sum"], want.numpy(), atol=1e-6)


def test_wrong_number_of_inputs_names_the_graph_inputs(onnx_file):
    _, path = onnx_file
    with pytest.raises(TorchFreeRunError, match=r"2 input\(s\) \['x', 'y'\], 1 were given"):
        run_onnx_without_torch(path, [np.ones((1, 4), np.float32)])


def test_a_failing_child_reports_onnxruntime_message(onnx_file):
    _, path = onnx_file
    wrong_width = {"x": np.ones((1, 5), np.float32), "y": np.ones((1, 3), np.float32)}
    with pytest.raises(TorchFreeRunError) as failed:
        run_onnx_without_torch(path, wrong_width)
    message = str(failed.value)
    assert "torch-free process failed" in message and "How to fix" in message
    assert "Got invalid dimensions for input: x" in message  # onnxruntime's own words
    assert "^^^" not in message and "Traceback" not in message  # not its frames
    with pytest.raises(TorchFreeRunError, match="no such ONNX file"):
        run_onnx_without_torch(path.with_name("missing.onnx"), [])
