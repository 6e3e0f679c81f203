# %% [markdown]
# # Exercise 3: load weights partially from a pretrained model
#
# Chapter 6.3.4's third exercise. A model pretrained on one task has a backbone worth keeping and a
# head that does not fit the new task (another number of classes). Write the loader that takes
# every weight that fits and reports the rest.
#
# **Your task.** Complete `load_matching_weights(model, state_dict)` so that it
#
# 1. copies every entry of `state_dict` whose name exists in `model.state_dict()` *and* whose shape
#    is equal;
# 2. leaves every other entry of the model exactly as it was;
# 3. never raises because of a missing, unexpected or mis-shaped key;
# 4. returns a dictionary with two sorted lists: `"loaded"` (the names it copied) and `"skipped"`
#    (the names in `state_dict` that it did not copy).
#
# Run all cells (**Run ▸ Run All Cells**): they try it on a backbone pretrained for 10 classes
# with a new head for 3, and the last one checks your answer (the grader checks more). The course's version, for afterwards:
# `course_lib.state_dict.load_partial_state_dict`.

# %%
import torch
from torch import nn


# %%
def load_matching_weights(model: nn.Module, state_dict: dict) -> dict:
    """Copy the entries of state_dict that fit model; return {'loaded': [...], 'skipped': [...]}."""
    # BEGIN SOLUTION
    own = model.state_dict()
    fitting = {k: v for k, v in state_dict.items() if k in own and own[k].shape == v.shape}
    own.update(fitting)
    model.load_state_dict(own)
    return {
        "loaded": sorted(fitting),
        "skipped": sorted(k for k in state_dict if k not in fitting),
    }
    # END SOLUTION


# %%
def make_classifier(num_classes):
    return nn.Sequential(
        nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, num_classes)
    )


torch.manual_seed(0)
pretrained = make_classifier(10)
model = make_classifier(3)
report = load_matching_weights(model, pretrained.state_dict())
print(report)

# %%
assert report["loaded"] == ["0.bias", "0.weight", "2.bias", "2.weight"], report
assert report["skipped"] == ["4.bias", "4.weight"], report
assert torch.equal(model[0].weight, pretrained[0].weight)
print("self-check passed")
