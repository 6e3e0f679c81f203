"""Notebooks 05 (core) and 05b (deeper): the raw PyTorch calls run before the helpers, and the
prose says what PyTorch 2.13 does."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "nbsrc/notebooks/05_data_parallel.py"
DEEPER = ROOT / "nbsrc/notebooks/05b_torchrun_elastic.py"


def _outputs(name: str) -> str:
    nb = json.loads((ROOT / "notebooks" / f"{name}.ipynb").read_text())
    return "".join(
        "".join(out.get("text", "")) + "".join(out.get("data", {}).get("text/plain", ""))
        for cell in nb["cells"]
        if cell["cell_type"] == "code"
        for out in cell["outputs"]
    )


def test_05_shows_torch_compiles_real_keys_not_built_ones():
    """05 built `_orig_mod.` keys with add_module_prefix; torch.compile(m).state_dict() has them
    without compiling anything."""
    source = CORE.read_text()
    assert "torch.compile(" in source and "add_module_prefix" not in source
    assert "torch.compile keys: ['_orig_mod.0.weight', '_orig_mod.0.bias']" in _outputs(
        "05_data_parallel"
    )


def test_05_runs_a_minimal_ddp_script_with_torchrun():
    source = CORE.read_text()
    for call in ('init_process_group("gloo")', "DDP(", "model.module.state_dict()",
                 "dist.barrier()", "dcp.save(", "run_torchrun("):  # fmt: skip
        assert call in source, call
    assert "elastic_job" not in source  # the course's job comes after, in 05b
    assert "dcp files: ['.metadata', '__0_0.distcp', '__1_0.distcp']" in _outputs(
        "05_data_parallel"
    )


def test_the_per_attempt_prefix_is_a_precaution_not_a_necessity():
    """05 said a plain init_process_group() breaks restarts; PyTorch 2.13 makes a new TCPStore
    for every retry (torch/distributed/rendezvous.py), so the prose must say so."""
    for path in (CORE, DEEPER):
        assert "makes the restart work at all" not in path.read_text(), path.name
    assert "new TCPStore for every retry" in DEEPER.read_text()


def test_the_deeper_notebook_keeps_the_two_node_run():
    assert "nnodes=2" in DEEPER.read_text()
    assert "bitwise equal to the single-node run: True" in _outputs("05b_torchrun_elastic")
