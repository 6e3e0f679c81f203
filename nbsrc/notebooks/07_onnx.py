# %% [markdown]
# # 6.3.7 ONNX export
#
# ONNX is an open file format for networks: a graph of standard operators plus the weights. An
# ONNX file runs without PyTorch, in onnxruntime (Python, C, C++, Java, JavaScript, mobile),
# TensorRT and others. Prerequisite: `06_torchscript`. Deeper:
# [07b_onnx_latency](07b_onnx_latency.ipynb) (the exporter's messages, verification failures, a
# process that cannot import torch, and how fast each format runs).
#
# The chapter's call on today's PyTorch, on the CPU (onnxruntime's provider here). The exporter's
# progress lines, traceback and warnings are captured:

# %%
from course_lib import notebook

device, workdir = notebook.start("6.3.7")

import onnx
import onnxruntime as ort
import torch
from IPython.utils.capture import capture_output

from course_lib.export import onnx_export
from course_lib.models import SmallCNN

model = SmallCNN().eval()
example_input = torch.randn(1, 3, 224, 224)
with capture_output():
    torch.onnx.export(model, example_input, workdir / "model.onnx", opset_version=11,
                      input_names=["input"], output_names=["output"],
                      dynamic_axes={"input": {0: "batch_size"}, "output": {0: "batch_size"}})  # fmt: skip
written = onnx.load(str(workdir / "model.onnx"), load_external_data=False)
print("opset:", written.opset_import[0].version, sorted(p.name for p in workdir.iterdir()))

# %% [markdown]
# Opset 18, not 11 (it could not convert down), and **two files**: the weights went to
# `model.onnx.data` (today's default, `external_data=True`). Copy only `model.onnx` to a server
# and it **fails, on purpose**:

# %% tags=["raises-exception"]
(workdir / "deploy").mkdir()
(workdir / "deploy" / "model.onnx").write_bytes((workdir / "model.onnx").read_bytes())
ort.InferenceSession(str(workdir / "deploy" / "model.onnx"))

# %% [markdown]
# ## The current call, then the helper
#
# `dynamic_shapes` replaces `dynamic_axes` (keyed by `forward`'s argument `x`; the example batch
# is 2, since a size-1 dimension is fixed) and `external_data=False` writes one file; then run it
# at batch 13. `onnx_export.export_onnx` wraps the call, and `verify_onnx` checks the file and
# compares it with PyTorch at several batch sizes:

# %%
args, shapes = (example_input.repeat(2, 1, 1, 1),), {"x": {0: torch.export.Dim("batch")}}
with capture_output():
    torch.onnx.export(model, args, workdir / "one.onnx", dynamic_shapes=shapes, external_data=False)
x13 = torch.randn(13, 3, 224, 224)
(out,) = ort.InferenceSession(str(workdir / "one.onnx")).run(None, {"x": x13.numpy()})
print("batch 13 matches:", torch.allclose(torch.from_numpy(out), model(x13), atol=1e-4))

onnx_file = onnx_export.export_onnx(model, example_input, workdir / "model_current.onnx")
print(onnx_export.verify_onnx(onnx_file.path, model, example_input, batch_sizes=(1, 13)))

# %% [markdown]
# ## Exercise
#
# Export the chapter's MLP (`make_mlp()`, 10 features) with `export_onnx` and verify it.
#
# <details><summary>Solution (run it)</summary>
#
# ```python
# from course_lib.models import make_mlp
# mlp = make_mlp().eval()
# mlp_file = onnx_export.export_onnx(mlp, torch.randn(1, 10), workdir / "mlp.onnx")
# print(onnx_export.verify_onnx(mlp_file.path, mlp, torch.randn(1, 10)))
# ```
#
# </details>
#
# **Conclusion.** Pass `dynamic_shapes` and `external_data=False`, and verify every export.
# Next: `08_checkpoint_manager`.
