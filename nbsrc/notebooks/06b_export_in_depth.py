# %% [markdown]
# # 6.3.6b Export in depth: graphs, guards, AOTInductor
#
# *Deeper material.* Read `06_torchscript` first (tracing, scripting, `torch.export` and
# `export_program`). This notebook reads the graphs a trace and an export record, shows the
# tracing pitfall and `torch.export`'s answer to it, compiles a program ahead of time with
# AOTInductor, and runs every file in a fresh process without the model's class.
#
# Everything this notebook writes is **code**: TorchScript files, `.pt2` archives (they hold
# pickles, and may hold compiled native libraries) and AOTInductor packages. Load such files only
# from a source you trust, as you would run a program.
#
# ## What you will learn
#
# - tracing (`torch.jit.trace`) versus scripting (`torch.jit.script`), and why the chapter's
#   `ConditionalModel` fails to script as written;
# - how to read the graph a trace or an export recorded;
# - the tracing pitfall: a data-dependent `if` is silently baked into a trace;
# - that TorchScript is deprecated, and what is still true of the chapter's four advantages;
# - `torch.export`: a dynamic batch dimension, `.pt2` files, what a "data-dependent guard" error
#   means, and `torch.cond` for branches;
# - AOTInductor: compiling an exported program ahead of time into a package that needs no Python
#   model code (the deployment path PyTorch recommends today);
# - proof that each file is self-contained: it runs in a fresh Python process without the class.
#
# ## Prerequisites
#
# Chapter 6.3.1 (`01_state_dict.ipynb`): `state_dict`, `model.eval()`.
#
# **Run time.** Most of it is the AOTInductor compilation near the end, which runs a C++
# compiler: that cell prints how long it took on your machine (Inductor caches its work, so a
# second run is faster). The model compiled there is tiny on purpose.

# %%
from course_lib import notebook

device, workdir = notebook.start("6.3.6b")

# %% [markdown]
# ## Tracing
#
# The chapter traces its model with a 3×224×224 input; its model, 6.3.1's MLP, takes 10 features,
# so as written the trace fails (notebook 06 shows it). The course's `SmallCNN` (two convolutions
# with BatchNorm, dropout, and an adaptive pooling layer, so it accepts 224×224 as well as its
# usual 32×32) stands in for it. The chapter's code otherwise as written (files go to `workdir`):

# %%
import warnings

import torch
import torch.jit

from course_lib.models import SmallCNN

model = SmallCNN().to(device)

# Prepare an example input
example_input = torch.randn(1, 3, 224, 224, device=device)

# Trace the model
model.eval()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    traced_model = torch.jit.trace(model, example_input)

    # Save
    traced_model.save(str(workdir / "model_traced.pt"))

    # Load
    loaded_model = torch.jit.load(str(workdir / "model_traced.pt"))
    output = loaded_model(example_input)

print("output shape:", tuple(output.shape))
print("same as the model:", torch.allclose(output, model(example_input), atol=1e-5))
for message in dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught):
    print(message)  # each distinct warning once

# %% [markdown]
# It works, and it warns: **`torch.jit.trace`, `torch.jit.script` and `torch.jit.load` are
# deprecated** in current PyTorch
# (Jupyter hides `DeprecationWarning`s raised inside libraries, so the cell above recorded and
# printed them). TorchScript still runs, but gets no new features; new code should use
# `torch.export`, below.
#
# Tracing runs the model once on the example input and records the tensor operations it executes.
# `print(loaded_model.code)` shows them as calls into the submodules,
# `(classifier).forward((features).forward(x, ), )`, which hides exactly what was recorded. The
# operations themselves are in the trace's graph; `course_lib.graph_view` lists them one per line:
# the shape each produced for the example input, then `name = operation(tensors it read)`, with
# the weights named as in the `state_dict`:

# %%
from course_lib.graph_view import format_steps, graph_steps

image_model = model  # keep the traced SmallCNN: the chapter reuses the name `model` below
print(format_steps(graph_steps(traced_model)))

# %% [markdown]
# Read it from the top: a convolution on the input `x` with `features.0.weight` and
# `features.0.bias`, a batch norm with the layer's running statistics (in eval mode, so the
# stored `running_mean`/`running_var` are used), a ReLU, a max pool that halves 224 to 112, the
# second block, a pool to 4×4, flatten to 512 features, dropout (which does nothing in eval
# mode), and the final linear layer to 10 scores. Names like `input.7` are the tracer's own;
# `_convolution` is the low-level operator behind `nn.Conv2d`. No `if`, no loop: a trace is a
# straight line of operations, recorded for this input.

# %% [markdown]
# ## Scripting
#
# Tracing records what happened for *one* input; Python control flow is not recorded. Scripting
# compiles `forward`'s source code instead, `if`s included. The chapter's example, pasted as
# written. **This cell fails on purpose:**

# %% tags=["raises-exception"]
import torch.nn as nn


# For a model with control flow, use script
class ConditionalModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(10, 20)
        self.fc2 = nn.Linear(20, 5)

    def forward(self, x, use_relu=True):
        x = self.fc1(x)
        if use_relu:
            x = torch.relu(x)
        return self.fc2(x)


model = ConditionalModel()
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    scripted_model = torch.jit.script(model)

scripted_model.save(str(workdir / "model_scripted.pt"))

# %% [markdown]
# TorchScript is statically typed, and an argument without an annotation is assumed to be a
# `Tensor`, so the default `True` does not type-check. The fix is one annotation,
# `use_relu: bool = True`. `course_lib.models.ConditionalModel` has it, and
# `course_lib.export.script_model` scripts (in eval mode) and saves:

# %%
from course_lib import export
from course_lib.models import ConditionalModel

torch.manual_seed(0)
cond_model = ConditionalModel().to(device).eval()
scripted = export.script_model(cond_model, workdir / "model_scripted.pt")

x = torch.randn(4, 10, device=device)
for use_relu in (True, False):
    same = torch.allclose(scripted(x, use_relu), cond_model(x, use_relu=use_relu), atol=1e-6)
    print(f"use_relu={use_relu}: scripted == eager: {same}")
print(scripted.code)

# %% [markdown]
# The `if use_relu:` survived into the compiled code: both branches are in the file.
#
# ## The tracing pitfall: a branch on the data
#
# What does tracing do with an `if`? It runs it once, for the example input, and records only the
# branch that ran. Here is a model whose branch depends on the *values* of its input:


# %%
class SignBranch(nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x * 2
        return -x


positive, negative = torch.ones(2, 3, device=device), -torch.ones(2, 3, device=device)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    traced_sign = export.trace_model(SignBranch().eval(), positive)  # traced on positive input
for message in dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught):
    print(message.split(". ")[0] + ".")

eager = SignBranch()
print(
    "positive input, max |traced - eager|:",
    (traced_sign(positive) - eager(positive)).abs().max().item(),
)
print(
    "negative input, max |traced - eager|:",
    (traced_sign(negative) - eager(negative)).abs().max().item(),
)
print(
    "traced output on -1s:",
    traced_sign(negative)[0].tolist(),
    " (eager gives",
    eager(negative)[0].tolist(),
    ")",
)

# %% [markdown]
# The trace answers `-2` where the model answers `+1`: it always doubles. PyTorch's only sign of
# trouble is the `TracerWarning`, easy to miss in a log. (The second warning comes from the
# course's `trace_model`, which runs the trace on one more input and compares; a plain
# `torch.jit.trace` does not.) Scripting keeps the branch:

# %%
scripted_sign = export.script_model(SignBranch().eval())
print(
    "scripted, negative input, max difference:",
    (scripted_sign(negative) - eager(negative)).abs().max().item(),
)

# %% [markdown]
# ## The chapter's four advantages of TorchScript, today
#
# | the chapter says | still true? |
# |---|---|
# | 1. **Independent of Python**: runs in C++ | Yes, through LibTorch's `torch::jit::load`. But TorchScript is deprecated; the current C++ route is `torch.export` plus AOTInductor (`torch._inductor.aoti_compile_and_package`, shown below), or ONNX with onnxruntime's C/C++ API (chapter 6.3.7). |
# | 2. **Optimisation** by the JIT compiler | Little, and frozen in time: the JIT fuses a few operations, and `torch.jit.freeze`, which folded BatchNorm into convolutions, is deprecated too (it warns on PyTorch 2.13). Today's optimisers are `torch.compile` (in the running process) and AOTInductor (ahead of time); `07b_onnx_latency` measures how fast each format runs. |
# | 3. **Portable**: needs no original model definition | Yes, and so do `torch.export`'s `.pt2` and ONNX: shown live at the end of this notebook. |
# | 4. **Production deployment** on servers | TorchScript files still load, but serving stacks have moved on to `torch.export`/AOTInductor, ONNX Runtime and TensorRT. |
#
# ## `torch.export`, TorchScript's successor
#
# `torch.export.export` captures the whole model as a graph of ATen operations (PyTorch's
# low-level operator set), checking every assumption it makes about the input. A batch dimension
# must be declared dynamic, or the program only accepts the example's batch size. The call
# written out, with the example batch of 2 (`torch.export` treats a size-1 dimension as fixed, so
# an example batch of 1 cannot declare a dynamic batch):

# %%
cnn = image_model  # the SmallCNN traced above, now with torch.export
batch = torch.export.Dim("batch")
program = torch.export.export(
    cnn.eval(),
    (torch.randn(2, 3, 224, 224, device=device),),
    dynamic_shapes={"x": {0: batch}},  # forward(self, x): dimension 0 of x is the batch
)
torch.export.save(program, workdir / "model.pt2")
print(format_steps(graph_steps(program)))

# %% [markdown]
# The same operations as the trace (`conv2d` is `_convolution` under its public name), with one
# change in the shapes: the batch is a symbol (`s` followed by a number), not 1. The program is valid for any
# batch size, and the weights are named inputs of the graph rather than numbers baked into it.
#
# `course_lib.export.export_program` wraps this call: it switches the model to eval mode (and
# back), builds `dynamic_shapes` from `forward`'s argument names, repeats an example batch of 1
# to 2, and saves. It is what the rest of the course uses:

# %%
program = export.export_program(cnn, example_input, workdir / "model.pt2")
print("exported input shapes (None = dynamic):", export.program_input_shapes(program))

loaded_program = export.exported_module(workdir / "model.pt2")
for batch in (1, 5):
    x = torch.randn(batch, 3, 224, 224, device=device)
    out = loaded_program(x)
    same = torch.allclose(out, cnn(x), atol=1e-5)
    print(f"batch {batch}: output {tuple(out.shape)}, same as the model: {same}")

# %% [markdown]
# And the data-dependent branch? `torch.export` does not silently bake it in the way tracing does:
# it refuses, because it cannot know the sign of the sum while exporting:

# %%
try:
    export.export_program(SignBranch().eval(), positive)
except Exception as exc:  # the full message also suggests fixes; its first sentence:
    print(f"{type(exc).__name__}: {str(exc).split(' (unhinted')[0]}")

# %% [markdown]
# What the message means. `torch.export` does not run the model on your numbers: it runs it on
# *symbolic* tensors, whose sizes are symbols (the `s…` above) and whose values are unknown. A
# value computed from the data, like the truth of `x.sum() > 0`, becomes a fresh symbol too: `u0`
# ("u" for unbacked: no example value stands behind it). Python's `if` needs a plain `True` or
# `False`, so the exporter would have to pick one and add a **guard**, an assumption the program
# checks when it runs ("this program is only valid if u0 == 1"). Guards on sizes are routine
# (`batch >= 2`). A guard on the data is refused: it would make the program valid for some inputs
# and not others, which is exactly the tracing pitfall above. Hence "Could not guard on
# data-dependent expression `Eq(u0, 1)`": it could not decide whether the condition is true.
#
# The fix is to put *both* branches into the graph and let the program choose at run time:
# `torch.cond(predicate, true_fn, false_fn, operands)`. No guard is needed, because nothing is
# decided at export time:


# %%
class SignBranchCond(nn.Module):
    def forward(self, x):
        return torch.cond(x.sum() > 0, lambda t: t * 2, lambda t: -t, (x,))


program_cond = export.export_program(SignBranchCond().eval(), positive, workdir / "sign_cond.pt2")
module_cond = program_cond.module()
for name, x in (("positive", positive), ("negative", negative)):
    print(f"{name}: max |exported - eager| = {(module_cond(x) - eager(x)).abs().max().item()}")

# %% [markdown]
# ## AOTInductor: compiled ahead of time, the deployment path PyTorch recommends
#
# A `.pt2` program still runs operator by operator inside PyTorch, in Python. **AOTInductor**
# compiles an exported program ahead of time: TorchInductor (the compiler behind
# `torch.compile`) generates C++ code for the whole graph, fusing operations where it can; a C++
# compiler builds it into a shared library; and the library and the weights are packed into one
# `.pt2` package. The package is loaded with `torch._inductor.aoti_load_package` in Python, or by
# `torch::inductor::AOTIModelPackageLoader` in a C++ program with no Python at all. (PyTorch's
# documentation marks AOTInductor as a prototype: its API may still change.)
#
# Compiling runs a C++ compiler, so the model is tiny: the chapter's `ConditionalModel`, two
# linear layers. It is compiled for the CPU (a program exported on a GPU compiles GPU kernels,
# which needs the CUDA toolchain), so this runs on every machine. **This cell is why the notebook
# takes longest**: it prints its own compile time, shorter when Inductor's cache (in the
# system's temporary folder) already holds the compiled code.

# %%
import copy
import time

mlp = copy.deepcopy(cond_model).cpu()  # a CPU copy; cond_model stays on `device`
mlp_program = export.export_program(mlp, torch.randn(4, 10))  # dynamic batch, use_relu=True
started = time.perf_counter()
with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # raised inside torch's own code
    package_path = torch._inductor.aoti_compile_and_package(
        mlp_program, package_path=str(workdir / "mlp_aoti.pt2")
    )
print(f"AOTInductor compiled the program in {time.perf_counter() - started:.1f} s")

# %% [markdown]
# Loading the package is fast: the work was done ahead of time. **An AOTInductor package is a
# shared library: loading it runs its machine code.** Load only packages you compiled or trust
# completely; the course's `export.load_aoti_package` (which calls `aoti_load_package`) refuses
# one unless you pass `trusted=True`. The compiled model accepts any batch size, because the
# program it came from had a dynamic batch:

# %%
compiled_mlp = export.load_aoti_package(package_path, trusted=True)  # compiled just above
for batch in (1, 7):
    x = torch.randn(batch, 10)
    same = torch.allclose(compiled_mlp(x), mlp(x), atol=1e-6)
    print(f"batch {batch}: output {tuple(compiled_mlp(x).shape)}, same as the model: {same}")

# %% [markdown]
# Both `torch.export.save` and AOTInductor write `.pt2` archives, but they hold different things:
# the first a graph that PyTorch interprets, the second compiled machine code plus weights. They
# are not two separate worlds: `torch.export.load` opens any `.pt2` and hands the compiled
# libraries it finds to AOTInductor's loader, which loads them into the process, native code
# included. So a `.pt2` from an untrusted source is unsafe whichever loader you call. How fast
# the compiled code runs compared with eager PyTorch, `torch.compile` and onnxruntime is
# measured in 07b and in `benchmarks/bench_inference.py`.

# %% [markdown]
# ## Each file runs without the class
#
# The chapter's third advantage, checked: `export.run_all_in_fresh_process` starts a new Python
# process in which the course's package cannot even be imported (and the classes defined in this
# notebook do not exist), loads each file with `torch.jit.load` or `torch.export.load`, runs it on
# the given inputs and sends the outputs back. TorchScript files are code (a scripted
# `__setstate__` runs at `torch.jit.load`), so the runner asks for `trusted=True`; these files
# were all made above.

# %%
x_img = torch.randn(3, 3, 224, 224)
x_vec = torch.randn(4, 10)
jobs = [
    (workdir / "model_traced.pt", x_img),
    (workdir / "model_scripted.pt", (x_vec, False)),
    (workdir / "model.pt2", x_img),
    (workdir / "sign_cond.pt2", -torch.ones(5, 3)),
]
with torch.inference_mode():  # what this process computes, for comparison
    expected = [
        image_model(x_img.to(device)).cpu(),
        cond_model(x_vec.to(device), use_relu=False).cpu(),
        image_model(x_img.to(device)).cpu(),
        SignBranch()(-torch.ones(5, 3)),
    ]
runs = export.run_all_in_fresh_process(jobs, trusted=True)
for run, want in zip(runs, expected, strict=True):
    same = torch.allclose(run.outputs[0], want, atol=1e-5)
    print(
        f"{run.path.name:18s} loaded by {run.kind:12s} output {tuple(run.outputs[0].shape)}, matches: {same}"
    )
print("course_lib modules imported by the fresh process:", list(runs[0].course_modules_imported))

# %% [markdown]
# ## Exercises
#
# 1. Trace `SignBranch` on a *negative* input and find the inputs on which it is wrong.
# 2. Export `ConditionalModel` with `export.export_program(..., kwargs={"use_relu": False})` and
#    check which branch the program keeps (`graph_steps` shows it). Why is a Python `bool` fixed
#    at export time, and what happens if you call the program with `use_relu=True`?
# 3. Exercise 2 in `exercises/` exports a model to ONNX and verifies it (chapter 6.3.7).
#
# Each solution below ends with what its check prints; paste its code into a new cell at the end
# of this notebook to check your answer.
#
# <details><summary>Solution 1</summary>
#
# ```python
# traced_neg = export.trace_model(SignBranch().eval(), negative)  # records `return -x`
# for name, x in (("positive", positive), ("negative", negative),
#                 ("sum > 0", torch.tensor([[3.0, -1.0]], device=device))):
#     print(name, torch.equal(traced_neg(x), SignBranch()(x)))
# ```
#
# The trace always negates. It is right whenever the sum is at most 0 and wrong whenever the sum
# is positive, whatever the signs of the single values (`[3, -1]` sums to 2). The check prints
# `positive False`, `negative True`, `sum > 0 False`.
# </details>
#
# <details><summary>Solution 2</summary>
#
# ```python
# no_relu = export.export_program(
#     ConditionalModel().eval(), torch.randn(4, 10), kwargs={"use_relu": False}
# )
# print([step.op for step in graph_steps(no_relu)])
# try:
#     no_relu.module()(torch.randn(3, 10), use_relu=True)
# except AssertionError as error:
#     print("refused:", error)
# ```
#
# The graph is `['linear', 'linear']`: no `relu`. `torch.export` makes *tensors* symbolic; a
# Python `bool` is a constant, so `if use_relu:` ran once in Python, like tracing. Unlike a trace,
# the program records the assumption as a guard, so calling it with `use_relu=True` raises
# `AssertionError: Guard failed: use_relu == False` instead of silently computing the wrong
# branch. To keep both branches, pass the flag as a tensor and use `torch.cond`.
# </details>
#
# ## Conclusion
#
# - Tracing records one run: fast and simple, but a data-dependent `if` is baked in with only a
#   `TracerWarning`. Scripting compiles the source, and needs type annotations (`use_relu: bool`).
#   Both are deprecated, and so is `torch.jit.freeze`.
# - `torch.export.export(model, args, dynamic_shapes=...)` does the same job with a dynamic batch
#   dimension, refuses a data-dependent `if` (it will not guard on data) instead of guessing, and
#   keeps both branches with `torch.cond`.
# - AOTInductor compiles an exported program ahead of time into a package that Python or C++ loads
#   without the model's code: the path PyTorch recommends for deployment today.
# - TorchScript and `.pt2` files both run without the model's class, and both are code: load them
#   only from a source you trust. Back to the core path: `07_onnx`.
#
# ## Further reading
#
# - [`torch.export`](https://docs.pytorch.org/docs/stable/export.html) and the
#   [torch.export tutorial](https://docs.pytorch.org/tutorials/intermediate/torch_export_tutorial.html)
# - [Control flow with `torch.cond`](https://docs.pytorch.org/docs/stable/cond.html)
# - [Troubleshooting GuardOnDataDependentSymNode errors](https://docs.pytorch.org/docs/main/compile/dynamic_shapes_troubleshooting_guardon_errors.html)
# - [AOTInductor: ahead-of-time compilation for torch.export-ed models](https://docs.pytorch.org/docs/stable/torch.compiler_aot_inductor.html)
#   and the recipe [torch.export AOTInductor tutorial for Python runtime](https://docs.pytorch.org/tutorials/recipes/torch_export_aoti_python.html)
# - [TorchScript](https://docs.pytorch.org/docs/stable/jit.html) (deprecated) and
#   [`torch.jit.trace`](https://docs.pytorch.org/docs/stable/generated/torch.jit.trace.html)
