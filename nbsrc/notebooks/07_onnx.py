# %% [markdown]
# # 6.3.7 ONNX export
#
# ONNX (Open Neural Network Exchange) is an open file format for neural networks: a graph of
# standard operators plus the weights. An ONNX file runs without PyTorch, in onnxruntime (Python,
# C, C++, C#, Java, JavaScript, mobile), TensorRT, OpenVINO and others. This notebook runs the
# chapter's export call on current PyTorch, shows what has changed, does it the current way, checks
# the file numerically, and measures how fast each export format runs on your machine.
#
# ## What you will learn
#
# - what today's `torch.onnx.export` does with the chapter's `opset_version=11` and `dynamic_axes`,
#   and why the result is **two** files;
# - the current call: the dynamo exporter, opset 18+, `dynamic_shapes`, one self-contained file;
# - verifying an export: `onnx.checker` plus onnxruntime against PyTorch at several batch sizes;
# - the errors you will meet (a batch fixed at export time, a stale file) and what they mean;
# - inference latency of eager PyTorch, TorchScript, `torch.export` and onnxruntime, measured live.
#
# ## Prerequisites
#
# Chapter 6.3.6 (`06_torchscript.ipynb`): tracing and `torch.export`.

# %%
from course_lib import notebook

device, workdir = notebook.start("6.3.7")

# %% [markdown]
# ## The chapter's export call, on current PyTorch
#
# This notebook keeps its models on the CPU even when `device` is a GPU: onnxruntime runs here
# with its CPU provider, and an ONNX file does not depend on where the model was when exported.
#
# The chapter exports an image model with a 1×3×224×224 example input; the course's `SmallCNN`
# (BatchNorm, dropout, adaptive pooling: it accepts 224×224) stands in for it. Since PyTorch 2.9,
# `torch.onnx.export` uses the new dynamo-based exporter by default. It prints progress lines, a
# traceback and several warnings for this call; the cell captures them (with the chapter's call
# unchanged inside) and prints each distinct message once.

# %%
import contextlib
import io
import warnings

import torch
import torch.onnx

from course_lib import onnx_export
from course_lib.models import SmallCNN

torch.manual_seed(0)
model = SmallCNN()

# Prepare the model and an example input
model.eval()
example_input = torch.randn(1, 3, 224, 224)

console = io.StringIO()
with (
    warnings.catch_warnings(record=True) as caught,
    contextlib.redirect_stdout(console),
    contextlib.redirect_stderr(console),
):
    warnings.simplefilter("always")
    # Export to ONNX
    torch.onnx.export(
        model,  # the model
        example_input,  # an example input
        workdir / "model.onnx",  # output file
        export_params=True,  # export the parameters
        opset_version=11,  # ONNX operator set version
        do_constant_folding=True,  # constant-folding optimisation
        input_names=["input"],  # input names
        output_names=["output"],  # output names
        dynamic_axes={  # dynamic axes (variable batch size)
            "input": {0: "batch_size"},
            "output": {0: "batch_size"},
        },
    )

print("Model exported to ONNX format")
print("\nWhat the exporter said:")
for line in onnx_export.summarize_log(console.getvalue(), caught):
    print(" -", line)

# %% [markdown]
# Read the messages: the exporter could not convert the graph down to opset 11 ("No Adapter From
# Version 16"), so it **kept a newer opset** and carried on; `dynamic_axes` still works but is
# converted for you; `do_constant_folding` is ignored (folding is always on). What was written?

# %%
import onnx

written = onnx.load(str(workdir / "model.onnx"), load_external_data=False)
print("opset of the file:", [o.version for o in written.opset_import if o.domain == ""][0])
print("input shape:", onnx_export.onnx_input_shapes(written))
sizes = {path.name: path.stat().st_size for path in sorted(workdir.iterdir())}
print("files written:", list(sizes))
print(f"model.onnx.data (the weights): {sizes['model.onnx.data'] / 1024:.1f} KiB")
# The graph file's exact size depends on where it was exported: the exporter stores each node's
# Python stack trace, with absolute paths of this machine (course_lib's helper removes them).
print("model.onnx (the graph) is the smaller one:", sizes["model.onnx"] < sizes["model.onnx.data"])

# %% [markdown]
# Opset 18, not 11. And two files: the graph in `model.onnx`, the weights in `model.onnx.data`
# beside it (the exporter's default, `external_data=True`). The chapter's verification code runs,
# because both files are in the same folder:

# %%
import numpy as np
import onnxruntime as ort

# Verify the model
onnx_model = onnx.load(str(workdir / "model.onnx"))
onnx.checker.check_model(onnx_model)
print("ONNX model check passed")

# Run inference with ONNX Runtime
ort_session = ort.InferenceSession(str(workdir / "model.onnx"))

# Prepare an input
input_name = ort_session.get_inputs()[0].name
input_data = np.random.randn(1, 3, 224, 224).astype(np.float32)

# Inference
output = ort_session.run(None, {input_name: input_data})
print(f"Output shape: {output[0].shape}")

# %% [markdown]
# Now deploy it the obvious way: copy `model.onnx` to a server folder. **This cell fails on
# purpose:** the weights stayed behind in `model.onnx.data`.

# %% tags=["raises-exception"]
import shutil

(workdir / "deploy").mkdir()
shutil.copy(workdir / "model.onnx", workdir / "deploy" / "model.onnx")
ort.InferenceSession(str(workdir / "deploy" / "model.onnx"))

# %% [markdown]
# ## The current way
#
# `course_lib.onnx_export.export_onnx` makes the choices explicit: the dynamo exporter, its
# default opset (20 here; anything below 18 is refused), `dynamic_shapes` for the batch, and one
# self-contained file (`external_data=False`; the sidecar is only needed above ONNX's 2 GB limit).
# A model left in training mode is exported in eval mode with a warning. The exporter's console
# output is captured into the result's `log`, not printed. The legacy TorchScript-based exporter
# is there only when asked for (`legacy=True`).

# %%
onnx_file = onnx_export.export_onnx(
    model,
    example_input,
    workdir / "model_current.onnx",
    input_names=["input"],
    output_names=["output"],
)
print(onnx_file)
print("files:", sorted(p.name for p in workdir.glob("model_current*")))

# %% [markdown]
# ### Verification at several batch sizes
#
# `verify_onnx` runs `onnx.checker.check_model(full_check=True)` (which also infers and checks
# every shape), then random inputs at batch sizes 1, 2 and 13 through onnxruntime (CPU) and through
# the PyTorch model in eval mode, and reports the worst absolute and relative error of each output.
# Batch 1 and 13 matter: a file exported with a fixed batch fails there, and odd sizes catch
# reshapes that assumed the example's batch. (The errors are tiny and vary slightly between CPUs,
# so the course's tests compare them as `N.Ne-NN`.)

# %%
report = onnx_export.verify_onnx(onnx_file.path, model, example_input, batch_sizes=(1, 2, 13))
print(report)

# %% [markdown]
# What if the model changes after the export, say one more epoch of fine-tuning, and the old file
# gets deployed? Verification catches the stale file. **This cell fails on purpose:**

# %% tags=["raises-exception"]
import copy

fine_tuned = copy.deepcopy(model)
with torch.no_grad():
    fine_tuned.classifier[2].bias += 0.05  # stands in for a training step

onnx_export.verify_onnx(onnx_file.path, fine_tuned, example_input)

# %% [markdown]
# And a file exported **without** a dynamic batch accepts only the example's batch size. The
# chapter's `dynamic_axes` was there to avoid exactly this. `OnnxModel` (an onnxruntime session
# called like a PyTorch model) checks the shapes first and names the fixed shape and the fix,
# instead of onnxruntime's `INVALID_ARGUMENT : Got invalid dimensions`. **This cell fails on
# purpose:**

# %% tags=["raises-exception"]
onnx_export.export_onnx(model, example_input, workdir / "model_static.onnx", dynamic_batch=False)
static = onnx_export.OnnxModel(workdir / "model_static.onnx")
print("batch 1:", tuple(static(torch.randn(1, 3, 224, 224)).shape))
static(torch.randn(13, 3, 224, 224))

# %% [markdown]
# ## How fast is each format?
#
# The chapter's "physicist's view" compares exporting to compiling a simulation into an
# executable: it should run faster. Let us measure, on your machine, the course CNN at its usual
# 3×32×32 input (224×224 at batch 64 would take too long here; `benchmarks/bench_inference.py`
# measures both sizes). Everything runs on the CPU, because onnxruntime uses its CPU provider here.
# TorchScript is a frozen trace (BatchNorm folded); onnxruntime runs with all graph optimisations
# and as many threads as PyTorch. `measure_latency` warms each one up, then takes the median of
# many timed repeats.

# %%
from course_lib import export
from course_lib.timing import measure_latency

torch.manual_seed(0)
cnn = SmallCNN().eval()
example32 = torch.randn(2, 3, 32, 32)
backends = {
    "eager": cnn,
    "TorchScript": export.trace_model(cnn, example32, freeze=True),
    "torch.export": export.export_program(cnn, example32).module(),
}
runner = onnx_export.OnnxModel(onnx_export.export_onnx(cnn, example32, workdir / "cnn32.onnx").path)
print("backends:", [*backends, "onnxruntime"])

# %% tags=["nbval-ignore-output"]
latency_ms: dict[str, dict[int, float]] = {name: {} for name in [*backends, "onnxruntime"]}
for batch in (1, 64):
    x = torch.randn(batch, 3, 32, 32)
    x_numpy = x.numpy()
    with torch.inference_mode():
        for name, fn in backends.items():
            latency_ms[name][batch] = measure_latency(fn, x, warmup=3, repeats=15).median_ms
    latency_ms["onnxruntime"][batch] = measure_latency(
        runner.run_numpy, x_numpy, repeats=20
    ).median_ms

print(f"{'backend':14s} {'batch 1':>10s} {'batch 64':>10s}   (median ms; ratio to eager)")
for name, row in latency_ms.items():
    ratios = [latency_ms["eager"][b] / row[b] for b in (1, 64)]
    print(f"{name:14s} {row[1]:10.3f} {row[64]:10.3f}   {ratios[0]:4.1f}x {ratios[1]:4.1f}x")

# %%
import matplotlib.pyplot as plt

fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
for ax, batch in zip(axes, (1, 64), strict=True):
    names = list(latency_ms)
    values = [latency_ms[name][batch] for name in names]
    ax.bar(names, values, color=["#888888", "#4c72b0", "#55a868", "#c44e52"])
    ax.set_title(f"SmallCNN, 3×32×32, batch {batch} (CPU)")
    ax.set_ylabel("median latency (ms)")
    ax.tick_params(axis="x", labelrotation=15)
fig.tight_layout()
plt.show()

# %% [markdown]
# On the 2-core machine this course was written on, onnxruntime was about 4 to 7 times faster
# than eager PyTorch at batch 1 (the spread is other programs competing for the CPU), and still
# several times faster at batch 64. At batch 1 the per-call overhead of Python and PyTorch's
# dispatcher dominates; onnxruntime also fused each BatchNorm into its convolution and runs the
# graph without Python. The frozen TorchScript trace gains a little; `torch.export`'s module is
# not an optimiser (it runs the same operators as eager, from a graph); `torch.compile` or
# AOTInductor would be the PyTorch way to optimise it. Your numbers will differ: that is why they
# are measured here rather than printed in a book.
#
# ## Exercises
#
# - Exercise 2 (`exercises/ex2_onnx_export.ipynb`): write `export_and_verify` for a model with
#   BatchNorm and dropout.
# - Export `ConditionalModel` with `use_relu=False`: what happens to the argument in the ONNX graph?
# - Use `onnx_export.export_onnx(..., legacy=True)` and compare the file's opset and graph with the
#   dynamo export.
#
# ## Conclusion
#
# - Today's `torch.onnx.export` is the dynamo exporter: opset 18 or newer (`opset_version=11` is
#   not honoured), `dynamic_shapes` instead of `dynamic_axes`, and, given a path, the weights in a
#   separate `.onnx.data` file unless `external_data=False`.
# - Verify every export numerically, at several batch sizes, against the model in eval mode.
# - onnxruntime runs the file without PyTorch, and for small models much faster than eager PyTorch.
