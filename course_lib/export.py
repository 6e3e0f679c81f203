"""Exporting a model as a self-contained program: TorchScript (deprecated) and ``torch.export``.

Both turn a model into a file that runs without the Python class that defined it. TorchScript
(``torch.jit.trace`` / ``torch.jit.script``) is the chapter's way; current PyTorch deprecates it
in favour of ``torch.export``, which writes ``.pt2`` programs with a dynamic batch dimension.

Every helper here exports the model in **eval mode**: a model left in training mode is switched to
eval for the export (with a ``TrainingModeWarning`` that says so) and put back afterwards, because a
program exported in training mode bakes in dropout and BatchNorm's batch statistics.
``run_in_fresh_process`` proves that a file is self-contained by running it in a new Python
process in which the course's model classes cannot even be imported.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import os
import subprocess
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

Inputs = torch.Tensor | tuple[Any, ...]


class TrainingModeWarning(UserWarning):
    """A model in training mode was exported; the helper exported it in eval mode instead."""


class StaticShapeError(ValueError):
    """An input's shape differs from the fixed shape an exported program was made for."""

    def __init__(
        self, where: str, input_name: str, fixed: Sequence[int | None], got: Sequence[int]
    ):
        self.input_name = input_name
        self.fixed = tuple(fixed)
        self.got = tuple(got)
        shown = "(" + ", ".join("batch" if d is None else str(d) for d in fixed) + ")"
        super().__init__(
            f"{where}: input {input_name!r} has shape {tuple(got)}, but the program was exported "
            f"with the fixed shape {shown}.\n  How to fix: export with a dynamic batch dimension "
            "(dynamic_batch=True, the default of the course's export helpers; with torch.export "
            "directly: dynamic_shapes={'x': {0: torch.export.Dim('batch')}}), or feed inputs of "
            f"exactly {shown}."
        )


def as_tuple(inputs: Inputs) -> tuple[Any, ...]:
    """Example inputs as the tuple ``torch.jit`` and ``torch.export`` expect."""
    return inputs if isinstance(inputs, tuple) else (inputs,)


@contextlib.contextmanager
def exporting_in_eval_mode(model: nn.Module, what: str = "export") -> Iterator[nn.Module]:
    """Run an export with ``model`` in eval mode; warn if it was training, and restore it after.

    Why switch rather than refuse: exporting in training mode is almost always a mistake (dropout
    would stay on, BatchNorm would normalise with each batch's statistics), and the fix is always
    the same. Why warn: the caller should know the file differs from ``model`` as it was.
    """
    was_training = model.training
    if was_training:
        warnings.warn(
            f"{type(model).__name__} was in training mode: the {what} used eval mode instead "
            "(dropout off, BatchNorm uses its running statistics), and the model was put back in "
            "training mode afterwards. Call model.eval() before exporting to silence this warning.",
            TrainingModeWarning,
            stacklevel=4,
        )
        model.eval()
    try:
        yield model
    finally:
        if was_training:
            model.train()


# Loggers that print progress or diagnostics (with timestamps and PIDs) to stderr during an export.
EXPORT_LOGGERS = ("torch.export", "torch._export", "torch._dynamo", "torch.fx.experimental")


@contextlib.contextmanager
def quiet_loggers(*names: str, level: int = logging.ERROR) -> Iterator[None]:
    """Raise the given loggers to ``level`` for the duration, then restore them.

    The exporters log warnings such as "Unable to find user code corresponding to {u0}" on the way
    to an error that says the same more clearly; in a notebook they are noise.
    """
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(level, lg.getEffectiveLevel()))
    try:
        yield
    finally:
        for lg, old in zip(loggers, levels, strict=True):
            lg.setLevel(old)


@contextlib.contextmanager
def _ignore_jit_deprecation() -> Iterator[None]:
    """Hide TorchScript's DeprecationWarning inside the helpers (notebook 6.3.6 shows it once)."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", category=DeprecationWarning, message=r".*torch\.jit\.\w+` is deprecated.*"
        )
        yield


def trace_model(
    model: nn.Module,
    example_inputs: Inputs,
    path: str | os.PathLike[str] | None = None,
    *,
    freeze: bool = False,
) -> torch.jit.ScriptModule:
    """The chapter's ``torch.jit.trace``: record the operations one example input runs through.

    Tracing keeps no Python control flow: an ``if`` on the data is evaluated once, for the example,
    and baked in (PyTorch emits a ``TracerWarning``, which is left visible). Use ``script_model`` or
    ``export_program`` with ``torch.cond`` for such models. Saved with ``torch.jit.save`` if ``path``.
    ``freeze=True`` inlines the weights as constants (``torch.jit.freeze``), which lets the JIT
    fold BatchNorm into the convolutions: faster inference, and the result can no longer train.
    TorchScript is deprecated: its DeprecationWarning is silenced here (see notebook 6.3.6).
    """
    with exporting_in_eval_mode(model, "trace"), _ignore_jit_deprecation():
        traced = torch.jit.trace(model, as_tuple(example_inputs))
        if freeze:
            traced = torch.jit.freeze(traced)
        if path is not None:
            torch.jit.save(traced, str(path))
    return traced


def script_model(
    model: nn.Module, path: str | os.PathLike[str] | None = None
) -> torch.jit.ScriptModule:
    """The chapter's ``torch.jit.script``: compile ``forward``'s Python source, control flow included.

    The source must type-check: an argument without an annotation is taken to be a Tensor, which is
    why the chapter's ``use_relu=True`` fails and ``use_relu: bool = True`` works.
    """
    with exporting_in_eval_mode(model, "script"), _ignore_jit_deprecation():
        scripted = torch.jit.script(model)
        if path is not None:
            torch.jit.save(scripted, str(path))
    return scripted


def load_torchscript(
    path: str | os.PathLike[str], map_location: str | torch.device | None = None
) -> torch.jit.ScriptModule:
    """Load a TorchScript file (``torch.load`` refuses these): needs no Python class."""
    with _ignore_jit_deprecation():
        return torch.jit.load(str(path), map_location=map_location)


def _double_size_one_batches(inputs: tuple[Any, ...]) -> tuple[Any, ...]:
    """Repeat a batch of 1 to 2: torch.export treats a size-1 dimension as fixed, never dynamic."""
    return tuple(
        torch.cat([x, x]) if isinstance(x, torch.Tensor) and x.dim() > 0 and x.shape[0] == 1 else x
        for x in inputs
    )


def batch_dynamic_shapes(
    model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any] | None = None
) -> dict[str, Any] | tuple[Any, ...]:
    """``dynamic_shapes`` making dimension 0 of every tensor input one shared dynamic batch size.

    Keyed by ``forward``'s argument names (what ``torch.export`` and the ONNX exporter expect);
    non-tensor arguments such as ``use_relu`` get ``None`` (fixed at export time).
    """
    batch = torch.export.Dim("batch")

    def spec(value: Any) -> dict[int, Any] | None:
        return {0: batch} if isinstance(value, torch.Tensor) and value.dim() > 0 else None

    try:
        bound = inspect.signature(model.forward).bind(*args, **(kwargs or {}))
    except TypeError:
        return tuple(spec(x) for x in args)
    return {name: spec(value) for name, value in bound.arguments.items()}


def export_program(
    model: nn.Module,
    example_inputs: Inputs,
    path: str | os.PathLike[str] | None = None,
    *,
    dynamic_batch: bool = True,
    kwargs: dict[str, Any] | None = None,
) -> torch.export.ExportedProgram:
    """``torch.export`` the model (TorchScript's successor), with a dynamic batch dimension.

    An example batch of 1 is repeated to 2 for the export, because torch.export specialises
    size-1 dimensions (the exported program still accepts batch 1). Python-level arguments in
    ``kwargs`` (such as ``use_relu=False``) are fixed at export time. Data-dependent ``if``s must be
    written with ``torch.cond``. Saved with ``torch.export.save`` if ``path`` is given (``.pt2``).
    """
    args = as_tuple(example_inputs)
    dynamic_shapes = None
    if dynamic_batch:
        args = _double_size_one_batches(args)
        dynamic_shapes = batch_dynamic_shapes(model, args, kwargs)
    # On failure torch.export prints the partial graph to stderr; it stays on the exception
    # (``exc.partial_fx_graph``) instead of flooding the notebook.
    with (
        exporting_in_eval_mode(model, "torch.export"),
        quiet_loggers(*EXPORT_LOGGERS),
        contextlib.redirect_stderr(io.StringIO()),
    ):
        program = torch.export.export(model, args, kwargs=kwargs, dynamic_shapes=dynamic_shapes)
    if path is not None:
        torch.export.save(program, str(path))
    return program


def load_program(path: str | os.PathLike[str]) -> torch.export.ExportedProgram:
    """Load a ``.pt2`` file written by ``torch.export.save``: needs no Python class."""
    return torch.export.load(str(path))


def program_input_shapes(
    program: torch.export.ExportedProgram,
) -> dict[str, tuple[int | None, ...]]:
    """Each tensor input's shape as exported: an int for a fixed size, ``None`` for a dynamic one."""
    user_inputs = set(program.graph_signature.user_inputs)
    shapes = {}
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in user_inputs:
            value = node.meta.get("val")
            if isinstance(value, torch.Tensor):
                shapes[node.name] = tuple(d if isinstance(d, int) else None for d in value.shape)
    return shapes


def check_input_shapes(
    where: str, fixed_shapes: dict[str, tuple[int | None, ...]], inputs: Sequence[Any]
) -> None:
    """Raise ``StaticShapeError`` if a tensor input differs from a fixed dimension of its shape."""
    for (name, fixed), value in zip(fixed_shapes.items(), inputs, strict=False):
        shape = tuple(value.shape) if hasattr(value, "shape") else None
        if shape is None:
            continue
        if len(shape) != len(fixed) or any(
            f is not None and f != g for f, g in zip(fixed, shape, strict=False)
        ):
            raise StaticShapeError(where, name, fixed, shape)


class ExportedModule(nn.Module):
    """``program.module()`` with a clear error when an input does not fit the exported shapes."""

    def __init__(self, program: torch.export.ExportedProgram, name: str = "exported program"):
        super().__init__()
        self.module_ = program.module()
        self.fixed_shapes = program_input_shapes(program)
        self.name = name

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        check_input_shapes(self.name, self.fixed_shapes, args)
        return self.module_(*args, **kwargs)


def exported_module(
    program: torch.export.ExportedProgram | str | os.PathLike[str],
) -> ExportedModule:
    """A callable module from a program (or a ``.pt2`` path) that names a shape mismatch clearly."""
    if isinstance(program, (str, os.PathLike)):
        return ExportedModule(load_program(program), name=str(program))
    return ExportedModule(program)


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
        feeds = {i.name: x.numpy() for i, x in zip(session.get_inputs(), inputs)}
        outputs = tuple(torch.from_numpy(o) for o in session.run(None, feeds))
    else:
        raise SystemExit(f"unknown kind {kind!r}")
    if isinstance(outputs, torch.Tensor):
        outputs = (outputs,)
    outputs = tuple(o.cpu() for o in outputs)
    results.append((outputs, time.perf_counter() - started))
course = sorted(m for m in sys.modules if m.startswith("course_lib") and sys.modules[m])
torch.save({"results": results, "course_modules": course}, results_path)
"""


@dataclass(frozen=True)
class FreshRun:
    """What a fresh process computed from one file: its outputs, the loader used, the seconds."""

    path: Path
    kind: str
    outputs: tuple[torch.Tensor, ...]
    seconds: float
    course_modules_imported: tuple[str, ...]


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
    jobs: Sequence[tuple[str | os.PathLike[str], Inputs]], *, timeout: float = 180
) -> list[FreshRun]:
    """Load each ``(path, inputs)`` in ONE new Python process that cannot import ``course_lib``.

    This is the test of "needs no model source": the new process has never seen the classes, and
    importing the course's package is blocked there. TorchScript files load with ``torch.jit.load``,
    ``.pt2`` with ``torch.export.load``, ``.onnx`` with onnxruntime. Inputs and outputs travel as
    ``torch.save`` files (read back with ``weights_only=True``); outputs come back on the CPU.
    One process for several files saves the second or two each Python start costs.
    """
    prepared = []
    for path, inputs in jobs:
        path = Path(path).resolve()
        cpu = tuple(x.cpu() if isinstance(x, torch.Tensor) else x for x in as_tuple(inputs))
        prepared.append((artifact_kind(path), str(path), cpu))
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
        FreshRun(Path(path), kind, tuple(outputs), float(seconds), imported)
        for (kind, path, _), (outputs, seconds) in zip(prepared, result["results"], strict=True)
    ]


def run_in_fresh_process(
    path: str | os.PathLike[str], inputs: Inputs, *, timeout: float = 180
) -> FreshRun:
    """Load ``path`` in a new Python process without ``course_lib`` and run ``inputs`` through it."""
    return run_all_in_fresh_process([(path, inputs)], timeout=timeout)[0]
