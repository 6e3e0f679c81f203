# %% [markdown]
# # The fast path: five things everyone must know (about 40 minutes)
#
# No time for the whole chapter? Read this notebook alone, top to bottom. Each of the five things
# below is the shortest correct code: the raw PyTorch call first, then the `course_lib` helper
# that wraps it (with the checks a real project wants), and a link to the chapter notebook that
# goes deeper.
#
# | | the rule | deeper |
# |---|---|---|
# | 1 | save the `state_dict`, not the model | [`01_state_dict`](01_state_dict.ipynb), [`02_whole_model`](02_whole_model.ipynb) |
# | 2 | load with `weights_only=True` and `map_location` | [`01_state_dict`](01_state_dict.ipynb), [`02_whole_model`](02_whole_model.ipynb) |
# | 3 | a training checkpoint holds everything, RNG states included | [`03_checkpoints`](03_checkpoints.ipynb) |
# | 4 | save atomically: temporary file, `fsync`, `os.replace` | [`09_safe_saving`](09_safe_saving.ipynb) |
# | 5 | deploy an exported program (`torch.export`, ONNX), loaded only from a trusted source | [`06_torchscript`](06_torchscript.ipynb), [`07_onnx`](07_onnx.ipynb) |

# %%
from course_lib import notebook

device, workdir = notebook.start("fast_path")

# %%
import os

import torch
from torch import nn

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 5)).to(device)
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=10)

# %% [markdown]
# ## 1. Save the `state_dict`
#
# A `state_dict` is a dictionary from names to tensors: the weights and buffers, nothing else.
# It loads into any instance of the model's class. A pickled *whole model* (`torch.save(model)`)
# also stores where the class lives, and breaks when the code moves (and see 2).

# %%
torch.save(model.state_dict(), workdir / "model.pth")

fresh = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 5)).to(device)
print(fresh.load_state_dict(torch.load(workdir / "model.pth", weights_only=True)))
fresh.eval()  # before inference: Dropout off, BatchNorm uses its running statistics
print(
    "same weights:",
    all(torch.equal(a, b) for a, b in zip(model.parameters(), fresh.parameters(), strict=True)),
)

# %% [markdown]
# ## 2. Load with `weights_only=True` and `map_location`
#
# `torch.load` unpickles, and unpickling can run any code the file names. With
# `weights_only=True` (the default since PyTorch 2.6; write it anyway, older versions are out
# there) it only rebuilds tensors and plain containers. `map_location` puts the tensors where you
# want them, whatever device saved them: a file saved on a GPU loads on a laptop.

# %%
state = torch.load(workdir / "model.pth", map_location="cpu", weights_only=True)
print({name: tuple(t.shape) for name, t in state.items()})
print("on:", {t.device.type for t in state.values()})

# %% [markdown]
# A whole pickled model is refused under `weights_only=True`: the file names a class to import,
# which is exactly what a malicious file would do (**this cell fails on purpose**):

# %% tags=["raises-exception"]
torch.save(model, workdir / "whole_model.pth")
torch.load(workdir / "whole_model.pth", weights_only=True)

# %% [markdown]
# `course_lib.safe_io.safe_load` is the same load (`weights_only=True`, a CRC check of the
# file) with errors that say what is wrong with the file and what to do:

# %%
from course_lib.safe_io import safe_load

state = safe_load(workdir / "model.pth", map_location=device)
print(len(state), "tensors on", next(iter(state.values())).device.type)

# %% [markdown]
# ## 3. A training checkpoint holds everything
#
# To resume training as if it never stopped: the model, the optimizer (Adam's moments), the
# scheduler, the epoch, the best metric, and the random number generators (they decide the data
# order and dropout). Store plain values (floats, not NumPy scalars) so it loads with
# `weights_only=True`.

# %%
import random

import numpy as np


def rng_states():
    """Every RNG as plain lists and numbers: loads with weights_only=True, whatever map_location."""
    version, internal, gauss_next = random.getstate()
    name, key, *rest = np.random.get_state()
    cuda = [s.tolist() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else []
    return {
        "python": [version, list(internal), gauss_next],
        "numpy": [name, key.tolist(), *rest],
        "torch": torch.get_rng_state().tolist(),
        "cuda": cuda,
    }


def restore_rng_states(rng):
    version, internal, gauss_next = rng["python"]
    random.setstate((version, tuple(internal), gauss_next))
    name, key, *rest = rng["numpy"]
    np.random.set_state((name, np.array(key, dtype=np.uint32), *rest))
    torch.set_rng_state(torch.tensor(rng["torch"], dtype=torch.uint8))  # a CPU ByteTensor
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in rng["cuda"]])


# %%
checkpoint = {
    "epoch": 4,
    "model": model.state_dict(),
    "optimizer": optimizer.state_dict(),
    "scheduler": scheduler.state_dict(),
    "best_val_loss": 0.25,
    "rng": rng_states(),
}
torch.save(checkpoint, workdir / "checkpoint.pth")

restored = torch.load(workdir / "checkpoint.pth", map_location=device, weights_only=True)
model.load_state_dict(restored["model"])
optimizer.load_state_dict(restored["optimizer"])
scheduler.load_state_dict(restored["scheduler"])
restore_rng_states(restored["rng"])
print("resume at epoch", restored["epoch"] + 1, "with the RNGs of", list(restored["rng"]))

# %% [markdown]
# The RNG states are lists, not tensors: `map_location=device` moves every tensor in the file,
# and `torch.set_rng_state` refuses a state that is not a CPU ByteTensor. `course_lib.checkpoint`
# keeps the chapter's calls, stores every RNG (Python, NumPy, torch, each CUDA device), converts
# NumPy numbers to plain ones and writes atomically (4). Notebook 03 kills a
# real training process and shows the resumed run equal, bit for bit, to one never interrupted.

# %%
from course_lib import checkpoint as ckpt

ckpt.save_checkpoint(model, optimizer, scheduler, 4, 0.25, workdir / "ours.pth")
epoch, loss = ckpt.load_checkpoint(workdir / "ours.pth", model, optimizer, scheduler, device)
print(f"epoch {epoch}, loss {loss}")
print("RNGs stored:", list(safe_load(workdir / "ours.pth")["rng"]))

# %% [markdown]
# ## 4. Save atomically
#
# `torch.save(obj, path)` empties `path` and then writes it: a crash in between destroys the
# checkpoint you had. Write a temporary file in the same folder, `fsync` it to the disk, then
# `os.replace` it over the target (atomic: readers see the old file or the new one, never half),
# `fsync` the folder, and remove the temporary file if anything fails.

# %%
import tempfile
from pathlib import Path


def atomic_save(obj, target):
    target = Path(target)
    # A unique name in the same folder: two writers never collide, and the rename stays atomic.
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)  # a failed save leaves the old file, nothing else
        raise
    if os.name == "posix":  # fsync the folder: the rename itself reaches the disk (not on Windows)
        folder = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


atomic_save(model.state_dict(), workdir / "model.pth")
print(sorted(p.name for p in workdir.iterdir() if p.name.startswith(("model", ".model"))))

# %% [markdown]
# `safe_save` is the same write, keeping the permissions a plain save would give, with errors
# that name the fix (disk full, no permission). Notebook 09 kills a save half-way to show the
# difference; `save_with_backup` keeps the previous file too.

# %%
from course_lib.safe_io import safe_save

safe_save(model.state_dict(), workdir / "model.pth")
print("loads:", len(safe_load(workdir / "model.pth")), "tensors")

# %% [markdown]
# ## 5. Export for deployment
#
# A `state_dict` needs your Python class to run. For deployment, export a program: its graph and
# weights in one file that runs without the class. A program is code, though: a `.pt2` archive can
# itself carry pickles and native code (`torch.export.load` falls back to `weights_only=False` for
# parts of it, and loads AOTInductor libraries). Load programs only from a trusted source; for
# weights you do not trust, use safetensors or ONNX. `torch.export` is PyTorch's current way
# (TorchScript is deprecated); declare which dimensions may vary, here the batch:

# %%
from torch.export import Dim

model.eval()
example = (torch.randn(4, 10, device=device),)
program = torch.export.export(model, example, dynamic_shapes=({0: Dim("batch")},))
torch.export.save(program, workdir / "model.pt2")

loaded = torch.export.load(workdir / "model.pt2").module()
x = torch.randn(7, 10, device=device)
print("same output at batch 7:", torch.allclose(loaded(x), model(x)))

# %% [markdown]
# For runtimes without PyTorch (onnxruntime in C++, C#, Java, a browser), export to ONNX, in one
# file (`external_data=False`), with the same dynamic batch; then check it with onnxruntime:

# %%
import warnings

import onnxruntime as ort

# torch 2.13's ONNX exporter warns about its own internals (a deprecated LeafSpec check).
warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)

cpu_model = model.to("cpu")
torch.onnx.export(
    cpu_model,
    (torch.randn(4, 10),),
    workdir / "model.onnx",
    dynamo=True,
    dynamic_shapes=({0: Dim("batch")},),
    external_data=False,
    verbose=False,
)
session = ort.InferenceSession(workdir / "model.onnx", providers=["CPUExecutionProvider"])
x = torch.randn(3, 10)
(onnx_out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
print("onnxruntime agrees:", torch.allclose(torch.from_numpy(onnx_out), cpu_model(x), atol=1e-5))

# %% [markdown]
# `course_lib.export.onnx_export.export_onnx(model, example, path)` makes the same call (dynamic batch
# by default, one file, the exporter's log quieted, written atomically), and `verify_onnx`
# checks a file: ONNX's own checker, then onnxruntime against the model at several batch sizes.
# Notebook 07 uses both and measures the speed of each format.

# %%
from course_lib.export.onnx_export import verify_onnx

print(verify_onnx(workdir / "model.onnx", cpu_model, (torch.randn(4, 10),)))

# %% [markdown]
# ## What to read next
#
# - All of it, in order: [`01_state_dict`](01_state_dict.ipynb) onwards.
# - Only what you need now: the table at the top links each rule to its chapter. Notebook
#   [`05_data_parallel`](05_data_parallel.ipynb) matters once you train on several GPUs, and
#   [`08_checkpoint_manager`](08_checkpoint_manager.ipynb) once a run keeps many checkpoints.
#
# ## Further reading
#
# - PyTorch tutorial: [Saving and loading models](https://pytorch.org/tutorials/beginner/saving_loading_models.html)
# - PyTorch docs: [`torch.load`](https://pytorch.org/docs/stable/generated/torch.load.html)
#   (`weights_only`, `map_location`, `mmap`) and [Serialization semantics](https://pytorch.org/docs/stable/notes/serialization.html)
# - PyTorch tutorial: [Saving and loading a general checkpoint](https://pytorch.org/tutorials/recipes/recipes/saving_and_loading_a_general_checkpoint.html)
# - PyTorch docs: [`torch.export`](https://pytorch.org/docs/stable/export.html) and
#   [`torch.onnx`](https://pytorch.org/docs/stable/onnx.html); tutorial:
#   [Export a model to ONNX](https://pytorch.org/tutorials/beginner/onnx/export_simple_model_to_onnx_tutorial.html)
