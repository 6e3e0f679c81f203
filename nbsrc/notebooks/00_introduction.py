# %% [markdown]
# # 6.3 Saving and Loading Models — Introduction
#
# A model that took hours to train is only as valuable as the file it is saved in. This course
# follows chapter 6.3 of a deep-learning course for physicists, section by section, brought up to
# date with PyTorch 2.x: the ways to save and load, the `state_dict`, checkpoints that resume
# exactly, export for deployment, and what current PyTorch changed (`weights_only=True`, atomic
# saves, distributed checkpoints). Everything runs here, on the CPU in seconds or on a GPU.
# Prerequisites: Python and basic PyTorch (tensors, `nn.Module`, a training loop).
#
# Every notebook starts with this line. It picks CUDA, else Apple's MPS, else the CPU (set
# `COURSE_DEVICE=cpu` before starting JupyterLab to choose):

# %%
from course_lib import notebook

device, workdir = notebook.start("intro")

# %% [markdown]
# ## The map
#
# **The core path**, at most three hours once finished: the chapter's sections in order, each a short page (the
# chapter's code, what current PyTorch changed, the correct way, one exercise), and three graded
# exercises, where you write a partial load, a checkpoint that resumes exactly, and an atomic
# save. In order, with the minutes `tools/course_length.py` estimates for each:
#
# | step | section | minutes |
# |---|---|---|
# | [`00_introduction`](00_introduction.ipynb) | intro | 4 |
# | [`01_state_dict`](01_state_dict.ipynb) | 6.3.1 | 11 |
# | [`02_whole_model`](02_whole_model.ipynb) | 6.3.2 | 12 |
# | [`03_checkpoints`](03_checkpoints.ipynb) | 6.3.3 | 22 |
# | [`04_mismatched_state_dict`](04_mismatched_state_dict.ipynb) | 6.3.4 | 11 |
# | [`05_data_parallel`](05_data_parallel.ipynb) | 6.3.5 | 17 |
# | [`06_torchscript`](06_torchscript.ipynb) | 6.3.6 | 11 |
# | [`07_onnx`](07_onnx.ipynb) | 6.3.7 | 11 |
# | [`08_checkpoint_manager`](08_checkpoint_manager.ipynb) | 6.3.8 | 9 |
# | [`09_safe_saving`](09_safe_saving.ipynb) | 6.3.9 | 11 |
# | [`10_summary`](10_summary.ipynb) | summary | 10 |
# | [`ex3_partial_loading`](../exercises/ex3_partial_loading.ipynb) | exercise 6.3.4 | 9 |
# | [`ex7_exact_resume`](../exercises/ex7_exact_resume.ipynb) | exercise 6.3.3 | 20 |
# | [`ex6_atomic_save`](../exercises/ex6_atomic_save.ipynb) | exercise 6.3.9 | 14 |
# | total | | 171 |
#
# **No time?** [`01a_fast_path`](01a_fast_path.ipynb): the five essentials in about 40 minutes.
#
# **Deeper notebooks**, linked from where they matter; nothing on the core path needs them:
#
# - [`01b_big_models`](01b_big_models.ipynb): `state_dict` details; models too big to hold twice
# - [`02b_safe_formats`](02b_safe_formats.ipynb): safetensors, allow-lists, state without pickle
# - [`03b_resume_in_depth`](03b_resume_in_depth.ipynb): the chapter's training loop, resuming in depth
# - [`04b_partial_loading_in_depth`](04b_partial_loading_in_depth.ipynb): more partial loading
# - [`05b_torchrun_elastic`](05b_torchrun_elastic.ipynb): torchrun, elastic restarts, resharding
# - [`06b_export_in_depth`](06b_export_in_depth.ipynb): AOTInductor, exported programs in detail
# - [`07b_onnx_latency`](07b_onnx_latency.ipynb): ONNX Runtime against PyTorch, measured
# - [`08b_retention_async`](08b_retention_async.ipynb): retention policies, asynchronous saves
# - [`09b_durability_in_depth`](09b_durability_in_depth.ipynb): crash safety, measured
#
# Cells marked **"fails on purpose"** show an error you would meet in real life: the red
# traceback is the lesson. The graded exercises are in `exercises/`; check one as your teacher's
# grader will with `./course check exercises/ex3_partial_loading.ipynb`. The helper library
# `course_lib` beside the notebooks holds the chapter's functions, done properly.
#
# Start with [`01_state_dict`](01_state_dict.ipynb).
#
# ## Further reading
#
# - PyTorch tutorial: [Saving and loading models](https://pytorch.org/tutorials/beginner/saving_loading_models.html)
