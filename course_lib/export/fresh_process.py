"""Proof that an exported file is self-contained: run it in a new Python without ``course_lib``.

TorchScript files load with ``torch.jit.load``, ``.pt2`` with ``torch.export.load``, ``.onnx``
with onnxruntime; importing the course's package is blocked in that process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils import _pytree as pytree

from course_lib.export.modes import Inputs, as_tuple
from course_lib.export.trust import check_pt2_trusted, check_torchscript_trusted

__all__ = [
    "FreshRun",
    "artifact_kind",
    "run_all_in_fresh_process",
    "run_in_fresh_process",
]

# Runs in the fresh process. It blocks imports of the course's package, so a file can only work
# if it holds the whole program: there is no class to fall back on.
_CHILD_CODE = r"""
import sys, time
sys.modules["course_lib"] = None
jobs_path, results_path = sys.argv[1:3]
import torch
jobs = torch.load(jobs_path, weights_only=True)
results = []
for kind, artifact, inputs in jobs:
    started = time.perf_counter()
    if kind == "torchscript":
        import warnings
        warnings.simplefilter("ignore", DeprecationWarning)
        model = torch.jit.load(artifact, map_location="cpu")
        with torch.inference_mode():
            outputs = model(*inputs)
    elif kind == "torch.export":
        model = torch.export.load(artifact).module()
        tensor = next(iter(model.state_dict().values()), None)
        if tensor is not None:  # a program exported on a GPU keeps its weights there
            inputs = [x.to(tensor.device) if torch.is_tensor(x) else x for x in inputs]
        with torch.inference_mode():
            outputs = model(*inputs)
    elif kind == "onnx":
        import onnxruntime
        session = onnxruntime.InferenceSession(artifact, providers=["CPUExecutionProvider"])
        arrays = [x.numpy() for x in inputs if torch.is_tensor(x)]
        feeds = {i.name: a for i, a in zip(session.get_inputs(), arrays)}
        outputs = tuple(torch.from_numpy(o) for o in session.run(None, feeds))
    else:
        raise SystemExit(f"unknown kind {kind!r}")
    seconds = time.perf_counter() - started
    # Any structure (a tensor, a tuple, a dict, nested): flat leaves plus the structure as JSON.
    from torch.utils import _pytree as pytree
    leaves, spec = pytree.tree_flatten(outputs)
    leaves = [x.cpu() if torch.is_tensor(x) else x for x in leaves]
    try:
        structure = pytree.treespec_dumps(spec)
    except Exception:
        structure = None
    results.append((leaves, structure, seconds))
course = sorted(m for m in sys.modules if m.startswith("course_lib") and sys.modules[m])
torch.save({"results": results, "course_modules": course}, results_path)
"""


@dataclass(frozen=True)
class FreshRun:
    """What a fresh process computed from one file: its outputs, the loader used, the seconds.

    ``outputs`` are the output tensors in order (a dict's values, a nested tuple's leaves);
    ``value`` is the output as the model returned it (a tensor, a tuple, a dict ...).
    """

    path: Path
    kind: str
    outputs: tuple[torch.Tensor, ...]
    seconds: float
    course_modules_imported: tuple[str, ...]
    value: Any = None


def _rebuild(leaves: list[Any], structure: str | None) -> Any:
    if structure is None:
        return tuple(leaves)
    try:
        return pytree.tree_unflatten(leaves, pytree.treespec_loads(structure))
    except Exception:  # a structure this process cannot rebuild (an unregistered class)
        return tuple(leaves)


def artifact_kind(path: str | os.PathLike[str]) -> str:
    """``'torchscript'``, ``'torch.export'`` or ``'onnx'``, from the file's contents."""
    path = Path(path)
    if path.suffix == ".onnx":
        return "onnx"
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, FileNotFoundError) as exc:
        raise ValueError(f"{path}: not a TorchScript, .pt2 or .onnx file ({exc})") from None
    if any(name.endswith("constants.pkl") for name in names):
        return "torchscript"
    return "torch.export"


def run_all_in_fresh_process(
    jobs: Sequence[tuple[str | os.PathLike[str], Inputs]],
    *,
    timeout: float = 180,
    trusted: bool = False,
) -> list[FreshRun]:
    """Load each ``(path, inputs)`` in ONE new Python process that cannot import ``course_lib``.

    This is the test of "needs no model source": the new process has never seen the classes, and
    importing the course's package is blocked there. TorchScript files load with ``torch.jit.load``,
    ``.pt2`` with ``torch.export.load``, ``.onnx`` with onnxruntime. Inputs and outputs travel as
    ``torch.save`` files (read back with ``weights_only=True``); outputs come back on the CPU.
    One process for several files saves the second or two each Python start costs.

    Files that run code when loaded (TorchScript; a ``.pt2`` holding pickles or native
    libraries, see ``load_program``) are refused before the process starts, unless
    ``trusted=True``. Taught in notebooks/06b_export_in_depth.ipynb.
    """
    prepared = []
    for path, inputs in jobs:
        path = Path(path).resolve()
        kind = artifact_kind(path)
        if kind == "torchscript":
            check_torchscript_trusted(path, trusted)
        elif kind == "torch.export":
            check_pt2_trusted(path, trusted)
        cpu = tuple(x.cpu() if isinstance(x, torch.Tensor) else x for x in as_tuple(inputs))
        prepared.append((kind, str(path), cpu))
    with tempfile.TemporaryDirectory(prefix="fresh-process-") as tmp:
        jobs_path, results_path = Path(tmp) / "jobs.pt", Path(tmp) / "results.pt"
        torch.save(prepared, jobs_path)
        done = subprocess.run(
            [sys.executable, "-c", _CHILD_CODE, str(jobs_path), str(results_path)],
            cwd=tmp,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            tail = "\n".join(done.stderr.strip().splitlines()[-6:])
            names = ", ".join(Path(p).name for _, p, _ in prepared)
            raise RuntimeError(
                f"{names}: running in a fresh Python process failed (exit {done.returncode}):\n"
                f"{tail}"
            )
        result = torch.load(results_path, weights_only=True)
    imported = tuple(result["course_modules"])
    return [
        FreshRun(
            Path(path),
            kind,
            tuple(x for x in leaves if isinstance(x, torch.Tensor)),
            float(seconds),
            imported,
            _rebuild(leaves, structure),
        )
        for (kind, path, _), (leaves, structure, seconds) in zip(
            prepared, result["results"], strict=True
        )
    ]


def run_in_fresh_process(
    path: str | os.PathLike[str], inputs: Inputs, *, timeout: float = 180, trusted: bool = False
) -> FreshRun:
    """Load ``path`` in a new Python process without ``course_lib`` and run ``inputs`` through it.

    ``trusted`` as in ``run_all_in_fresh_process`` (the one a notebook uses). Used by the tests;
    not taught in a notebook.
    """
    return run_all_in_fresh_process([(path, inputs)], timeout=timeout, trusted=trusted)[0]
