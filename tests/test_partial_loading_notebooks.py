"""What notebooks 04 and 04b teach about partial loading, checked by running their own code.

- a frozen backbone keeps its BatchNorm running statistics while the head trains: freezing is
  ``requires_grad_(False)`` *and* ``eval()`` on the backbone after the loop's ``model.train()``;
- the collapsed solutions compare tensors on one device (``.cpu()`` on both sides): a model on
  the GPU and a state loaded to the CPU cannot be compared with ``torch.equal``.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "tests"))
import build_notebooks  # noqa: E402
from build_notebooks import inline_solutions  # noqa: E402

NOTEBOOKS = ROOT / "nbsrc" / "notebooks"
TRANSFER_NOTEBOOK = NOTEBOOKS / "04b_partial_loading_in_depth.py"


def _code_until(source: Path, marker: str) -> list[tuple[str, bool]]:
    """``(code, fails on purpose)`` of the code cells of ``source`` up to one containing ``marker``."""
    cells = []
    for kind, body, tags in build_notebooks.parse_source(source.read_text()):
        if kind != "code":
            continue
        cells.append((body, "raises-exception" in tags))
        if marker in body:
            return cells
    raise AssertionError(f"{source.name} has no code cell containing {marker!r}")


def test_the_frozen_backbone_keeps_its_batchnorm_statistics(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for code, fails_on_purpose in _code_until(TRANSFER_NOTEBOOK, "requires_grad_(False)"):
        try:
            exec(compile(code, TRANSFER_NOTEBOOK.name, "exec"), namespace)
        except Exception:
            if not fails_on_purpose:
                raise
    # The transfer loop's last candidate has a fresh backbone: its running mean started at 0.
    batchnorm = namespace["candidate"].backbone[2]
    assert not batchnorm.weight.requires_grad
    assert float(batchnorm.running_mean.abs().max()) == 0.0, "train() updated frozen BatchNorm"
    assert "BatchNorm running_mean unchanged: True" in capsys.readouterr().out


def _equal_calls(code: str) -> list[ast.Call]:
    return [
        node
        for node in ast.walk(ast.parse(code))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("equal", "allclose")
    ]


def _on_the_cpu(node: ast.expr) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "cpu"
    )


@pytest.mark.parametrize("name", ["04_mismatched_state_dict", "04b_partial_loading_in_depth"])
def test_the_solutions_compare_tensors_on_one_device(name):
    solutions = inline_solutions(
        build_notebooks.parse_source((NOTEBOOKS / f"{name}.py").read_text())
    )
    calls = [call for code in solutions for call in _equal_calls(code)]
    assert calls, f"{name}'s solution compares no tensors"
    for call in calls:
        assert all(_on_the_cpu(arg) for arg in call.args[:2]), (
            f"{name}: {ast.unparse(call)} compares a model's tensors (on the course device) with "
            "a loaded state's; move both to the CPU with .cpu()"
        )
