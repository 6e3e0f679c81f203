# %% [markdown]
# # 6.3 Saving and Loading Models — Introduction
#
# Saving and loading models correctly is a key step in every deep-learning workflow. A model that
# took hours to train is only as valuable as the file it is saved in: if that file cannot be read
# back (on another machine, with another PyTorch version, after a crash), the training is lost.
#
# This course follows chapter 6.3 of a deep-learning course for physicists, section by section,
# and brings it up to date with PyTorch 2.x. Every example runs here, in this notebook, on your
# machine: on the CPU in seconds, or on a GPU if you have one.
#
# ## What you will learn
#
# - the different ways to save and load a model, and which one to use;
# - the structure of a `state_dict`;
# - complete checkpoint management: resume training exactly where it stopped;
# - exporting a model for deployment (TorchScript and its successor `torch.export`, ONNX);
# - and, beyond the original chapter, what changed in current PyTorch: `torch.load`'s
#   `weights_only=True` default (a security fix), atomic saves that survive a crash,
#   and distributed checkpoints.
#
# ## Prerequisites
#
# Python, and the basics of PyTorch: tensors, `nn.Module`, a training loop with an optimizer.

# %% [markdown]
# ## How to use this course
#
# **No time?** Read [`01a_fast_path`](01a_fast_path.ipynb) alone (15 minutes): the five things
# everyone must know about saving and loading, each with its shortest correct code and a link to
# the notebook that goes deeper.
#
# | notebook | section | what it covers |
# |---|---|---|
# | [`01_state_dict`](01_state_dict.ipynb) | 6.3.1 | what a `state_dict` is; the recommended save/load; `map_location` |
# | [`01a_fast_path`](01a_fast_path.ipynb) | all | the five essentials in 15 minutes |
# | [`02_whole_model`](02_whole_model.ipynb) | 6.3.2 | pickling a whole model, why it breaks, and why it is a security risk |
# | [`03_checkpoints`](03_checkpoints.ipynb) | 6.3.3 | full training checkpoints; resuming an interrupted run exactly |
# | [`04_mismatched_state_dict`](04_mismatched_state_dict.ipynb) | 6.3.4 | partial loading for transfer learning; renaming keys |
# | [`05_data_parallel`](05_data_parallel.ipynb) | 6.3.5 | *optional*: the `module.` prefix; `DistributedDataParallel`; sharded checkpoints (for training on several GPUs) |
# | [`06_torchscript`](06_torchscript.ipynb) | 6.3.6 | TorchScript (deprecated) and its successor `torch.export` |
# | [`07_onnx`](07_onnx.ipynb) | 6.3.7 | exporting to ONNX and checking it with onnxruntime |
# | [`08_checkpoint_manager`](08_checkpoint_manager.ipynb) | 6.3.8 | a checkpoint manager: numbered, atomic, with retention policies (steps 1 to 3 are the core; the later steps, on retention policies, damaged files and big models, are *optional*) |
# | [`09_safe_saving`](09_safe_saving.ipynb) | 6.3.9 | saves that survive a crash (steps 1 to 3 are the core; step 4's measurement and step 5's checksums are *optional*) |
# | [`10_summary`](10_summary.ipynb) | summary | a physicist's view |
#
# *Optional* marks what a first reading can skip: it matters once you train on several GPUs,
# keep many checkpoints, or want to see the costs measured. Nothing later depends on it.
#
# Each chapter notebook follows the same shape: what you will learn, the steps (the chapter's own
# code first, run as written, then the corrected version where PyTorch has changed), and a
# conclusion. Run the cells from top to bottom (**Run ▸ Run All Cells** works too).
#
# Cells marked **"this cell fails on purpose"** show an error that you would meet in real life:
# the red traceback below them is the lesson, not a bug in the course.
#
# **Exercises.** The folder `exercises/` holds six notebooks for you to complete (6.3.2, 6.3.4,
# 6.3.5, 6.3.7, 6.3.8 and 6.3.9). Each ends with a self-check cell. To check an exercise as your
# teacher's grader will run it, from a terminal in the course folder:
# `./course check exercises/ex3_partial_loading.ipynb`. It runs the notebook top to bottom in a fresh
# kernel, lists the cells that failed and says whether the self-check passed; where your teacher's
# hidden checks are installed it runs those too, and where they are not it tells you so.
#
# **The helper library.** The chapter's functions live, done properly, in the small package
# `course_lib` beside the notebooks (`course_lib/checkpoint.py`, `course_lib/state_dict.py`, ...).
# The notebooks call it, as d2l's notebooks call `d2l`; open its files to read the code.

# %% [markdown]
# ## Which device am I on?
#
# Every notebook starts with the same line. It chooses CUDA when available, else Apple's MPS,
# else the CPU; set the environment variable `COURSE_DEVICE` (e.g. `COURSE_DEVICE=cpu`) before
# starting JupyterLab to override the choice.

# %%
from course_lib import notebook

device, workdir = notebook.start("intro")
print("Files written by this notebook go to:", workdir)

# %%
import torch

x = torch.randn(3, 3, device=device)
print("a tensor lives on a device:", x.device.type)
print(
    "PyTorch version is 2.6 or newer:", tuple(map(int, torch.__version__.split(".")[:2])) >= (2, 6)
)

# %% [markdown]
# ## Conclusion
#
# You are set up. Start with [`01_state_dict`](01_state_dict.ipynb), or, short of time, with
# [`01a_fast_path`](01a_fast_path.ipynb).

# %% [markdown]
# ## Further reading
#
# - PyTorch tutorial: [Saving and loading models](https://pytorch.org/tutorials/beginner/saving_loading_models.html),
#   the official overview of what this course covers in depth
# - PyTorch docs: [Serialization semantics](https://pytorch.org/docs/stable/notes/serialization.html)
# - PyTorch docs: [CUDA semantics](https://pytorch.org/docs/stable/notes/cuda.html) and
#   [MPS backend](https://pytorch.org/docs/stable/notes/mps.html) (the devices `notebook.start` chooses from)
