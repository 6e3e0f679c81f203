# %% [markdown]
# # 6.3.6 TorchScript export, and its successor `torch.export`
#
# A `state_dict` needs the Python class that defines the model. *Exporting* writes the model's
# computation itself into the file, so the file runs without that class: in another Python
# process, in C++, on a server. The chapter does this with TorchScript, which current PyTorch has
# deprecated in favour of `torch.export`. This notebook runs the chapter's code, shows where it
# breaks, and does the same job with `torch.export`.
#
# ## What you will learn
#
# - tracing (`torch.jit.trace`) versus scripting (`torch.jit.script`), and why the chapter's
#   `ConditionalModel` fails to script as written;
# - the tracing pitfall: a data-dependent `if` is silently baked into a trace;
# - that TorchScript is deprecated, and what is still true of the chapter's four advantages;
# - `torch.export`: a dynamic batch dimension, `.pt2` files, and `torch.cond` for branches;
# - proof that each file is self-contained: it runs in a fresh Python process without the class.
#
# ## Prerequisites
#
# Chapter 6.3.1 (`01_state_dict.ipynb`): `state_dict`, `model.eval()`.

# %%
from course_lib import notebook

device, workdir = notebook.start("6.3.6")

# %% [markdown]
# ## Tracing
#
# The chapter traces an image model with a 3×224×224 input. The course's `SmallCNN` (two
# convolutions with BatchNorm, dropout, and an adaptive pooling layer, so it accepts 224×224 as
# well as its usual 32×32) stands in for it. The chapter's code, as written (files go to
# `workdir`):

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
# The recorded graph is readable:

# %%
image_model = model  # keep the traced SmallCNN: the chapter reuses the name `model` below
print(loaded_model.code)

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
# The trace answers `-2` where the model answers `+1`: it always doubles. The only sign of trouble
# was a `TracerWarning`, easy to miss in a log. Scripting keeps the branch:

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
# | 1. **Independent of Python**: runs in C++ | Yes, through LibTorch's `torch::jit::load`. But TorchScript is deprecated; the current C++ route is `torch.export` plus AOTInductor (`torch._inductor.aoti_compile_and_package`), or ONNX with onnxruntime's C/C++ API (chapter 6.3.7). |
# | 2. **Optimisation** by the JIT compiler | Partly: the JIT fuses some operations (`torch.jit.freeze` folds BatchNorm into convolutions). Today's optimiser is `torch.compile`; 6.3.7 measures how fast each format runs. |
# | 3. **Portable**: needs no original model definition | Yes, and so do `torch.export`'s `.pt2` and ONNX: shown live at the end of this notebook. |
# | 4. **Production deployment** on servers | TorchScript files still load, but serving stacks have moved on to `torch.export`/AOTInductor, ONNX Runtime and TensorRT. |
#
# ## `torch.export`, TorchScript's successor
#
# `torch.export.export` captures the whole model as a graph of ATen operations, checking every
# assumption it makes about the input. A batch dimension must be declared dynamic, or the program
# only accepts the example's batch size. `course_lib.export.export_program` declares it (and,
# because torch.export treats a size-1 dimension as fixed, repeats an example batch of 1 to 2):

# %%
cnn = image_model  # the SmallCNN traced above, now with torch.export
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
# The fix is to say "both branches, chosen at run time" with `torch.cond(predicate, true_fn,
# false_fn, operands)`:


# %%
class SignBranchCond(nn.Module):
    def forward(self, x):
        return torch.cond(x.sum() > 0, lambda t: t * 2, lambda t: -t, (x,))


program_cond = export.export_program(SignBranchCond().eval(), positive, workdir / "sign_cond.pt2")
module_cond = program_cond.module()
for name, x in (("positive", positive), ("negative", negative)):
    print(f"{name}: max |exported - eager| = {(module_cond(x) - eager(x)).abs().max().item()}")

# %% [markdown]
# ## Each file runs without the class
#
# The chapter's third advantage, checked: `export.run_all_in_fresh_process` starts a new Python
# process in which the course's package cannot even be imported (and the classes defined in this
# notebook do not exist), loads each file with `torch.jit.load` or `torch.export.load`, runs it on
# the given inputs and sends the outputs back.

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
runs = export.run_all_in_fresh_process(jobs)
for run, want in zip(runs, expected, strict=True):
    same = torch.allclose(run.outputs[0], want, atol=1e-5)
    print(
        f"{run.path.name:18s} loaded by {run.kind:12s} output {tuple(run.outputs[0].shape)}, matches: {same}"
    )
print("course_lib modules imported by the fresh process:", list(runs[0].course_modules_imported))

# %% [markdown]
# ## Exercises
#
# - Trace `SignBranch` on a *negative* input and find the inputs on which it is wrong.
# - Export `ConditionalModel` with `export.export_program(..., kwargs={"use_relu": False})` and
#   check which branch the program keeps. Why is a Python `bool` fixed at export time?
# - Exercise 2 in `exercises/` exports a model to ONNX and verifies it (chapter 6.3.7).
#
# ## Conclusion
#
# - Tracing records one run: fast and simple, but a data-dependent `if` is baked in with only a
#   `TracerWarning`. Scripting compiles the source, and needs type annotations (`use_relu: bool`).
# - TorchScript is deprecated; `torch.export` does the same job with a dynamic batch dimension,
#   refuses a data-dependent `if` instead of guessing, and keeps both branches with `torch.cond`.
# - TorchScript and `.pt2` files both run without the model's class. Next, 6.3.7 exports to ONNX,
#   which runs without PyTorch at all.
