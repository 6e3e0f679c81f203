"""Issue 11's defects of the export helpers, each reproduced on a real model and a real file.

Dict outputs, no machine paths in .pt2 files, and the messages a learner meets (input count,
shapes, operators, traces). Mode flags and buffers left as found are in test_modes.py, atomic
writes on a real full disk in test_writing.py.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from export_models import TwoInputsTupleOutput, _tagger, trained_cnn
from torch import nn

from course_lib import export
from course_lib.export import onnx_export
from course_lib.models import make_mlp

ROOT = Path(__file__).resolve().parents[2]


class DictOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.fc(x)
        return {"logits": logits, "probs": logits.softmax(-1)}


class NestedOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor):
        y = self.fc(x)
        return y, {"pair": (y.relu(), y.sigmoid())}


def test_verify_onnx_counts_a_dicts_outputs(tmp_path):
    for model in (DictOutput().eval(), NestedOutput().eval()):
        path = tmp_path / f"{type(model).__name__}.onnx"
        onnx_file = onnx_export.export_onnx(model, torch.randn(2, 6), path)
        report = onnx_export.verify_onnx(path, model, torch.randn(2, 6))
        assert report.passed
        assert {c.output for c in report.checks} == set(onnx_file.output_names)


@pytest.mark.timeout(180)
def test_fresh_process_returns_dict_and_nested_outputs(tmp_path):
    dict_model, nested = DictOutput().eval(), NestedOutput().eval()
    export.export_program(dict_model, torch.randn(2, 6), tmp_path / "dict.pt2")
    export.export_program(nested, torch.randn(2, 6), tmp_path / "nested.pt2")
    onnx_export.export_onnx(dict_model, torch.randn(2, 6), tmp_path / "dict.onnx")
    x = torch.randn(3, 6)
    runs = export.run_all_in_fresh_process(
        [(tmp_path / "dict.pt2", x), (tmp_path / "nested.pt2", x), (tmp_path / "dict.onnx", x)]
    )
    with torch.inference_mode():
        expected_dict, expected_nested = dict_model(x), nested(x)
    assert set(runs[0].value) == {"logits", "probs"}
    torch.testing.assert_close(runs[0].value["probs"], expected_dict["probs"])
    torch.testing.assert_close(runs[1].value[1]["pair"][1], expected_nested[1]["pair"][1])
    assert len(runs[1].outputs) == 3
    torch.testing.assert_close(runs[2].outputs[1], expected_dict["probs"])


class SourcePathModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cond(x.sum() > 0, lambda t: self.fc(t), lambda t: -self.fc(t), (x,))


def test_pt2_file_carries_no_paths_of_the_exporting_machine(tmp_path):
    path = tmp_path / "model.pt2"
    program = export.export_program(SourcePathModel().eval(), torch.randn(2, 5), path)
    data = path.read_bytes()
    for machine_path in (
        Path(__file__).resolve(),  # the model's source file
        Path(torch.__file__).resolve().parent.parent,  # site-packages
        ROOT,
    ):
        assert str(machine_path).encode() not in data, f"{machine_path} is in the .pt2 file"
    assert b"stack_trace" not in data
    assert any("stack_trace" in n.meta for n in program.graph.nodes), "the caller's program changed"
    x = torch.randn(4, 5)
    torch.testing.assert_close(export.load_program(path).module()(x), program.module()(x))


@pytest.fixture(scope="module")
def two_input_file(tmp_path_factory):
    torch.manual_seed(0)
    model = TwoInputsTupleOutput().eval()
    path = tmp_path_factory.mktemp("two") / "two.onnx"
    onnx_export.export_onnx(model, (torch.randn(2, 1, 8, 8), torch.randn(2, 5)), path)
    return model, path


def test_onnx_model_called_with_too_few_inputs_names_the_inputs(two_input_file):
    _, path = two_input_file
    with pytest.raises(export.InputCountError) as info:
        onnx_export.OnnxModel(path)(torch.randn(2, 1, 8, 8))
    message = str(info.value)
    assert "2 inputs (image, features), but 1 was given" in message
    assert "two.onnx" in message and "How to fix" in message and "zip()" not in message


def test_shape_error_on_a_dynamic_batch_names_the_wrong_dimension(two_input_file):
    _, path = two_input_file
    with pytest.raises(export.StaticShapeError) as info:
        onnx_export.OnnxModel(path)(torch.randn(3, 1, 8, 8), torch.randn(3, 7))
    message = str(info.value)
    assert "'features'" in message and "dimension 1 is 7, the program has 5 there" in message
    assert "dynamic_batch" not in message and "(batch, 5)" in message


@pytest.fixture(scope="module")
def seq_export(tmp_path_factory):
    """An LSTM tagger exported with a dynamic batch and sequence length (once: on torch 2.13 a
    second export of it in the same process fixes the sequence length at 2, its widened example)."""
    torch.manual_seed(0)
    model = _tagger()
    seq = {"x": {0: torch.export.Dim("batch"), 1: torch.export.Dim("seq")}}
    path = tmp_path_factory.mktemp("seq") / "seq.onnx"
    return model, onnx_export.export_onnx(model, torch.randn(2, 1, 6), path, dynamic_shapes=seq)


def test_dynamic_sequence_length(seq_export):
    model, onnx_file = seq_export
    # The behaviour, not the symbols' names: torch 2.13 calls them after the Dims, 2.11 does not
    # (its ONNX input has no dim_param there). Dynamic = not a fixed int; the features stay 6.
    (shape,) = onnx_file.input_shapes.values()
    assert not isinstance(shape[0], int) and not isinstance(shape[1], int) and shape[2] == 6
    runner = onnx_export.OnnxModel(onnx_file.path)
    for batch, length in ((1, 1), (3, 4), (5, 11)):
        x = torch.randn(batch, length, 6)
        with torch.inference_mode():
            torch.testing.assert_close(runner(x), model(x), atol=1e-5, rtol=1e-4)
    with pytest.raises(export.StaticShapeError, match="dimension 2 is 7, the program has 6"):
        runner(torch.randn(3, 4, 7))  # the fixed dimension is still checked


def test_dynamic_dimensions_without_a_name_are_still_dynamic(seq_export, tmp_path):
    """What an exporter that leaves the symbol unnamed writes: no dim_param, no dim_value."""
    import onnx

    model, onnx_file = seq_export
    proto = onnx.load(str(onnx_file.path))
    for value in [*proto.graph.input, *proto.graph.output]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param"):
                dim.ClearField("dim_param")
    onnx.save(proto, str(tmp_path / "unnamed.onnx"))
    assert onnx_export.onnx_input_shapes(proto) == {"x": (None, None, 6)}
    runner = onnx_export.OnnxModel(tmp_path / "unnamed.onnx")
    for batch, length in ((1, 1), (3, 4)):
        x = torch.randn(batch, length, 6)
        with torch.inference_mode():
            torch.testing.assert_close(runner(x), model(x), atol=1e-5, rtol=1e-4)
    with pytest.raises(export.StaticShapeError, match="dimension 2 is 7"):
        runner(torch.randn(3, 4, 7))


class Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(10, 5)

    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * scale


def test_a_size_one_setting_is_not_taken_for_a_batch(tmp_path):
    model = Scaled().eval()
    example = (torch.randn(1, 10), torch.tensor([2.0]))
    onnx_file = onnx_export.export_onnx(model, example, tmp_path / "scaled.onnx")
    assert onnx_file.input_shapes["scale"] == (1,)
    assert isinstance(onnx_file.input_shapes["x"][0], str)
    x = torch.randn(4, 10)
    with torch.inference_mode():
        expected = model(x, torch.tensor([3.0]))
    got = onnx_export.OnnxModel(onnx_file.path)(x, torch.tensor([3.0]))
    torch.testing.assert_close(got, expected)
    assert onnx_export.verify_onnx(onnx_file.path, model, example).passed
    program = export.export_program(model, example)
    assert export.program_input_shapes(program) == {"x": (None, 10), "scale": (1,)}


class Histogram(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.histc(x, bins=4)


def test_unsupported_histc_gives_a_short_plain_house_style_error(tmp_path):
    with pytest.raises(onnx_export.UnsupportedOperatorError) as info:
        onnx_export.export_onnx(Histogram().eval(), torch.randn(3, 5), tmp_path / "h.onnx")
    error = info.value
    message = str(error)
    assert error.operator == "aten::histc"
    assert "\x1b[" not in message, "terminal colour codes in the message"
    assert len(message) < 800 and "h.onnx" in message.splitlines()[0]
    assert "min == max" in message and "How to fix" in message
    assert error.__cause__ is None and error.__suppress_context__
    assert isinstance(error.exporter_error, torch.onnx.OnnxExporterError)
    assert not (tmp_path / "h.onnx").exists()


class SignBranch(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return x * 2
        return -x


def test_a_trace_that_baked_in_a_branch_warns_loudly_or_raises():
    positive = torch.ones(3, 4)
    with pytest.warns(export.TraceMismatchWarning, match="TRACE IS WRONG") as caught:
        export.trace_model(SignBranch().eval(), positive)
    (message,) = [str(w.message) for w in caught if w.category is export.TraceMismatchWarning]
    assert "script_model" in message and "torch.cond" in message and "max |traced" in message
    with pytest.raises(export.TraceMismatchError, match="torch.cond"):
        export.trace_model(SignBranch().eval(), positive, on_mismatch="raise")


def test_a_faithful_trace_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error", export.TraceMismatchWarning)
        export.trace_model(make_mlp().eval(), torch.randn(3, 10))
        export.trace_model(trained_cnn().eval(), torch.randn(2, 3, 32, 32))


class StarArgs(nn.Module):
    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return inputs[0] + inputs[1]


def test_forward_with_star_args_gets_a_dynamic_batch(tmp_path):
    example = (torch.randn(1, 3), torch.randn(1, 3))
    program = export.export_program(StarArgs().eval(), example)
    assert set(export.program_input_shapes(program).values()) == {(None, 3)}
    onnx_file = onnx_export.export_onnx(StarArgs().eval(), example, tmp_path / "star.onnx")
    assert all(isinstance(s[0], str) for s in onnx_file.input_shapes.values())
    assert onnx_export.verify_onnx(onnx_file.path, StarArgs(), example).passed
