"""export.modes: every export runs in eval mode, with a warning naming what was training, and
leaves each submodule's mode flag and every buffer as it found them."""

from __future__ import annotations

import warnings

import pytest
import torch
from export_models import trained_cnn
from torch import nn

from course_lib import export
from course_lib.export import onnx_export
from course_lib.models import make_mlp


def test_training_mode_is_exported_in_eval_mode_with_a_warning():
    model = trained_cnn().train()
    x = torch.randn(3, 3, 32, 32)
    with pytest.warns(export.TrainingModeWarning, match="eval mode instead"):
        program = export.export_program(model, x)
    assert model.training, "the caller's model must be put back in training mode"
    with pytest.warns(export.TrainingModeWarning):
        traced = export.trace_model(model, x)
    model.eval()
    with torch.inference_mode():
        expected = model(x)
        torch.testing.assert_close(program.module()(x), expected)
        torch.testing.assert_close(traced(x), expected)


def test_eval_mode_export_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error", export.TrainingModeWarning)
        export.export_program(make_mlp().eval(), torch.randn(2, 10))


# ---- issue 11: mode flags and buffers left as found ----------------------------------------------


def _flags(model: nn.Module) -> dict[str, bool]:
    return {name: module.training for name, module in model.named_modules()}


def _fine_tuning_cnn() -> nn.Module:
    """Training, with its BatchNorms frozen in eval mode (as when fine-tuning a backbone)."""
    model = trained_cnn().train()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eval()
    return model


def _onnx(model, x, path):
    return onnx_export.export_onnx(model, x, path)


@pytest.mark.parametrize(
    "helper",
    [
        lambda m, x, p: export.trace_model(m, x),
        lambda m, x, p: export.script_model(m),
        lambda m, x, p: export.export_program(m, x),
        lambda m, x, p: _onnx(m, x, p / "m.onnx"),
    ],
    ids=["trace", "script", "export", "onnx"],
)
def test_every_submodules_mode_is_restored_exactly(tmp_path, helper):
    model = _fine_tuning_cnn()
    before = _flags(model)
    assert not before["features.1"] and before[""]  # a frozen BatchNorm in a training model
    with pytest.warns(export.TrainingModeWarning):
        helper(model, torch.randn(2, 3, 32, 32), tmp_path)
    assert _flags(model) == before, "the frozen BatchNorm was unfrozen (model.train())"


def test_an_eval_model_with_a_training_dropout_is_named_and_exported_without_dropout():
    model = trained_cnn().eval()
    model.classifier[1].train()  # the Dropout, easy to miss
    x = torch.randn(4, 3, 32, 32)
    with pytest.warns(export.TrainingModeWarning, match=r"classifier\.1 \(Dropout\)"):
        program = export.export_program(model, x)
    with pytest.warns(export.TrainingModeWarning, match=r"classifier\.1 \(Dropout\)"):
        traced = export.trace_model(model, x)
    assert model.classifier[1].training and not model.training
    model.classifier[1].eval()
    with torch.inference_mode():
        expected = model(x)
        torch.testing.assert_close(program.module()(x), expected)
        torch.testing.assert_close(traced(x), expected)


def test_trace_leaves_a_training_batchnorms_running_statistics_alone():
    model = trained_cnn().eval()
    model.features[1].train()
    before = {name: b.clone() for name, b in model.named_buffers()}
    with pytest.warns(export.TrainingModeWarning, match=r"features\.1 \(BatchNorm2d\)"):
        export.trace_model(model, torch.randn(4, 3, 32, 32) * 3 + 1)
    after = dict(model.named_buffers())
    for name, value in before.items():
        assert torch.equal(after[name], value), f"{name} changed"
