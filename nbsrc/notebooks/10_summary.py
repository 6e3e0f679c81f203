# %% [markdown]
# # Summary: the card
#
# The save/load pairs to keep, in plain PyTorch. Deeper:
# [10b_physicists_view](10b_physicists_view.ipynb), a simulation whose snapshot is exact only with
# its random number generator, and export as compilation.

# %%
from course_lib import notebook

device, workdir = notebook.start("summary")
import torch  # noqa: F401 (the card and the exercise use it)

# %% [markdown]
# ## The card
#
# **`state_dict`**, the way to save a model (6.3.1):
# ```python
# torch.save(model.state_dict(), "model.pth")
# model = MyModel()  # build the model first, then fill it
# model.load_state_dict(torch.load("model.pth", weights_only=True))
# ```
# **Whole model**, and why not: it pickles a reference to your class (a rename breaks it) and
# loading runs pickle's code: trusted files only (6.3.2):
# ```python
# torch.save(model, "whole.pth")
# model = torch.load("whole.pth", weights_only=False)  # needs MyModel importable, as saved
# model.eval()
# ```
# **Training checkpoint**, to resume exactly (6.3.3):
# ```python
# state = {"epoch": epoch, "model": model.state_dict(), "opt": opt.state_dict()}
# torch.save({**state, "rng": torch.get_rng_state()}, "ckpt.pth")
# ckpt = torch.load("ckpt.pth", weights_only=True)  # then load_state_dict each, set_rng_state
# ```
# **Several models in one file** (6.3.3):
# ```python
# torch.save({"gen": gen.state_dict(), "disc": disc.state_dict()}, "gan.pth")
# both = torch.load("gan.pth", weights_only=True)
# gen.load_state_dict(both["gen"]), disc.load_state_dict(both["disc"])
# ```
# **Across devices** (6.3.3); the RNG state goes back to the CPU:
# ```python
# ckpt = torch.load("ckpt.pth", map_location=device, weights_only=True)
# model.to(device).load_state_dict(ckpt["model"])
# torch.set_rng_state(ckpt["rng"].cpu())
# ```
# **Partial load**, a new head on a pretrained backbone (6.3.4):
# ```python
# own, pretrained = model.state_dict(), torch.load("model.pth", weights_only=True)
# fits = {k: v for k, v in pretrained.items() if k in own and v.shape == own[k].shape}
# print(model.load_state_dict(fits, strict=False))  # read the missing keys
# ```
# **Wrappers' prefixes**: `DataParallel`/DDP add `module.`, `torch.compile` adds `_orig_mod.` (6.3.5):
# ```python
# from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present
# wrapped = torch.load("wrapped.pth", weights_only=True)
# consume_prefix_in_state_dict_if_present(wrapped, "module.")  # in place, keeps _metadata
# ```
# **Export**, to run without the class (6.3.6, 6.3.7); a `.pt2` is code, load trusted files only:
# ```python
# torch.export.save(torch.export.export(model.eval(), (example,)), "model.pt2")
# exported = torch.export.load("model.pt2").module()
# print(torch.equal(exported(example), model(example)))
# ```
# Never save over your only good checkpoint: temporary file, `fsync`, `os.replace` (6.3.9).

# %% [markdown]
# ## Exercise
#
# Save a model and the torch RNG; load with `map_location=device`; restore both.
#
# <details><summary>Solution (run it)</summary>
#
# ```python
# model = torch.nn.Linear(4, 2).to(device)
# torch.save({"model": model.state_dict(), "rng": torch.get_rng_state()}, workdir / "ckpt.pth")
# ckpt = torch.load(workdir / "ckpt.pth", map_location=device, weights_only=True)
# model.load_state_dict(ckpt["model"])
# torch.set_rng_state(ckpt["rng"].cpu())  # whatever map_location did: a CPU ByteTensor
# ```
#
# </details>
