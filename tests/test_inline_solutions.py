"""The solutions collapsed under a notebook's exercises run after it, and their own checks pass.

They run as nbval items of their notebook ("Inline solution N", see conftest.py), in its kernel
after its last cell, as a learner runs them after the notebook. This file checks that extraction
and that hook: every chapter notebook with solutions gets its items, and a solution that raises
fails its item while the notebook's own cells still pass.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import build_notebooks  # noqa: E402
from build_notebooks import inline_solutions  # noqa: E402

# The root conftest.py by its path: "conftest" may name tests/manager/conftest.py here.
_spec = importlib.util.spec_from_file_location("root_conftest", ROOT / "conftest.py")
assert _spec is not None and _spec.loader is not None
_root_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_root_conftest)
INLINE_SOLUTIONS_NOT_RUN = _root_conftest.INLINE_SOLUTIONS_NOT_RUN

SOURCES = sorted((ROOT / "nbsrc" / "notebooks").glob("*.py"))


def _solutions(source: Path) -> list[str]:
    return inline_solutions(build_notebooks.parse_source(source.read_text()))


def test_the_extraction_finds_a_solution_and_nothing_else():
    body = "text\n```python\nnot_in_details()\n```\n<details><summary>S</summary>\n\n```python\nx = 1\n```\n</details>"
    assert inline_solutions(
        [("markdown", body, []), ("code", "<details>```python\ny\n```</details>", [])]
    ) == ["x = 1\n"]


def _pytest(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PYTEST_XDIST_WORKER", None)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider",
         "-p", "no:xdist", "--rootdir", str(cwd), "-c", os.devnull, *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_every_chapter_notebook_with_solutions_collects_them_after_its_cells():
    expected = {
        f"notebooks/{s.stem}.ipynb": len(_solutions(s))
        for s in SOURCES
        if _solutions(s) and s.stem not in INLINE_SOLUTIONS_NOT_RUN
    }
    assert len(expected) >= 12
    result = _pytest("--nbval", "--collect-only", "-q", *expected, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for notebook, count in expected.items():
        mine = [line for line in lines if line.startswith(f"{notebook}::")]
        assert [line.split("::")[1] for line in mine[-count:]] == [
            f"Inline solution {i}" for i in range(count)
        ], notebook


@pytest.mark.parametrize("check, passes", [("x == 1", True), ("x == 2", False)])
def test_a_solution_that_fails_fails_its_item_and_only_it(tmp_path, check, passes):
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "nbsrc" / "notebooks").mkdir(parents=True)
    source = (
        "# %%\nx = 1\n\n# %% [markdown]\n# Exercise.\n# <details><summary>Solution</summary>\n#\n"
        f"# ```python\n# assert {check}, 'the solution is wrong'\n# ```\n# </details>\n"
    )
    (tmp_path / "nbsrc" / "notebooks" / "99_try.py").write_text(source)
    nb = build_notebooks.make_notebook(build_notebooks.parse_source(source))
    nb.cells[0].execution_count = 1
    nbformat.write(nb, tmp_path / "notebooks" / "99_try.ipynb")
    result = _pytest("--nbval", "-v", "notebooks/99_try.ipynb", cwd=tmp_path)
    out = result.stdout
    assert "::Cell 0 PASSED" in out, out  # the notebook's own cell, however nbval names it
    verdict = "PASSED" if passes else "FAILED"
    assert f"99_try.ipynb::Inline solution 0 {verdict}" in out, out
    assert (result.returncode == 0) == passes
    if not passes:
        assert "the solution is wrong" in out
