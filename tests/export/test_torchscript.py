"""export.torchscript: trace and script, parity after a save and a load, what each gets wrong.

The parity tests run on every model of export_models.MODELS (the ``model_and_shape`` fixture of
conftest.py), at several batch sizes.
"""

from __future__ import annotations

import pytest
import torch
from export_models import SignBranch, SignBranchCond, assert_parity

from course_lib import export
from course_lib.models import ConditionalModel
from tests.chapter_code import chapter_definitions


def test_trace_parity_after_save_and_load(model_and_shape, tmp_path):
    model, shape = model_and_shape
    path = tmp_path / "traced.pt"
    export.trace_model(model, torch.randn(2, *shape), path)
    assert_parity(model, export.load_torchscript(path, trusted=True), shape)


def test_script_parity_after_save_and_load(model_and_shape, tmp_path):
    model, shape = model_and_shape
    path = tmp_path / "scripted.pt"
    export.script_model(model, path)
    assert_parity(model, export.load_torchscript(path, trusted=True), shape)


def test_scripted_conditional_model_keeps_both_branches():
    torch.manual_seed(0)
    model = ConditionalModel().eval()
    scripted = export.script_model(model)
    for use_relu in (True, False):
        assert_parity(model, scripted, (10,), use_relu=use_relu)
    x = torch.randn(4, 10)
    assert not torch.allclose(scripted(x, use_relu=True), scripted(x, use_relu=False))


def test_chapter_conditional_model_fails_to_script_as_written():
    # The chapter's code, as 06b shows it: use_relu has no annotation.
    chapter = chapter_definitions("06b_export_in_depth", "ConditionalModel")
    with pytest.raises(RuntimeError, match="use_relu"):
        export.script_model(chapter.ConditionalModel().eval())


def test_trace_bakes_in_a_data_dependent_branch_script_and_cond_do_not():
    positive, negative = torch.ones(3, 4), -torch.ones(5, 4)
    with pytest.warns(torch.jit.TracerWarning):
        traced = export.trace_model(SignBranch().eval(), positive)
    assert torch.equal(traced(positive), SignBranch()(positive))
    assert (traced(negative) - SignBranch()(negative)).abs().max() == 3.0  # -2 instead of 1
    scripted = export.script_model(SignBranch().eval())
    assert torch.equal(scripted(negative), SignBranch()(negative))
    program = export.export_program(SignBranchCond().eval(), positive)
    for x in (positive, negative, torch.randn(13, 4)):
        assert torch.equal(program.module()(x), SignBranch()(x))
