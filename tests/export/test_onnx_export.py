"""ONNX export and verification: parity at several batch sizes, one file, clear errors.

Each dynamo export takes a second or more, so the three models are exported once per module.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import onnx
import pytest
import torch
from export_models import MODELS, trained_cnn
from torch import nn

from course_lib import export
from course_lib.export import onnx_export
from course_lib.models import make_mlp


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Each model exported once: name -> (model, example input, OnnxFile)."""
    folder = tmp_path_factory.mktemp("onnx")
    result = {}
    for name, (make, shape) in MODELS.items():
        torch.manual_seed(0)
        model = make().eval()
        example = torch.randn(
            1, *shape
        )  # the chapter's batch of 1: must still give a dynamic batch
        result[name] = (
            model,
            example,
            onnx_export.export_onnx(model, example, folder / f"{name}.onnx"),
        )
    return result


@pytest.mark.parametrize("name", list(MODELS))
def test_parity_at_several_batch_sizes(exported, name):
    model, example, onnx_file = exported[name]
    report = onnx_export.verify_onnx(onnx_file.path, model, example, batch_sizes=(1, 2, 13))
    assert report.passed
    assert [c.batch for c in report.checks] == [1, 2, 13]
    assert all(c.max_abs <= 1e-4 for c in report.checks)
    # an independent check through the runner, at yet another batch size
    x = torch.randn(7, *example.shape[1:])
    with torch.inference_mode():
        torch.testing.assert_close(
            onnx_export.OnnxModel(onnx_file.path)(x), model(x), atol=1e-5, rtol=1e-4
        )


@pytest.mark.parametrize("name", list(MODELS))
def test_one_self_contained_file_with_a_dynamic_batch(exported, name):
    _, _, onnx_file = exported[name]
    assert not onnx_file.path.with_name(onnx_file.path.name + ".data").exists()
    proto = onnx.load(str(onnx_file.path), load_external_data=False)
    assert not any(
        init.data_location == onnx.TensorProto.EXTERNAL for init in proto.graph.initializer
    )
    assert onnx_file.opset >= 18 and onnx_file.exporter == "dynamo"
    (shape,) = onnx_file.input_shapes.values()
    assert isinstance(shape[0], str), f"batch dimension is fixed: {shape}"


def test_cnn_graph_has_batchnorm_folded_and_no_dropout(exported):
    ops = [node.op_type for node in onnx.load(str(exported["cnn"][2].path)).graph.node]
    assert "Conv" in ops
    assert "BatchNormalization" not in ops and "Dropout" not in ops


def test_session_keeps_onnxruntime_fast_settings(exported):
    import onnxruntime as ort

    options = onnx_export.make_session(exported["cnn"][2].path).get_session_options()
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert options.intra_op_num_threads == torch.get_num_threads()


def test_external_data_only_when_asked_and_exporter_is_quiet(tmp_path, capfd):
    model = make_mlp().eval()
    onnx_export.export_onnx(model, torch.randn(2, 10), tmp_path / "one.onnx")
    out, err = capfd.readouterr()
    assert out == "" and err == "", "the exporter's chatter reached the console"
    onnx_export.export_onnx(model, torch.randn(2, 10), tmp_path / "two.onnx", external_data=True)
    assert (tmp_path / "two.onnx.data").exists()
    assert not (tmp_path / "one.onnx.data").exists()


def test_mismatch_raises_with_the_figures(exported):
    model, example, onnx_file = exported["mlp"]
    changed = make_mlp().eval()
    changed.load_state_dict(model.state_dict())
    with torch.no_grad():
        changed[2].bias.add_(0.5)
    with pytest.raises(onnx_export.OnnxMismatchError) as info:
        onnx_export.verify_onnx(onnx_file.path, changed, example)
    report = info.value.report
    assert not report.passed
    assert all(abs(c.max_abs - 0.5) < 1e-4 for c in report.checks)
    assert "max_abs=5.0e-01" in str(info.value) and "atol=0.0001" in str(info.value)
    relaxed = onnx_export.verify_onnx(onnx_file.path, changed, example, raise_on_mismatch=False)
    assert not relaxed.passed


def test_static_export_at_another_batch_names_the_shape_and_the_fix(tmp_path):
    model = make_mlp().eval()
    path = tmp_path / "static.onnx"
    onnx_file = onnx_export.export_onnx(model, torch.randn(4, 10), path, dynamic_batch=False)
    assert onnx_file.input_shapes == {"input": (4, 10)}
    runner = onnx_export.OnnxModel(path)
    assert runner(torch.randn(4, 10)).shape == (4, 5)
    with pytest.raises(export.StaticShapeError, match=r"fixed shape \(4, 10\)") as info:
        runner(torch.randn(13, 10))
    assert "dynamic_batch=True" in str(info.value) and "static.onnx" in str(info.value)
    with pytest.raises(export.StaticShapeError):
        onnx_export.verify_onnx(path, model, torch.randn(4, 10))


def test_training_mode_model_is_exported_in_eval_mode_with_a_warning(tmp_path):
    model = trained_cnn().train()
    with pytest.warns(export.TrainingModeWarning, match="ONNX export used eval mode"):
        onnx_file = onnx_export.export_onnx(model, torch.randn(2, 3, 32, 32), tmp_path / "t.onnx")
    assert model.training
    onnx_export.verify_onnx(onnx_file.path, model, torch.randn(2, 3, 32, 32))  # vs eval mode


def test_old_opset_is_refused_for_the_current_exporter(tmp_path):
    with pytest.raises(ValueError, match="opset_version=11.*legacy=True"):
        onnx_export.export_onnx(
            make_mlp().eval(), torch.randn(2, 10), tmp_path / "m.onnx", opset_version=11
        )


def test_legacy_exporter_only_when_asked(tmp_path):
    model = make_mlp().eval()
    onnx_file = onnx_export.export_onnx(
        model, torch.randn(1, 10), tmp_path / "old.onnx", legacy=True
    )
    assert onnx_file.exporter.startswith("legacy") and onnx_file.opset == 17
    assert "DeprecationWarning" in onnx_file.log
    assert onnx_export.verify_onnx(onnx_file.path, model, torch.randn(1, 10)).passed


class Median(nn.Module):
    def forward(self, x):
        return torch.median(x, dim=1).values


@torch.library.custom_op("course_tests::wiggle", mutates_args=())
def wiggle(x: torch.Tensor) -> torch.Tensor:
    return x.sin()


@wiggle.register_fake
def _(x):
    return torch.empty_like(x)


class Wiggle(nn.Module):
    def forward(self, x):
        return wiggle(x) + 1


@pytest.mark.parametrize(
    ("model", "operator"),
    [(Median(), "aten::median.dim"), (Wiggle(), "course_tests::wiggle")],
    ids=["aten_median", "custom_op"],
)
def test_unsupported_operator_is_named(tmp_path, model, operator):
    with pytest.raises(onnx_export.UnsupportedOperatorError) as info:
        onnx_export.export_onnx(model.eval(), torch.randn(2, 5), tmp_path / "u.onnx")
    assert info.value.operator == operator
    assert operator in str(info.value) and "custom_translation_table" in str(info.value)


class SignBranchCond(nn.Module):
    def forward(self, x):
        return torch.cond(x.sum() > 0, lambda t: t * 2, lambda t: -t, (x,))


def test_torch_cond_becomes_an_onnx_if(tmp_path):
    onnx_file = onnx_export.export_onnx(
        SignBranchCond().eval(), torch.ones(2, 4), tmp_path / "c.onnx"
    )
    assert "If" in [n.op_type for n in onnx.load(str(onnx_file.path)).graph.node]
    runner = onnx_export.OnnxModel(onnx_file.path)
    for x in (torch.ones(3, 4), -torch.ones(13, 4)):
        assert torch.equal(runner(x), SignBranchCond()(x))


@pytest.mark.timeout(120)
def test_missing_onnxscript_says_pip_install(tmp_path):
    code = textwrap.dedent(
        f"""
        import json, sys
        sys.modules["onnxscript"] = None  # as if it were not installed
        import torch
        from course_lib.export import onnx_export
        from course_lib.models import make_mlp
        try:
            onnx_export.export_onnx(make_mlp().eval(), torch.randn(2, 10), {str(tmp_path / "m.onnx")!r})
        except onnx_export.MissingDependencyError as exc:
            print(json.dumps({{"error": str(exc), "is_import_error": isinstance(exc, ImportError)}}))
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=110)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert "pip install onnxscript" in result["error"] and result["is_import_error"]
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.timeout(120)
def test_onnx_file_runs_in_a_fresh_process(exported):
    model, _, onnx_file = exported["cnn"]
    x = torch.randn(5, 3, 32, 32)
    run = export.run_in_fresh_process(onnx_file.path, x)
    assert run.kind == "onnx" and run.course_modules_imported == ()
    with torch.inference_mode():
        torch.testing.assert_close(run.outputs[0], model(x), atol=1e-5, rtol=1e-4)


def test_the_chapters_call_gives_opset_18_and_a_sidecar(tmp_path):
    """What notebook 07 shows: opset_version=11 is not honoured, the weights go to .onnx.data."""
    import contextlib
    import io
    import logging
    import warnings

    console = io.StringIO()
    # In a notebook the exporter's log records reach stderr through logging's last-resort
    # handler; pytest installs its own handlers, so route them to the console explicitly.
    handler = logging.StreamHandler(console)
    logging.getLogger().addHandler(handler)
    try:
        with (
            warnings.catch_warnings(record=True) as caught,
            contextlib.redirect_stdout(console),
            contextlib.redirect_stderr(console),
        ):
            warnings.simplefilter("always")
            torch.onnx.export(
                make_mlp().eval(),
                torch.randn(1, 10),
                tmp_path / "model.onnx",
                export_params=True,
                opset_version=11,
                do_constant_folding=True,
                input_names=["input"],
                output_names=["output"],
                dynamic_axes={"input": {0: "batch_size"}, "output": {0: "batch_size"}},
            )
    finally:
        logging.getLogger().removeHandler(handler)
    proto = onnx.load(str(tmp_path / "model.onnx"), load_external_data=False)
    assert [o.version for o in proto.opset_import if o.domain == ""] == [18]
    assert (tmp_path / "model.onnx.data").exists()
    summary = onnx_export.summarize_log(console.getvalue(), caught)
    assert any("target version: 11" in line for line in summary)
    assert any(line.startswith("UserWarning: # 'dynamic_axes'") for line in summary)
    assert not any(line.startswith(("[torch.onnx]", "File ", "Traceback")) for line in summary)


def test_exported_file_carries_no_paths_of_the_exporting_machine(tmp_path):
    from course_lib.models import ConditionalModel

    path = tmp_path / "conditional.onnx"
    onnx_export.export_onnx(ConditionalModel().eval(), (torch.randn(2, 10),), path)
    data = path.read_bytes()
    assert b"stack_trace" not in data
    assert str(Path(onnx_export.__file__).parent.parent).encode() not in data
