"""tools/gpu_check.sh and its summary: a cut-off run still names the notebook that hung."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def _write(path, events):
    path.write_text("".join(json.dumps(e) + "\n" for e in events))


def test_the_summary_names_the_hung_notebook_and_the_unfinished_test(tmp_path):
    _write(
        tmp_path / "notebooks.progress.jsonl",
        [
            {"t": 1, "event": "notebook-start", "id": "notebooks/01_a.ipynb"},
            {"t": 2, "event": "notebook-start", "id": "notebooks/02_b.ipynb"},
            {"t": 9, "event": "cell-failed", "id": "notebooks/01_a.ipynb::Cell 3"},
            {
                "t": 9,
                "event": "notebook-end",
                "id": "notebooks/01_a.ipynb",
                "cells_passed": 5,
                "cells_failed": 1,
                "seconds": 8.0,
            },
        ],  # fmt: skip
    )
    (tmp_path / "notebooks.exit").write_text("124\n")
    _write(
        tmp_path / "tests.progress.jsonl",
        [
            {"t": 1, "event": "start", "id": "tests/test_x.py::test_ok"},
            {"t": 2, "event": "passed", "id": "tests/test_x.py::test_ok"},
            {"t": 2, "event": "start", "id": "tests/test_x.py::test_bad"},
            {"t": 3, "event": "failed", "id": "tests/test_x.py::test_bad"},
            {"t": 3, "event": "start", "id": "tests/test_x.py::test_stuck"},
        ],
    )
    (tmp_path / "tests.exit").write_text("1\n")
    result = subprocess.run(
        [sys.executable, "tools/gpu_check_summary.py", str(tmp_path),
         "notebooks/01_a.ipynb", "notebooks/02_b.ipynb", "notebooks/03_c.ipynb"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    out = result.stdout
    assert result.returncode == 1
    assert (
        "FAILED (1 cells)  notebooks/01_a.ipynb" in out
        and "failed: notebooks/01_a.ipynb::Cell 3" in out
    )
    assert "HUNG or cut off: started, never finished  notebooks/02_b.ipynb" in out
    assert "never started  notebooks/03_c.ipynb" in out and "CUT OFF" in out
    assert "FAILED tests/test_x.py::test_bad" in out
    assert "HUNG or cut off: tests/test_x.py::test_stuck" in out
    assert "1 passed" in out


def test_the_summary_of_a_clean_run_passes(tmp_path):
    _write(
        tmp_path / "notebooks.progress.jsonl",
        [
            {"t": 1, "event": "notebook-start", "id": "notebooks/01_a.ipynb"},
            {
                "t": 9,
                "event": "notebook-end",
                "id": "notebooks/01_a.ipynb",
                "cells_passed": 5,
                "cells_failed": 0,
                "seconds": 8.0,
            },
        ],  # fmt: skip
    )
    (tmp_path / "notebooks.exit").write_text("0\n")
    (tmp_path / "tests.exit").write_text("0\n")
    result = subprocess.run(
        [sys.executable, "tools/gpu_check_summary.py", str(tmp_path), "notebooks/01_a.ipynb"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout
    assert "everything passed" in result.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_the_gpu_check_refuses_a_machine_without_cuda_at_once(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), COURSE_PYTHON=sys.executable)
    env.pop("GPU_CHECK_DEVICE", None)
    result = subprocess.run(
        [str(ROOT / "course"), "test", "--gpu"], cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 3, result.stdout + result.stderr
    assert "NO CUDA" in result.stdout and not (tmp_path / "notebooks.log").exists()


def test_the_gpu_check_names_a_pytest_too_old_for_the_suites_options(tmp_path):
    """pyproject's addopts need pytest 8.4 (--disable-plugin-autoload): a GPU machine's older
    pytest is named before any run, not met as 'unrecognized arguments' in every log."""
    fake = tmp_path / "site" / "pytest"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('__version__ = "8.3.5"\n')
    env = dict(os.environ, OUT=str(tmp_path / "out"), COURSE_PYTHON=sys.executable,
               GPU_CHECK_DEVICE="cpu", PYTHONPATH=str(tmp_path / "site"))  # fmt: skip
    result = subprocess.run(
        [str(ROOT / "tools" / "gpu_check.sh")], cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 3, result.stdout + result.stderr
    assert "MISSING:" in result.stdout and "pytest>=8.4 (found 8.3.5)" in result.stdout, (
        result.stdout
    )
    assert not (tmp_path / "out" / "notebooks.log").exists()
