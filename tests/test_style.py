"""ruff lint and format, and type hints on course_lib's public API (ruff's ANN rules)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHECKED = ["course_lib", "teacher", "tests", "tools", "benchmarks", "nbsrc", "conftest.py"]


def _ruff(*args: str) -> subprocess.CompletedProcess:
    paths = [p for p in CHECKED if (ROOT / p).exists()]
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args, *paths], cwd=ROOT, capture_output=True, text=True
    )


def test_ruff_lint():
    result = _ruff("check", "--no-cache")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format():
    result = _ruff("format", "--check", "--no-cache")
    assert result.returncode == 0, result.stdout + result.stderr
