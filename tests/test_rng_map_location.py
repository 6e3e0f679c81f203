"""03's own checkpoint code and its inline solution restore the RNGs whatever ``map_location`` did.

On a GPU machine ``torch.load(..., map_location="cuda")`` moves a saved RNG state (a ByteTensor)
to the GPU, and ``torch.set_rng_state`` / ``Generator.set_state`` then refuse it: "RNG state must
be a torch.ByteTensor" (seen on a real GPU in 03's and 10's inline solutions). The same happens on
any machine when the state lands on the ``meta`` device, so here every uint8 tensor that
``torch.load`` returns is moved to ``meta``, as ``map_location="cuda"`` would move it off the CPU,
while 03's code runs (from the learner's ``resume`` on, and for the inline solutions).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "tests"))
import build_notebooks  # noqa: E402
from build_notebooks import inline_solutions  # noqa: E402

SOURCE = ROOT / "nbsrc" / "notebooks" / "03_checkpoints.py"

MOVE_RNG_STATES_OFF_THE_CPU = """
import torch as _torch

_real_load = getattr(_torch.load, "real_load", _torch.load)


def _off_the_cpu(value):
    if isinstance(value, _torch.Tensor) and value.dtype == _torch.uint8:
        return value.to("meta")
    if isinstance(value, dict):
        return {key: _off_the_cpu(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_off_the_cpu(item) for item in value)
    return value


def _load_moving_byte_tensors(*args, **kwargs):
    return _off_the_cpu(_real_load(*args, **kwargs))


_load_moving_byte_tensors.real_load = _real_load
_torch.load = _load_moving_byte_tensors
"""
RESTORE_LOAD = (
    "import torch as _torch\n_torch.load = getattr(_torch.load, 'real_load', _torch.load)"
)


def cells_with_rng_states_moved(source: Path) -> list[tuple[str, str, list[str]]]:
    """03's code cells and inline solutions, the learner's code and the solutions run patched."""
    parsed = build_notebooks.parse_source(source.read_text())
    cells = []
    for kind, body, tags in parsed:
        if kind != "code":
            continue
        if "checkpoint.save_checkpoint(" in body:  # course_lib's part: a real GPU is its test
            cells.append(("code", RESTORE_LOAD, []))
        cells.append((kind, body, tags))
        if "def resume(" in body:
            cells.append(("code", MOVE_RNG_STATES_OFF_THE_CPU, []))
    cells.append(("code", MOVE_RNG_STATES_OFF_THE_CPU, []))
    cells += [("code", code, []) for code in inline_solutions(parsed)]
    return cells


def run(cells, tmp_path):
    nb = build_notebooks.make_notebook(cells)
    client = NotebookClient(
        nb,
        timeout=300,
        kernel_name="python3",
        allow_errors=True,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
    return nb


def test_the_patch_moves_a_saved_rng_state_off_the_cpu(tmp_path):
    """The simulation reproduces the GPU failure with the chapter's way of restoring."""
    probe = (
        "torch.save({'rng': torch.get_rng_state()}, 'rng.pth')\n"
        "torch.set_rng_state(torch.load('rng.pth', weights_only=True)['rng'])"
    )
    nb = run([("code", "import torch", []), ("code", MOVE_RNG_STATES_OFF_THE_CPU, []),
              ("code", probe, [])], tmp_path)  # fmt: skip
    (error,) = [o for o in nb.cells[-1].outputs if o.output_type == "error"]
    assert "RNG state must be a torch.ByteTensor" in error.evalue


@pytest.mark.skipif(not SOURCE.exists(), reason="03 has no source")
def test_03_restores_rng_states_that_map_location_moved(tmp_path):
    cells = cells_with_rng_states_moved(SOURCE)
    assert any("def resume(" in body for _, body, _ in cells), "03 writes no resume()"
    nb = run(cells, tmp_path)
    ran = [cell for cell in nb.cells if cell.get("execution_count")]
    assert len(ran) == len(nb.cells), "a cell did not run"
    for cell in nb.cells:
        errors = [o for o in cell.outputs if o.output_type == "error"]
        expected = "raises-exception" in cell.metadata.get("tags", [])
        assert bool(errors) == expected, (cell.source[:200], [e.evalue for e in errors])
