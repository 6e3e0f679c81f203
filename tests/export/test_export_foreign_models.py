"""Five models the course never saw, through the ONNX path: export, verify, run alone.

A CNN left in training mode, a two-layer LSTM, a Transformer encoder with a padding mask, a model
with two inputs and a tuple output, and a ResNet block: each is exported with a dynamic batch,
verified against PyTorch at batch sizes 1, 3 and 64, and run in one fresh Python process that
cannot import the course's package.
"""

from __future__ import annotations

import copy

import pytest
import torch
from export_models import FOREIGN_MODELS

from course_lib import export
from course_lib.export import onnx_export

pytestmark = pytest.mark.slow  # ./course test --fast leaves it out

BATCH_SIZES = (1, 3, 64)
MAX_ABS = 2e-6  # measured: at most about 5e-7 (float32 rounding in another order)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name -> (model as the caller left it, example inputs, OnnxFile, training flags before)."""
    folder = tmp_path_factory.mktemp("foreign")
    result = {}
    for name, (make, inputs) in FOREIGN_MODELS.items():
        torch.manual_seed(0)
        model = make()
        flags = [m.training for m in model.modules()]
        example = inputs(2)
        if model.training:
            with pytest.warns(export.TrainingModeWarning, match=r"dropout \(Dropout\)"):
                onnx_file = onnx_export.export_onnx(model, example, folder / f"{name}.onnx")
        else:
            onnx_file = onnx_export.export_onnx(model, example, folder / f"{name}.onnx")
        result[name] = (model, example, onnx_file, flags)
    return result


@pytest.mark.timeout(240)
@pytest.mark.parametrize("name", list(FOREIGN_MODELS))
def test_exports_with_a_dynamic_batch_and_verifies_at_1_3_64(exported, name):
    model, example, onnx_file, flags = exported[name]
    assert [m.training for m in model.modules()] == flags, "the export changed the model's mode"
    for shape in onnx_file.input_shapes.values():
        assert isinstance(shape[0], str), f"batch dimension is fixed: {onnx_file.input_shapes}"
    report = onnx_export.verify_onnx(
        onnx_file.path, model, example, batch_sizes=BATCH_SIZES, atol=1e-5
    )
    assert sorted({c.batch for c in report.checks}) == list(BATCH_SIZES)
    worst = max(c.max_abs for c in report.checks)
    assert worst <= MAX_ABS, report.table()


@pytest.mark.timeout(240)
def test_all_five_run_alone_in_a_fresh_process(exported):
    jobs, expected = [], []
    for name, (model, _, onnx_file, _) in exported.items():
        inputs = FOREIGN_MODELS[name][1](3)
        reference = copy.deepcopy(model).eval()
        with torch.inference_mode():
            out = reference(*inputs)
        jobs.append((onnx_file.path, inputs))
        expected.append(out if isinstance(out, tuple) else (out,))
    runs = export.run_all_in_fresh_process(jobs)
    for run, want in zip(runs, expected, strict=True):
        assert run.kind == "onnx" and run.course_modules_imported == ()
        assert len(run.outputs) == len(want)
        for got, ref in zip(run.outputs, want, strict=True):
            torch.testing.assert_close(got, ref, atol=MAX_ABS, rtol=1e-5)
