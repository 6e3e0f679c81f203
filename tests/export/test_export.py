"""TorchScript and torch.export helpers: parity at several batch sizes, fresh-process loads, errors."""

from __future__ import annotations

import warnings

import pytest
import torch
from export_models import MODELS, trained_cnn
from torch import nn

from course_lib import export
from course_lib.models import ConditionalModel, make_mlp

BATCH_SIZES = (1, 2, 13)


@pytest.fixture(scope="module", params=list(MODELS))
def model_and_shape(request):
    make, shape = MODELS[request.param]
    torch.manual_seed(0)
    return make().eval(), shape


def _assert_parity(model, run, shape, batch_sizes=BATCH_SIZES, **kwargs):
    for batch in batch_sizes:
        x = torch.randn(batch, *shape)
        with torch.inference_mode():
            expected = model(x, **kwargs)
            got = run(x, **kwargs)
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_trace_parity_after_save_and_load(model_and_shape, tmp_path):
    model, shape = model_and_shape
    path = tmp_path / "traced.pt"
    export.trace_model(model, torch.randn(2, *shape), path)
    _assert_parity(model, export.load_torchscript(path, trusted=True), shape)


def test_script_parity_after_save_and_load(model_and_shape, tmp_path):
    model, shape = model_and_shape
    path = tmp_path / "scripted.pt"
    export.script_model(model, path)
    _assert_parity(model, export.load_torchscript(path, trusted=True), shape)


def test_torch_export_parity_after_save_and_load(model_and_shape, tmp_path):
    model, shape = model_and_shape
    path = tmp_path / "exported.pt2"
    export.export_program(model, torch.randn(2, *shape), path)
    _assert_parity(model, export.exported_module(path), shape)


def test_scripted_conditional_model_keeps_both_branches():
    torch.manual_seed(0)
    model = ConditionalModel().eval()
    scripted = export.script_model(model)
    for use_relu in (True, False):
        _assert_parity(model, scripted, (10,), use_relu=use_relu)
    x = torch.randn(4, 10)
    assert not torch.allclose(scripted(x, use_relu=True), scripted(x, use_relu=False))


def test_export_fixes_python_arguments_at_export_time():
    torch.manual_seed(0)
    model = ConditionalModel().eval()
    program = export.export_program(model, torch.randn(3, 10), kwargs={"use_relu": False})
    _assert_parity(model, program.module(), (10,), use_relu=False)


def test_chapter_conditional_model_fails_to_script_as_written():
    class ChapterConditionalModel(nn.Module):  # the chapter's code: use_relu has no annotation
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(10, 20)
            self.fc2 = nn.Linear(20, 5)

        def forward(self, x, use_relu=True):
            x = self.fc1(x)
            if use_relu:
                x = torch.relu(x)
            return self.fc2(x)

    with pytest.raises(RuntimeError, match="use_relu"):
        export.script_model(ChapterConditionalModel().eval())


class SignBranch(nn.Module):
    """A data-dependent branch written as a Python if: tracing bakes in one side."""

    def forward(self, x):
        if x.sum() > 0:
            return x * 2
        return -x


class SignBranchCond(nn.Module):
    """The same branch with torch.cond: torch.export keeps both sides."""

    def forward(self, x):
        return torch.cond(x.sum() > 0, lambda t: t * 2, lambda t: -t, (x,))


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


def test_torch_export_refuses_a_python_if_on_data():
    with pytest.raises(Exception, match="data-dependent"):
        export.export_program(SignBranch().eval(), torch.ones(2, 4))


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


def test_static_export_names_the_fixed_shape_and_the_fix(tmp_path):
    model = make_mlp().eval()
    path = tmp_path / "static.pt2"
    export.export_program(model, torch.randn(4, 10), path, dynamic_batch=False)
    module = export.exported_module(path)
    assert module(torch.randn(4, 10)).shape == (4, 5)
    with pytest.raises(export.StaticShapeError) as info:
        module(torch.randn(13, 10))
    message = str(info.value)
    assert "(4, 10)" in message and "(13, 10)" in message
    assert "dynamic_batch=True" in message and str(path) in message


def test_example_batch_of_one_still_gives_a_dynamic_batch():
    program = export.export_program(make_mlp().eval(), torch.randn(1, 10))
    assert export.program_input_shapes(program) == {"input": (None, 10)}
    assert program.module()(torch.randn(13, 10)).shape == (13, 5)


@pytest.mark.timeout(240)
def test_each_artifact_runs_in_a_fresh_process_without_the_class(tmp_path):
    model = trained_cnn()
    x = torch.randn(7, 3, 32, 32)
    with torch.inference_mode():
        expected = model(x)
    export.trace_model(model, x, tmp_path / "cnn_traced.pt")
    export.export_program(model, x, tmp_path / "cnn.pt2")
    runs = export.run_all_in_fresh_process(
        [(tmp_path / "cnn_traced.pt", x), (tmp_path / "cnn.pt2", x)], trusted=True
    )  # TorchScript runs code while loading: trusted, since this test made it
    assert [run.kind for run in runs] == ["torchscript", "torch.export"]
    for run in runs:
        assert run.course_modules_imported == ()
        torch.testing.assert_close(run.outputs[0], expected, atol=1e-5, rtol=1e-4)


@pytest.mark.timeout(120)
def test_fresh_process_failure_names_the_file(tmp_path):
    export.export_program(make_mlp().eval(), torch.randn(2, 10), tmp_path / "mlp.pt2")
    with pytest.raises(RuntimeError, match=r"mlp\.pt2.*fresh Python process failed"):
        export.run_in_fresh_process(tmp_path / "mlp.pt2", torch.randn(2, 3, 32, 32))
