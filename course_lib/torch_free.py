"""Run an ONNX file in a Python process that cannot import PyTorch: the proof that it needs none.

"ONNX runs without PyTorch" is easy to claim and easy to fake by accident: in a notebook torch is
already imported, and a loader may import it quietly. ``run_onnx_without_torch`` starts a new
interpreter whose first act is to install an import blocker for ``torch`` (a meta-path finder that
refuses ``torch`` and every ``torch.*`` module), then shows that ``import torch`` fails there,
runs the file with onnxruntime and NumPy only, and reports which ``torch`` modules were loaded
(none, or the run is refused). Inputs and outputs travel as a NumPy ``.npz`` file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from course_lib.errors import CourseError

__all__ = ["TorchFreeRun", "TorchFreeRunError", "run_onnx_without_torch"]


class TorchFreeRunError(CourseError):
    """The ONNX file could not be run in the torch-free process; the message names the fix."""


@dataclass(frozen=True)
class TorchFreeRun:
    """What the torch-free process did: its outputs, and the evidence that torch was absent."""

    path: Path
    outputs: dict[str, np.ndarray]
    torch_import_error: str  # what ``import torch`` raised inside the process
    torch_modules_loaded: tuple[str, ...]  # ``torch*`` entries of sys.modules at the end: ()
    onnxruntime_version: str
    seconds: float  # wall time of the child process, start to exit

    def __str__(self) -> str:
        shapes = ", ".join(f"{name}{list(out.shape)}" for name, out in self.outputs.items())
        return (
            f"{self.path.name} run by onnxruntime {self.onnxruntime_version} in a process without "
            f"PyTorch: outputs {shapes}; import torch there: {self.torch_import_error}; "
            f"torch modules loaded: {len(self.torch_modules_loaded)}"
        )


# The child's first lines install the blocker, before anything else is imported, so neither
# onnxruntime nor NumPy can pull torch in behind our back.
_CHILD_CODE = r"""
import sys


class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: this interpreter runs without PyTorch)")
        return None


sys.meta_path.insert(0, _NoTorch())
import json, time

started = time.perf_counter()
try:
    import torch  # noqa: F401  (must fail)
    torch_error = ""
except ImportError as exc:
    torch_error = f"{type(exc).__name__}: {exc}"
import numpy as np
import onnxruntime as ort

model_path, inputs_path, outputs_path, threads = sys.argv[1:5]
options = ort.SessionOptions()
options.intra_op_num_threads = int(threads)
options.log_severity_level = 3
session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
with np.load(inputs_path) as stored:
    feeds = {i.name: stored[i.name] for i in session.get_inputs()}
names = [o.name for o in session.get_outputs()]
np.savez(outputs_path, **dict(zip(names, session.run(None, feeds))))
print(json.dumps({
    "torch_error": torch_error,
    "torch_modules": sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")),
    "onnxruntime": ort.__version__,
    "output_names": names,
}))
"""


def _as_numpy(value: Any) -> np.ndarray:
    """A NumPy array from an array or a tensor (detached, on the CPU), without importing torch."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.ascontiguousarray(value)


def _exception_lines(stderr: str) -> str:
    """The child's exception and its message (the traceback frames above it are dropped)."""
    lines = stderr.strip().splitlines()
    # The exception line is the last one that is not indented (frames and carets are).
    starts = [
        i for i, line in enumerate(lines) if line[:1].strip() and not line.startswith("Traceback")
    ]
    return "\n".join(lines[starts[-1] :] if starts else lines[-4:])


def _input_names(path: Path) -> list[str]:
    """The file's graph input names, read with the ``onnx`` package (weights not loaded)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    initializers = {init.name for init in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in initializers]


def run_onnx_without_torch(
    path: str | os.PathLike[str],
    inputs: Mapping[str, Any] | Sequence[Any],
    *,
    threads: int = 1,
    timeout: float = 120,
) -> TorchFreeRun:
    """Run the ONNX file at ``path`` in a new Python process in which ``import torch`` fails.

    ``inputs`` are arrays or tensors, by graph input name or in the graph's order. The process runs
    onnxruntime's CPU provider with ``threads`` intra-op threads and returns every output by name.
    Raises ``TorchFreeRunError`` if the process fails, or if torch got loaded after all.
    Taught in notebooks/07b_onnx_latency.ipynb, section "Runs without PyTorch".
    """
    path = Path(path)
    if not path.is_file():
        raise TorchFreeRunError(path, "no such ONNX file", "export the model first (export_onnx)")
    if isinstance(inputs, Mapping):
        feeds = {name: _as_numpy(value) for name, value in inputs.items()}
    else:
        names = _input_names(path)
        if len(names) != len(inputs):
            raise TorchFreeRunError(
                path,
                f"the graph has {len(names)} input(s) {names}, {len(inputs)} were given",
                "pass one array per graph input, or a dict by input name",
            )
        feeds = {name: _as_numpy(value) for name, value in zip(names, inputs, strict=True)}
    with tempfile.TemporaryDirectory(prefix="torch-free-") as tmp:
        inputs_path, outputs_path = Path(tmp) / "inputs.npz", Path(tmp) / "outputs.npz"
        np.savez(inputs_path, **feeds)
        # The same interpreter as ours (so onnxruntime and NumPy are installed), started clean:
        # -I ignores PYTHON* variables and the user's site folder, and the cwd is the temp folder.
        command = [sys.executable, "-I", "-c", _CHILD_CODE, str(path.resolve())]
        command += [str(inputs_path), str(outputs_path), str(threads)]
        started = time.perf_counter()
        done = subprocess.run(
            command, cwd=tmp, capture_output=True, text=True, timeout=timeout, check=False
        )
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            tail = _exception_lines(done.stderr)
            raise TorchFreeRunError(
                path,
                f"the torch-free process failed (exit {done.returncode}):\n{tail}",
                "check that onnxruntime and numpy are installed, and that the inputs match the "
                "graph's inputs (names, shapes, float32)",
            )
        report = json.loads(done.stdout.strip().splitlines()[-1])
        with np.load(outputs_path) as stored:
            outputs = {name: stored[name] for name in report["output_names"]}
    if not report["torch_error"] or report["torch_modules"]:
        raise TorchFreeRunError(
            path,
            f"torch was importable or loaded in the child ({len(report['torch_modules'])} torch "
            f"modules, e.g. {report['torch_modules'][:3]})",
            "this is a defect of the blocker in course_lib.torch_free: report it",
        )
    return TorchFreeRun(
        path=path,
        outputs=outputs,
        torch_import_error=report["torch_error"],
        torch_modules_loaded=tuple(report["torch_modules"]),
        onnxruntime_version=report["onnxruntime"],
        seconds=seconds,
    )
