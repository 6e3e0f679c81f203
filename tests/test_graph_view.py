"""course_lib.graph_view: the operations a trace or an exported program recorded, readable."""

from __future__ import annotations

import warnings

import pytest
import torch

from course_lib import export
from course_lib.graph_view import format_steps, graph_steps
from course_lib.models import SmallCNN


@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(0)
    return SmallCNN().eval()


def _weights_read(steps, model):
    """The inputs of all steps that are state_dict entries of ``model``, by that name."""
    keys = model.state_dict().keys()
    return {name for step in steps for name in step.inputs if name in keys}


def test_trace_shows_operations_not_submodule_calls(cnn):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(cnn, torch.randn(1, 3, 32, 32))
    assert "(classifier).forward" in traced.code  # what the notebook used to print
    steps = graph_steps(traced)
    ops = [s.op for s in steps]
    assert ops.count("_convolution") == 2 and ops.count("batch_norm") == 2 and ops[-1] == "linear"
    # every weight and statistic is named as in the state_dict (num_batches_tracked is unused)
    used = {k for k in cnn.state_dict() if not k.endswith("num_batches_tracked")}
    assert _weights_read(steps, cnn) == used
    assert steps[0].inputs[0] == "x" and steps[-1].shape == (1, 10)
    assert "forward" not in format_steps(steps)


def test_exported_program_shows_the_symbolic_batch(cnn):
    dynamic = export.export_program(cnn, torch.randn(2, 3, 32, 32))
    fixed = export.export_program(cnn, torch.randn(2, 3, 32, 32), dynamic_batch=False)
    dyn_steps, fixed_steps = graph_steps(dynamic), graph_steps(fixed)
    assert [s.op for s in dyn_steps] == [s.op for s in fixed_steps]
    assert all(isinstance(s.shape[0], str) for s in dyn_steps)  # a symbol such as s77
    assert all(s.shape[0] == 2 for s in fixed_steps)
    assert dyn_steps[-1].shape[1:] == (10,)
    assert _weights_read(dyn_steps, cnn) == {
        k for k in cnn.state_dict() if not k.endswith("num_batches_tracked")
    }
    line = format_steps(dyn_steps).splitlines()[0]
    assert line.endswith("conv2d = conv2d(x, features.0.weight, features.0.bias)")


def test_other_objects_are_refused(cnn):
    with pytest.raises(TypeError, match="got SmallCNN"):
        graph_steps(cnn)
