"""export.program: torch.export programs, parity after a save and a load, a dynamic batch, errors.

The parity test runs on every model of export_models.MODELS (the ``model_and_shape`` fixture of
conftest.py), at several batch sizes.
"""

from __future__ import annotations

import pytest
import torch
from export_models import SignBranch, assert_parity

from course_lib import export
from course_lib.models import ConditionalModel, make_mlp


def test_torch_export_parity_after_save_and_load(model_and_shape, tmp_path):
    model, shape = model_and_shape
    path = tmp_path / "exported.pt2"
    export.export_program(model, torch.randn(2, *shape), path)
    assert_parity(model, export.exported_module(path), shape)


def test_export_fixes_python_arguments_at_export_time():
    torch.manual_seed(0)
    model = ConditionalModel().eval()
    program = export.export_program(model, torch.randn(3, 10), kwargs={"use_relu": False})
    assert_parity(model, program.module(), (10,), use_relu=False)


def test_torch_export_refuses_a_python_if_on_data():
    with pytest.raises(Exception, match="data-dependent"):
        export.export_program(SignBranch().eval(), torch.ones(2, 4))


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
