"""Notebook 10's card is correct code, and the summaries restore RNG states from the CPU.

The card's blocks run in order, in a temporary folder, on the few names a learner's script has
(a model, its optimizer, an example input, a wrapped model's file). A saved RNG state loaded with
``map_location=device`` lands on the GPU, and ``torch.set_rng_state`` / ``Generator.set_state``
refuse it ("RNG state must be a torch.ByteTensor"): the solutions move it back with ``.cpu()``.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "tests"))
import build_notebooks  # noqa: E402
from build_notebooks import inline_solutions  # noqa: E402

NOTEBOOKS = ROOT / "nbsrc" / "notebooks"


def _cells(name: str) -> list[tuple[str, str, list[str]]]:
    return build_notebooks.parse_source((NOTEBOOKS / f"{name}.py").read_text())


def card_blocks() -> list[str]:
    card = next(body for kind, body, _ in _cells("10_summary") if body.startswith("## The card"))
    return re.findall(r"```python\n(.*?)```", card, re.S)


def test_the_card_has_the_eight_pairs_in_three_lines_each():
    blocks = card_blocks()
    assert len(blocks) == 8
    assert all(len(block.strip().splitlines()) == 3 for block in blocks)


def test_the_card_runs(tmp_path, monkeypatch, capsys):
    from course_lib.models import MyModel

    monkeypatch.chdir(tmp_path)
    model = MyModel()
    namespace = {
        "torch": torch,
        "MyModel": MyModel,
        "model": model,
        "opt": torch.optim.SGD(model.parameters(), lr=0.1),
        "epoch": 3,
        "gen": MyModel(),
        "disc": MyModel(),
        "device": torch.device("cpu"),
        "example": torch.randn(2, 10),
    }
    torch.save(nn.DataParallel(MyModel()).state_dict(), tmp_path / "wrapped.pth")
    for block in card_blocks():
        exec(compile(block, "10_summary card", "exec"), namespace)
    assert not [k for k in namespace["wrapped"] if k.startswith("module.")]
    assert namespace["ckpt"]["epoch"] == 3
    printed = capsys.readouterr().out
    assert "All keys matched" in printed and printed.rstrip().endswith("True")


def _set_state_calls(code: str) -> list[ast.Call]:
    return [
        node
        for node in ast.walk(ast.parse(code))
        if isinstance(node, ast.Call)
        and getattr(node.func, "attr", getattr(node.func, "id", ""))
        in ("set_state", "set_rng_state")
    ]


@pytest.mark.parametrize("name", ["10_summary", "10b_physicists_view"])
def test_the_solutions_restore_rng_states_from_the_cpu(name):
    calls = [c for code in inline_solutions(_cells(name)) for c in _set_state_calls(code)]
    assert calls, f"{name}'s solution restores no RNG state"
    for call in calls:
        arg = call.args[0]
        assert isinstance(arg, ast.Call) and getattr(arg.func, "attr", "") == "cpu", (
            f"{name}: {ast.unparse(call)} refuses a state that map_location moved to the GPU; "
            "restore it with .cpu()"
        )
