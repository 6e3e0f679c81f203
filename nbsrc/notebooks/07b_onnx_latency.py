# %% [markdown]
# # 6.3.7b ONNX in depth, and how fast each format runs
#
# *Deeper material.* Read `07_onnx` first (the chapter's call on today's PyTorch, the current call
# and `export_onnx`). This notebook reads the exporter's messages, verifies exports and the
# errors you will meet, runs a file in a process that cannot import torch, and measures the
# latency of every export format on your machine.
#
# ## What you will learn
#
# - what today's `torch.onnx.export` does with the chapter's `opset_version=11` and `dynamic_axes`,
#   and why the result is **two** files;
# - the current call, written out: `torch.onnx.export(..., dynamo=True, dynamic_shapes=...,
#   external_data=False)`: opset 18+, a dynamic batch, one self-contained file;
# - verifying an export: `onnx.checker` plus onnxruntime against PyTorch at several batch sizes;
# - the errors you will meet (a batch fixed at export time, a stale file) and what they mean;
# - proof that the file runs without PyTorch: a process in which `import torch` fails runs it;
# - inference latency of eager PyTorch, a TorchScript trace, `torch.export`, `torch.compile` and
#   onnxruntime, measured live with the same number of threads each, compile time apart.
#
# ## Prerequisites
#
# `06_torchscript` and `07_onnx`.
#
# **Run time.** Most of it is `torch.compile`'s compilation in the latency section (the
# benchmark prints each backend's first-call time; less when Inductor's cache holds the code). The full
# comparison, with AOTInductor and the chapter's 224×224 input, is `benchmarks/bench_inference.py`.

# %%
from course_lib import notebook

device, workdir = notebook.start("6.3.7b")

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

from course_lib.export import onnx_export
from course_lib.models import SmallCNN

torch.manual_seed(0)
model = SmallCNN()

# Prepare the model and an example input
model.eval()
example_input = torch.randn(1, 3, 224, 224)

# %% [markdown]
# The chapter's export call, inside a harness that catches what the exporter prints:

# %%
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
# The current call, written out. `dynamo=True` is the default today, and saying so makes the
# intent clear; `dynamic_shapes` replaces `dynamic_axes` and is keyed by `forward`'s argument
# names (SmallCNN's `forward(self, x)`); `external_data=False` puts the weights inside the one
# file; `verbose=False` keeps the exporter's progress lines out of the notebook. The example batch
# is 2, because a size-1 dimension cannot be declared dynamic (6.3.6):

# %%
# torch's exporter trips over a deprecation inside torch itself; that warning is not for you.
warnings.filterwarnings(
    "ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning
)

batch = torch.export.Dim("batch")
torch.onnx.export(
    model,
    (torch.randn(2, 3, 224, 224),),
    workdir / "model_raw.onnx",
    dynamo=True,
    dynamic_shapes={"x": {0: batch}},
    external_data=False,
    verbose=False,
)
raw = onnx.load(str(workdir / "model_raw.onnx"))
print("opset:", [o.version for o in raw.opset_import if o.domain == ""][0])
print("input shape:", onnx_export.onnx_input_shapes(raw))
print("files:", sorted(p.name for p in workdir.glob("model_raw*")))

# %% [markdown]
# Opset 20 (the exporter's default), a batch dimension named `batch`, and one file.
#
# `course_lib.export.onnx_export.export_onnx` wraps this call with the same choices: the dynamo exporter, its
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
# ## Runs without PyTorch
#
# ONNX's promise is that the file needs no PyTorch. In this notebook torch is already imported, so
# running the file here proves nothing. `course_lib.torch_free.run_onnx_without_torch` starts a
# new Python process whose very first act is to block every import of `torch` (a "meta-path
# finder", a hook Python asks before importing anything). That process tries `import torch` to
# show that it fails, then imports only NumPy and onnxruntime, runs the file, and reports its
# outputs and every `torch` module it ended up with:

# %%
from course_lib.torch_free import run_onnx_without_torch

x = torch.randn(3, 3, 224, 224)
alone = run_onnx_without_torch(onnx_file.path, [x])
print("in the child process, import torch raised:", alone.torch_import_error)
print("torch modules loaded there:", list(alone.torch_modules_loaded))
print("outputs:", {name: out.shape for name, out in alone.outputs.items()})

with torch.inference_mode():
    expected = model(x).numpy()
print("same as eager PyTorch here:", np.allclose(alone.outputs["output"], expected, atol=1e-5))

# %% [markdown]
# The same numbers, computed by a process that could not have used PyTorch: only onnxruntime and
# NumPy are needed to serve this model (and onnxruntime also exists for C, C++, C#, Java,
# JavaScript and mobile).
#
# ## How fast is each format?
#
# The chapter's "physicist's view" compares exporting to compiling a simulation into an
# executable: it should run faster. Let us measure, on your machine, the course CNN at its usual
# 3×32×32 input (the chapter's 224×224 at batch 64 would take too long here;
# `benchmarks/bench_inference.py` measures both sizes, and AOTInductor too). Everything runs on the
# CPU, because onnxruntime uses its CPU provider here. The backends:
#
# - **eager**: the model as it is;
# - **TorchScript trace**: deprecated (6.3.6), shown because the chapter uses it. Not frozen:
#   `torch.jit.freeze`, which folded BatchNorm into the convolutions, is deprecated as well;
# - **torch.export**: the program's `.module()`, which runs the same operators as eager from a
#   graph (it is a format, not an optimiser);
# - **torch.compile**: PyTorch's compiler (TorchInductor) in this process, specialised to each
#   batch size (`dynamic=False`): the first call at each size compiles, and that time is reported
#   apart from the steady latency;
# - **onnxruntime**: the exported file with all graph optimisations on.
#
# **Every backend gets the same number of CPU threads**, printed with the results. It matters:
# PyTorch uses one thread per core by default, and on a busy 2-core machine eager PyTorch with two
# threads waited for the other programs so badly that onnxruntime measured two orders of
# magnitude faster at batch 1; with one thread each the gap was a few times. One thread each is
# the steady choice on a small shared machine; the benchmark script takes `--threads` to try
# others.

# %%
from course_lib import inference_bench

threads = 1
torch.manual_seed(0)
cnn = SmallCNN().eval()
backends = inference_bench.make_backends(cnn, torch.randn(2, 3, 32, 32), workdir, threads=threads)
print("backends:", list(backends))
print("CPU threads for every backend:", threads)

# %% [markdown]
# `run_benchmark` times the first call of each backend at each batch size on its own, then takes
# the median of three interleaved rounds (each backend measured once per round, so a burst of load
# from another program hits all of them), each the median of many timed calls after a warm-up.
# Your numbers will differ from anyone else's: that is why they are measured here.

# %% tags=["nbval-ignore-output"]
result = inference_bench.run_benchmark(backends, (3, 32, 32), (1, 64), threads=threads)
print(result.table())
print("\nlargest difference from eager:", f"{max(result.max_abs_diff.values()):.1e}")

# %%
import matplotlib.pyplot as plt

inference_bench.plot_latency(result, "SmallCNN ")
plt.show()

# %% [markdown]
# What this run says, computed from the numbers above (the labels on the bars are the speed-ups
# over eager), and where eager PyTorch spends its time at batch 64, layer type by layer type:

# %% tags=["nbval-ignore-output"]
for sentence in result.takeaway():
    print(sentence)
hot = inference_bench.eager_hotspots(cnn, torch.randn(64, 3, 32, 32), threads=threads)
print("eager's time at batch 64:", ", ".join(f"{name} {share:.0%}" for name, share in hot))

# %% [markdown]
# How to read it. At **batch 1** a call does very little arithmetic, so fixed costs per call
# decide: eager PyTorch goes through Python and PyTorch's dispatcher for each of its eleven
# operators, while onnxruntime runs its whole optimised graph in C++ behind one call. That is
# why onnxruntime usually wins there, often by several times. At **batch 64** the arithmetic
# dominates, and what counts is how each layer is computed: eager runs every layer as a separate
# pass over memory (the shares above show which layers cost most), while onnxruntime and
# `torch.compile` fold each BatchNorm into its convolution, fuse the ReLUs, and pick their own
# kernels. The TorchScript trace and the `torch.export` module run the same operators as eager,
# so they cannot gain much; at batch 1 their own per-call work (the exported module checks its
# inputs against the program's shapes) can even make them slower than eager. If your run says
# something else (another backend fastest, or
# `torch.compile` slower than eager), believe your run: the printed sentences are computed from
# it, and the benchmark script repeats the comparison at 224×224 and with AOTInductor.
#
# `torch.compile`'s price is the compilation: the last sentence says how many calls it takes to
# earn it back. For a server answering millions of requests, that is nothing; for a script that
# runs the model ten times, compiling costs more than it saves.
#
# ## Exercises
#
# 1. Exercise 2 (`exercises/ex2_onnx_export.ipynb`): write `export_and_verify` for a model with
#    BatchNorm and dropout. `./course check exercises/ex2_onnx_export.ipynb` checks it (see
#    00), and its solution is `solutions/ex2_onnx_export.ipynb`.
# 2. Export `ConditionalModel` with `use_relu=False`: what happens to the argument in the ONNX
#    graph?
# 3. Use `onnx_export.export_onnx(..., legacy=True)` and compare the file's opset and graph with
#    the dynamo export.
# 4. Run `inference_bench.run_benchmark` again with `threads=2` (make the backends again with
#    `threads=2`, so onnxruntime gets two threads too). Which backends gain, and by how much?
#
# Paste a solution's code into a new cell at the end of this notebook to check it against what
# the solution says it prints.
#
# <details><summary>Solution 2</summary>
#
# ```python
# from course_lib.models import ConditionalModel
# f = onnx_export.export_onnx(ConditionalModel().eval(), (torch.randn(2, 10), False),
#                             workdir / "no_relu.onnx")
# graph = onnx.load(str(f.path)).graph
# print([i.name for i in graph.input], [n.op_type for n in graph.node])
# ```
#
# It prints `['x'] ['Gemm', 'Gemm']`: the argument is gone. Like `torch.export`, the exporter
# treats a Python `bool` as a constant, runs `if use_relu:` once, and keeps only the branch
# taken: two linear layers (`Gemm`) and no `Relu`. A file for the other branch is a second export.
# </details>
#
# <details><summary>Solution 3</summary>
#
# ```python
# legacy = onnx_export.export_onnx(cnn, torch.randn(2, 3, 32, 32), workdir / "legacy.onnx",
#                                  legacy=True)
# current = onnx_export.export_onnx(cnn, torch.randn(2, 3, 32, 32), workdir / "current.onnx")
# for f in (legacy, current):
#     print(f.exporter, f.opset, sorted({n.op_type for n in onnx.load(str(f.path)).graph.node}))
# ```
#
# The legacy exporter writes opset 17 and the dynamo exporter opset 20. Both graphs have the
# BatchNorm folded away (no `BatchNormalization` node: constant folding merged it into `Conv`);
# the legacy one flattens with `Flatten`, the dynamo one with `Reshape`. Same arithmetic, as
# `verify_onnx` on each file shows.
# </details>
#
# <details><summary>Solution 4</summary>
#
# No fixed answer: it depends on your machine and its load. On an idle machine with two free
# cores, batch 64 usually gains most (its arithmetic splits across threads) and batch 1 little
# (there is too little work to share). On a busy 2-core machine two threads per backend often
# make things slower and noisier. Check: the table's header row says `batch 1` and `batch 64`,
# and `result.threads` is 2.
# </details>
#
# ## Conclusion
#
# - Today's `torch.onnx.export` is the dynamo exporter: opset 18 or newer (`opset_version=11` is
#   not honoured), `dynamic_shapes` instead of `dynamic_axes`, and, given a path, the weights in a
#   separate `.onnx.data` file unless `external_data=False`.
# - Verify every export numerically, at several batch sizes, against the model in eval mode.
# - onnxruntime runs the file in a process that cannot import PyTorch at all.
# - Measure speed on your machine, with the same number of threads for every backend, and count
#   compilation apart: which backend wins depends on the batch size and on the machine.
#
# ## Further reading
#
# - [`torch.onnx`](https://docs.pytorch.org/docs/stable/onnx.html), the
#   [dynamo-based exporter](https://docs.pytorch.org/docs/stable/onnx_export.html) and the tutorial
#   [Export a PyTorch model to ONNX](https://docs.pytorch.org/tutorials/beginner/onnx/export_simple_model_to_onnx_tutorial.html)
# - [onnxruntime's Python API](https://onnxruntime.ai/docs/api/python/api_summary.html) and its
#   [thread settings](https://onnxruntime.ai/docs/performance/tune-performance/threading.html)
# - [`torch.compile`](https://docs.pytorch.org/docs/stable/generated/torch.compile.html) and the
#   [torch.compile tutorial](https://docs.pytorch.org/tutorials/intermediate/torch_compile_tutorial.html)
# - [`torch.set_num_threads`](https://docs.pytorch.org/docs/stable/generated/torch.set_num_threads.html)
#   and [CPU threading in PyTorch](https://docs.pytorch.org/docs/stable/notes/cpu_threading_torchscript_inference.html)
# - [ONNX operators](https://onnx.ai/onnx/operators/) (what `Conv`, `Gemm` and `Relu` compute)
