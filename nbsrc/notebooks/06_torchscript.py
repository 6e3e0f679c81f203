# %% [markdown]
# # 6.3.6 TorchScript export, and its successor `torch.export`
#
# A `state_dict` needs the model's Python class. *Exporting* writes the computation itself into
# the file, so it runs without the class: in another process, in C++, on a server. The chapter
# uses TorchScript, which current PyTorch deprecates in favour of `torch.export`. Prerequisite:
# `01_state_dict`. Deeper: [06b_export_in_depth](06b_export_in_depth.ipynb) (reading the graph,
# the tracing pitfall, `torch.cond`, AOTInductor, each file run in a fresh process).
#
# An exported file can be **code**: a TorchScript file runs its code at `torch.jit.load`; a `.pt2`
# archive may hold pickles (which `torch.export.load` retries with `weights_only=False`) or
# compiled native libraries (which it loads); an AOTInductor package is a shared library. Load them
# only from a source you trust: the course's loaders (`export.load_torchscript`, `load_program`,
# `load_aoti_package`) refuse such a file unless you pass `trusted=True`.
#
# The chapter traces its model with a 3×224×224 image, but its model is 6.3.1's MLP, which takes
# 10 features. As written it **fails, on purpose**:

# %%
from course_lib import notebook

device, workdir = notebook.start("6.3.6")

import torch

from course_lib import export
from course_lib.models import ConditionalModel, SmallCNN, make_mlp

# %% tags=["raises-exception"]
model = make_mlp().eval()  # Linear(10, 20), ReLU, Linear(20, 5)
example_input = torch.randn(1, 3, 224, 224)
traced_model = torch.jit.trace(model, example_input)

# %% [markdown]
# ## Tracing and scripting
#
# An image model stands in: `SmallCNN` (BatchNorm, dropout, and adaptive pooling, so 224×224
# works). Tracing runs it once and records the operations; the chapter saves and loads the trace.
# Scripting compiles `forward`'s source instead, `if`s included, and needs type annotations
# (`use_relu: bool`; the chapter's unannotated version fails, see 06b). Both are deprecated.

# %%
model = SmallCNN().to(device).eval()
example_input = torch.randn(1, 3, 224, 224, device=device)
traced_model = torch.jit.trace(model, example_input)
traced_model.save(str(workdir / "model_traced.pt"))
loaded_model = torch.jit.load(str(workdir / "model_traced.pt"))
same = torch.allclose(loaded_model(example_input), model(example_input), atol=1e-5)
print("loaded trace == model:", same)
print(torch.jit.script(ConditionalModel().eval()).code)

# %% [markdown]
# ## `torch.export`, the successor
#
# `torch.export.export` captures the model as a graph of ATen operations and checks its
# assumptions. Declare the batch dynamic (with an example batch of 2: a size-1 dimension is
# fixed), save a `.pt2`, and load it without the class. `course_lib.export.export_program` wraps
# the call (eval mode, `dynamic_shapes` from `forward`'s argument names, batch 1 repeated to 2):

# %%
args = (example_input.repeat(2, 1, 1, 1),)
program = torch.export.export(model, args, dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
torch.export.save(program, workdir / "model.pt2")
x5 = torch.randn(5, 3, 224, 224, device=device)
loaded = torch.export.load(workdir / "model.pt2").module()
print("batch 5, loaded program == model:", torch.allclose(loaded(x5), model(x5), atol=1e-5))

program = export.export_program(model, example_input, workdir / "model.pt2")
print("input shapes (None = dynamic):", export.program_input_shapes(program))

# %% [markdown]
# ## Exercise
#
# Export the chapter's MLP with `export_program` and check a batch of 7 against the model.
#
# <details><summary>Solution (run it: the assert checks it)</summary>
#
# ```python
# mlp = make_mlp().eval()
# mlp_program = export.export_program(mlp, torch.randn(1, 10))
# x7 = torch.randn(7, 10)
# assert torch.allclose(mlp_program.module()(x7), mlp(x7), atol=1e-6)
# ```
#
# </details>
#
# **Conclusion.** Trace or script (deprecated), or `torch.export` with a dynamic batch; trust
# what you load. Next: `07_onnx`, which runs without PyTorch at all.
