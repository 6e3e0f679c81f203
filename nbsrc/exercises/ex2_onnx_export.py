# %% [markdown]
# # Exercise 2: export a trained model to ONNX and verify it
#
# The chapter's second exercise, done as chapter 6.3.7 teaches it with today's exporter.
#
# **Your task.** Complete `export_and_verify(model, example_input, path)` so that it
#
# 1. exports `model` to a single, self-contained ONNX file at `path` (no `.onnx.data` sidecar),
#    with the **batch dimension dynamic**, so that the file accepts any batch size;
# 2. exports the model in **evaluation mode** (dropout off, BatchNorm using its running statistics);
# 3. checks the file with `onnx.checker.check_model`;
# 4. runs it with onnxruntime (CPU) at batch sizes 1 and 5 and compares with the PyTorch model;
# 5. returns the largest absolute difference it saw, as a Python `float`.
#
# Run all cells; the last one checks your work. The grader runs the file at other batch sizes too.

# %%
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # the exporter is chatty
warnings.filterwarnings("ignore", category=FutureWarning)  # and warns about its own internals


# %%
def export_and_verify(model: nn.Module, example_input: torch.Tensor, path) -> float:
    """Export model to ONNX at path with a dynamic batch; return the max |onnxruntime - torch|."""
    # BEGIN SOLUTION
    model = model.eval()
    batch = torch.export.Dim("batch")
    torch.onnx.export(
        model,
        (example_input,),
        str(path),
        dynamo=True,
        dynamic_shapes={"x": {0: batch}},
        external_data=False,
        verbose=False,
    )
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    worst = 0.0
    for batch_size in (1, 5):
        x = torch.randn(batch_size, *example_input.shape[1:])
        with torch.no_grad():
            expected = model(x).numpy()
        (actual,) = session.run(None, {input_name: x.numpy()})
        worst = max(worst, float(np.abs(actual - expected).max()))
    return worst
    # END SOLUTION


# %% [markdown]
# ## Try it on a small CNN with BatchNorm and dropout

# %%
from course_lib.models import SmallCNN

torch.manual_seed(0)
cnn = SmallCNN()
onnx_file = Path("scratch") / "ex2_cnn.onnx"
onnx_file.parent.mkdir(exist_ok=True)
error = export_and_verify(cnn, torch.randn(2, 3, 32, 32), onnx_file)
print("max abs error below 1e-4:", error < 1e-4)

# %% [markdown]
# ## Self-check

# %%
assert isinstance(error, float) and error < 1e-4, error
session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
(out,) = session.run(None, {session.get_inputs()[0].name: np.zeros((3, 3, 32, 32), np.float32)})
assert out.shape == (3, 10), "the batch dimension is not dynamic"
print("self-check passed")
