"""export.fresh_process: an exported file runs in a fresh Python process that cannot import the
course's package, so it needs no model source; a failure there names the file."""

from __future__ import annotations

import pytest
import torch
from export_models import trained_cnn

from course_lib import export
from course_lib.models import make_mlp


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
