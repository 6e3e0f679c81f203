"""01a's snippets hold to the course's own standard (issue 16): its atomic save leaves nothing
behind and keeps the old file when the write fails, and its checkpoint stores every RNG.

The notebook's code cells run here, in order, in one namespace (as a kernel would run them), up
to the snippet under test; the snippet then runs with a ``torch.save`` that fails half-way.
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import build_notebooks  # noqa: E402

SOURCE = ROOT / "nbsrc" / "notebooks" / "01a_fast_path.py"


def run_cells_until(marker: str, namespace: dict) -> str:
    """Run 01a's code cells before the first one containing ``marker``; return that cell."""
    for kind, body, tags in build_notebooks.parse_source(SOURCE.read_text()):
        if kind != "code":
            continue
        if marker in body:
            return body
        try:
            exec(compile(body, "01a", "exec"), namespace)
        except Exception:
            if "raises-exception" not in tags:
                raise
    raise AssertionError(f"no code cell of 01a contains {marker!r}")


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    return tmp_path


def test_the_atomic_save_keeps_the_old_file_and_leaves_no_temporary(in_tmp, monkeypatch):
    namespace: dict = {}
    cell = run_cells_until("os.replace", namespace)
    workdir = namespace["workdir"]
    target = workdir / "model.pth"
    torch.save({"old": torch.ones(3)}, target)
    before = sorted(p.name for p in workdir.iterdir())

    real_save = torch.save

    def failing_save(obj, f, *args, **kwargs):
        buffer = io.BytesIO()
        real_save(obj, buffer)
        data = buffer.getvalue()[:100]
        if isinstance(f, (str, os.PathLike)):
            Path(f).write_bytes(data)
        else:
            f.write(data)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError):
        exec(compile(cell, "01a", "exec"), namespace)
    monkeypatch.setattr(torch, "save", real_save)

    assert sorted(p.name for p in workdir.iterdir()) == before, "a failed save left a file behind"
    assert torch.equal(torch.load(target, weights_only=True)["old"], torch.ones(3)), (
        "a failed save damaged the old file"
    )


def test_the_atomic_save_uses_a_unique_temporary_name(in_tmp, monkeypatch):
    namespace: dict = {}
    cell = run_cells_until("os.replace", namespace)
    names = []
    real_replace = os.replace

    def spying_replace(source, target, *args, **kwargs):
        names.append(Path(source).name)
        return real_replace(source, target, *args, **kwargs)

    monkeypatch.setattr(os, "replace", spying_replace)
    exec(compile(cell, "01a", "exec"), namespace)
    exec(compile(cell, "01a", "exec"), namespace)
    assert len(names) == 2 and names[0] != names[1], f"one fixed temporary name: {names}"


def test_the_checkpoint_stores_every_rng_as_plain_values(in_tmp):
    import random

    import numpy as np

    namespace: dict = {}
    run_cells_until("course_lib import checkpoint as ckpt", namespace)
    # map_location="meta" moves every tensor off the CPU, as map_location="cuda" does on a GPU.
    saved = torch.load(
        namespace["workdir"] / "checkpoint.pth", map_location="meta", weights_only=True
    )
    rng = saved.get("rng")
    assert isinstance(rng, dict) and {"python", "numpy", "torch", "cuda"} <= set(rng), (
        f"the checkpoint stores {sorted(k for k in saved if 'rng' in k)}, not every RNG"
    )
    restore = namespace["restore_rng_states"]
    restore(rng)  # a state moved off the CPU by map_location would raise here
    drawn = (random.random(), np.random.rand(), torch.rand(1).item())
    restore(rng)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == drawn
