"""Exporting a model as a self-contained program: TorchScript (deprecated) and ``torch.export``.

Both turn a model into a file that runs without the Python class that defined it. TorchScript
(``torch.jit.trace`` / ``torch.jit.script``) is the chapter's way; current PyTorch deprecates it
in favour of ``torch.export``, which writes ``.pt2`` programs with a dynamic batch dimension.

Every helper here exports the model in **eval mode**: a model with any submodule left in training
mode is switched to eval for the export (with a ``TrainingModeWarning`` that names the submodules)
and each submodule's flag is put back exactly as found afterwards, because a program exported in
training mode bakes in dropout and BatchNorm's batch statistics. No helper changes a buffer.
Files are written atomically (a temporary file in the same folder, renamed over the target), so a
failed export leaves the previous good file in place and raises ``ExportWriteError``.
``run_in_fresh_process`` proves that a file is self-contained by running it in a new Python
process in which the course's model classes cannot even be imported.
"""

from __future__ import annotations

import contextlib
import errno
import inspect
import io
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils import _pytree as pytree

from course_lib.safe_io import CheckpointError

Inputs = torch.Tensor | tuple[Any, ...]


class TrainingModeWarning(UserWarning):
    """A model (or one of its submodules) in training mode was exported; eval mode was used."""


class TraceMismatchWarning(UserWarning):
    """A trace answers differently from the model on inputs other than the example."""


class ExportError(CheckpointError):
    """An export helper failed; the message names the file (or model), the problem and the fix.

    The course's house error style (``CheckpointError(path, problem, fix)``), for exports.
    """


class ExportWriteError(ExportError, OSError):
    """An exported file could not be written (disk full, no permission, ...); the old file is kept.

    ``errno`` is the underlying ``OSError``'s (``errno.ENOSPC`` for a full disk).
    """

    def __str__(self) -> str:  # OSError's own would print only "[Errno 28] ..."
        return f"{self.path}: {self.problem}\n  How to fix: {self.fix}"


class TraceMismatchError(ExportError):
    """``trace_model(..., on_mismatch="raise")``: the trace differs from the model on new inputs."""


class InputCountError(ExportError, TypeError):
    """An exported model was called with another number of inputs than it was exported with."""

    def __init__(self, where: str | os.PathLike[str], expected: Sequence[str], given: int) -> None:
        self.expected = tuple(expected)
        self.given = given
        names = ", ".join(self.expected)
        super().__init__(
            where,
            f"the model takes {len(self.expected)} input{'s' * (len(self.expected) != 1)} "
            f"({names}), but {given} {'was' if given == 1 else 'were'} given.",
            f"call it with one tensor per input, in this order: model({names}).",
        )


def _shape_text(shape: Sequence[int | str | None]) -> str:
    parts = [
        ("batch" if i == 0 else "dynamic") if d is None else str(d) for i, d in enumerate(shape)
    ]
    return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"


class StaticShapeError(ExportError, ValueError):
    """An input's shape differs from the fixed shape an exported program was made for.

    The message names the dimensions that differ. Only when the batch dimension (0) alone is at
    fault does it suggest a dynamic batch; a fixed dimension elsewhere (a sequence length) gets the
    ``dynamic_shapes`` declaration that makes it dynamic, or the size the model needs there.
    """

    def __init__(
        self, where: str, input_name: str, fixed: Sequence[int | None], got: Sequence[int]
    ):
        self.input_name = input_name
        self.fixed = tuple(fixed)
        self.got = tuple(got)
        shown = _shape_text(self.fixed)
        if len(self.got) != len(self.fixed):
            self.dims: tuple[int, ...] = ()
            problem = (
                f"input {input_name!r} has shape {self.got} ({len(self.got)} dimensions), but the "
                f"program takes {len(self.fixed)} dimensions: {shown}."
            )
            fix = f"feed a tensor shaped {shown}; add or remove a dimension (unsqueeze/squeeze)."
            super().__init__(where, problem, fix)
            return
        self.dims = tuple(
            i
            for i, (f, g) in enumerate(zip(self.fixed, self.got, strict=True))
            if f not in (None, g)
        )
        if self.dims == (0,):
            problem = (
                f"input {input_name!r} has shape {self.got}, but the program was exported with the "
                f"fixed shape {shown}."
            )
            fix = (
                "export with a dynamic batch dimension (dynamic_batch=True, the default of the "
                "course's export helpers; with torch.export directly: "
                f"dynamic_shapes={{{input_name!r}: {{0: torch.export.Dim('batch')}}}}), or feed "
                f"inputs of exactly {shown}."
            )
        else:
            named = "; ".join(
                f"dimension {i} is {self.got[i]}, the program has {self.fixed[i]} there (fixed)"
                for i in self.dims
            )
            problem = (
                f"input {input_name!r} has shape {self.got}, but the program takes {shown}: "
                f"{named}."
            )
            spec = ", ".join(
                f"{i}: torch.export.Dim('{'batch' if i == 0 else f'dim{i}'}')" for i in self.dims
            )
            fix = (
                f"if that size may vary (a sequence length, an image size), export with it "
                f"declared dynamic: dynamic_shapes={{{input_name!r}: {{{spec}}}}} (export_onnx and "
                "export_program take dynamic_shapes=); if the model fixes it (features, channels), "
                f"feed inputs shaped {shown}."
            )
        super().__init__(where, problem, fix)


def as_tuple(inputs: Inputs) -> tuple[Any, ...]:
    """Example inputs as the tuple ``torch.jit`` and ``torch.export`` expect."""
    return inputs if isinstance(inputs, tuple) else (inputs,)


# Modules whose forward differs between training and eval mode.
_MODE_DEPENDENT = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm, nn.RNNBase)


def _training_submodules(model: nn.Module) -> list[str]:
    """``name (Class)`` of the modules in training mode whose output depends on the mode.

    Those are Dropout, BatchNorm and recurrent layers (which apply dropout between layers), and
    any module of the caller's own (its forward may test ``self.training``); when none of these
    is training but some module is, the training leaf modules (or else all) are listed.
    """
    training = [
        (name or "(the model itself)", module)
        for name, module in model.named_modules()
        if module.training
    ]
    dependent = [
        (name, module)
        for name, module in training
        if isinstance(module, _MODE_DEPENDENT)
        or (
            not type(module).__module__.startswith("torch.")
            and next(module.children(), None) is None
        )
    ]
    shown = dependent or [(n, m) for n, m in training if next(m.children(), None) is None]
    shown = shown or training
    return [f"{name} ({type(module).__name__})" for name, module in shown]


@contextlib.contextmanager
def exporting_in_eval_mode(model: nn.Module, what: str = "export") -> Iterator[nn.Module]:
    """Run an export with every module of ``model`` in eval mode; restore each flag and buffer after.

    Why switch rather than refuse: exporting in training mode is almost always a mistake (dropout
    would stay on, BatchNorm would normalise with each batch's statistics), and the fix is always
    the same. Why warn, naming the submodules: the caller should know that the file differs from
    ``model`` as it was, and a Dropout left training inside an eval model is easy to miss.
    Why restore flag by flag: ``model.train()`` would also flip submodules the caller had frozen
    in eval mode (a BatchNorm kept frozen while fine-tuning). Buffers (BatchNorm's running
    statistics) are restored too, in case a forward pass during the export changed them.
    Taught in notebooks/06_torchscript.ipynb.
    """
    flags = [(module, module.training) for module in model.modules()]
    training = _training_submodules(model)
    if training:
        shown = ", ".join(training[:6]) + (
            f" and {len(training) - 6} more" if len(training) > 6 else ""
        )
        where = (
            "was in training mode"
            if model.training
            else "is in eval mode, but some submodules are not"
        )
        warnings.warn(
            f"{type(model).__name__} {where}: {shown}. The {what} used eval mode instead "
            "(dropout off, BatchNorm uses its running statistics), and each module was put back "
            "in the mode it had. Call model.eval() before exporting to silence this warning.",
            TrainingModeWarning,
            stacklevel=4,
        )
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    for module, _ in flags:
        module.training = False  # attribute, not .eval(): a module's own train() may do more
    try:
        yield model
    finally:
        for module, was_training in flags:
            module.training = was_training
        with torch.no_grad():
            for buffer, saved in buffers:
                if buffer.shape == saved.shape and not torch.equal(buffer, saved):
                    buffer.copy_(saved)


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


def _write_error(path: Path, exc: BaseException, what: str) -> ExportWriteError:
    """The ``ExportWriteError`` for a failed write of ``path`` (the previous file is intact)."""
    code = exc.errno if isinstance(exc, OSError) and exc.errno else errno.EIO
    folder = path.parent
    if code == errno.ENOSPC or code == getattr(errno, "EDQUOT", None):
        fix = f"free space on the disk that holds {folder}, or export to another folder."
    elif code in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = f"make {folder} writable (e.g. chmod u+w {folder}) or export to another folder."
    else:
        fix = f"check the disk and the folder {folder}; then export again."
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    kept = "the previous file is unchanged" if path.exists() else "no file was left there"
    error = ExportWriteError(
        path,
        f"the {what} could not be written: {reason}"
        f"{f' ({errno.errorcode[code]})' if code in errno.errorcode else ''}; {kept}.",
        fix,
    )
    error.errno = code
    error.strerror = reason
    error.filename = str(path)
    return error


def _fsync(path: Path) -> None:
    with path.open("rb") as written:
        os.fsync(written.fileno())


def write_atomically(
    path: str | os.PathLike[str], write: Callable[[Path], None], what: str = "export"
) -> Path:
    """Call ``write(temp_path)``, then move the file(s) written there over ``path``.

    ``temp_path`` has the same name as ``path`` but lies in a fresh hidden folder next to it (same
    disk, so the rename is atomic; same name, so a sidecar such as ``model.onnx.data`` gets the
    name the file refers to). Every file written there is flushed to disk and renamed into place,
    sidecars first. A failure (a full disk, an interrupt) removes the temporary folder, leaves the
    previous export at ``path`` untouched, and raises ``ExportWriteError`` naming the file.
    Taught in notebooks/09_safe_saving.ipynb (the same idea for checkpoints).
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    try:
        scratch = Path(tempfile.mkdtemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp"))
    except OSError as exc:
        raise _write_error(path, exc, what) from None
    try:
        write(scratch / path.name)
        written = sorted(scratch.iterdir(), key=lambda f: f.name == path.name)  # main file last
        for file in written:
            _fsync(file)
        for file in written:
            os.replace(file, folder / file.name)
    except OSError as exc:
        shutil.rmtree(scratch, ignore_errors=True)
        raise _write_error(path, exc, what) from None
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return path
    try:
        os.fsync(fd)  # make the rename durable
    except OSError:
        pass
    finally:
        os.close(fd)
    return path


class _ErrorHoldingFile:
    """A file object that never raises from ``write``: it keeps the first ``OSError`` instead.

    PyTorch's C++ zip writer finishes the archive in a destructor; an error raised there (a full
    disk) calls ``std::terminate`` and kills the interpreter (exit 134). Writing through Python
    and holding the error until the writer is done turns that into an exception we can raise.
    """

    def __init__(self, path: Path) -> None:
        self._file = path.open("wb")
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        if self.error is None:
            try:
                self._file.write(data)
            except OSError as exc:
                self.error = exc
        return len(data)

    def flush(self) -> None:
        if self.error is None:
            try:
                self._file.flush()
            except OSError as exc:
                self.error = exc

    def close(self) -> None:
        try:
            self._file.close()
        except OSError as exc:
            self.error = self.error or exc
        if self.error is not None:
            raise self.error


def _save_through_python(path: Path, save: Callable[[Any], None]) -> None:
    """``save(file_object)`` into ``path``; a failed write raises ``OSError`` (no abort)."""
    holder = _ErrorHoldingFile(path)
    try:
        save(holder)
    finally:
        holder.close()


def save_torchscript(module: torch.jit.ScriptModule, path: str | os.PathLike[str]) -> Path:
    """``torch.jit.save``, atomically: a failed save keeps the previous file and raises clearly."""
    with _ignore_jit_deprecation():
        return write_atomically(
            path,
            lambda temp: _save_through_python(temp, lambda f: torch.jit.save(module, f)),
            "TorchScript file",
        )


def _graph_nodes(program: torch.export.ExportedProgram) -> Iterator[torch.fx.Node]:
    """Every node of the program, including those of subgraphs (``torch.cond``'s branches)."""
    for module in program.graph_module.modules():
        if isinstance(module, torch.fx.GraphModule):
            yield from module.graph.nodes


@contextlib.contextmanager
def _without_stack_traces(program: torch.export.ExportedProgram) -> Iterator[None]:
    """Hide each node's ``stack_trace`` while saving, then put it back.

    The traces name files of the exporting machine (its virtualenv's site-packages, the model's
    source file): a file meant for deployment should not carry them, and without them the same
    model gives the same bytes wherever it is exported. The caller's program keeps them.
    """
    removed = []
    for node in _graph_nodes(program):
        if "stack_trace" in node.meta:
            removed.append((node, node.meta.pop("stack_trace")))
    try:
        yield
    finally:
        for node, trace in removed:
            node.meta["stack_trace"] = trace


def save_program(program: torch.export.ExportedProgram, path: str | os.PathLike[str]) -> Path:
    """``torch.export.save`` atomically, without the exporting machine's file paths in the file.

    Taught in notebooks/06_torchscript.ipynb.
    """
    with _without_stack_traces(program):
        return write_atomically(
            path,
            lambda temp: _save_through_python(temp, lambda f: torch.export.save(program, f)),
            ".pt2 program",
        )


def _check_inputs(example: tuple[Any, ...], count: int = 3) -> list[tuple[Any, ...]]:
    """New inputs shaped like ``example``: the example negated, then random values (seeded).

    A Python ``if`` on the data that tracing baked in answers differently on at least one of
    them for the usual tests (a sign, a norm, a threshold). Non-float inputs are kept.
    """
    gen = torch.Generator().manual_seed(0)
    out = []
    for i in range(count):
        new = []
        for x in example:
            if isinstance(x, torch.Tensor) and x.is_floating_point():
                if i == 0:
                    new.append(-x)
                else:
                    noise = torch.randn(x.shape, generator=gen, dtype=x.dtype)
                    new.append(noise.to(x.device) * (x.abs().max() + 1))
            else:
                new.append(x)
        out.append(tuple(new))
    return out


def _tensor_leaves(outputs: Any) -> list[torch.Tensor]:
    return [leaf for leaf in pytree.tree_leaves(outputs) if isinstance(leaf, torch.Tensor)]


def _trace_mismatch(
    model: nn.Module, traced: torch.jit.ScriptModule, example: tuple[Any, ...]
) -> str | None:
    """Describe where the trace and the model differ on new inputs, or ``None`` if they agree."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for n, inputs in enumerate(_check_inputs(example)):
            try:
                got, expected = traced(*inputs), model(*inputs)
            except Exception:
                return None  # inputs this model cannot take: no verdict, not a mismatch
            got_leaves, expected_leaves = _tensor_leaves(got), _tensor_leaves(expected)
            for g, e in zip(got_leaves, expected_leaves, strict=False):
                if g.shape != e.shape or not torch.allclose(g, e, atol=1e-5, rtol=1e-4):
                    diff = (g - e).abs().max().item() if g.shape == e.shape else float("inf")
                    which = "the example negated" if n == 0 else "random inputs"
                    return (
                        f"on {which} (same shape as the example), max |traced - model| = {diff:.3g}"
                    )
    return None


def trace_model(
    model: nn.Module,
    example_inputs: Inputs,
    path: str | os.PathLike[str] | None = None,
    *,
    freeze: bool = False,
    on_mismatch: str = "warn",
) -> torch.jit.ScriptModule:
    """The chapter's ``torch.jit.trace``: record the operations one example input runs through.

    Tracing keeps no Python control flow: an ``if`` on the data is evaluated once, for the example,
    and baked in (PyTorch emits a ``TracerWarning``, which is left visible). The helper then runs
    the trace and the model on new inputs of the example's shape (the example negated, random
    values); if they differ it warns with ``TraceMismatchWarning`` (``on_mismatch="raise"``: raises
    ``TraceMismatchError``; ``"ignore"``: skips the check), naming the fix: ``script_model``, or
    ``export_program`` with ``torch.cond``. Saved with ``torch.jit.save`` if ``path`` (atomically).
    ``freeze=True`` inlines the weights as constants (``torch.jit.freeze``), which lets the JIT
    fold BatchNorm into the convolutions: faster inference, and the result can no longer train.
    TorchScript is deprecated: its DeprecationWarning is silenced here (see notebook 6.3.6).
    Taught in notebooks/06_torchscript.ipynb.
    """
    if on_mismatch not in ("warn", "raise", "ignore"):
        raise ValueError(f"on_mismatch={on_mismatch!r}: use 'warn', 'raise' or 'ignore'")
    example = as_tuple(example_inputs)
    with exporting_in_eval_mode(model, "trace"), _ignore_jit_deprecation():
        traced = torch.jit.trace(model, example)
        mismatch = None if on_mismatch == "ignore" else _trace_mismatch(model, traced, example)
    if mismatch is not None:
        name = type(model).__name__
        problem = (
            f"the trace of {name} answers differently from the model {mismatch}: forward() "
            "branches on the data (a Python if/while on a tensor), and tracing kept only the "
            "branch the example took."
        )
        fix = (
            "use script_model(model) (keeps the if), or write the branch with torch.cond and use "
            "export_program; do not deploy this trace."
        )
        if on_mismatch == "raise":
            raise TraceMismatchError(f"trace_model({name})", problem, fix)
        warnings.warn(
            f"TRACE IS WRONG for other inputs: {problem} How to fix: {fix}",
            TraceMismatchWarning,
            stacklevel=2,
        )
    with _ignore_jit_deprecation():
        if freeze:
            traced = torch.jit.freeze(traced)
    if path is not None:
        save_torchscript(traced, path)
    return traced


def script_model(
    model: nn.Module, path: str | os.PathLike[str] | None = None
) -> torch.jit.ScriptModule:
    """The chapter's ``torch.jit.script``: compile ``forward``'s Python source, control flow included.

    The source must type-check: an argument without an annotation is taken to be a Tensor, which is
    why the chapter's ``use_relu=True`` fails and ``use_relu: bool = True`` works.
    Taught in notebooks/06_torchscript.ipynb.
    """
    with exporting_in_eval_mode(model, "script"), _ignore_jit_deprecation():
        scripted = torch.jit.script(model)
    if path is not None:
        save_torchscript(scripted, path)
    return scripted


def load_torchscript(
    path: str | os.PathLike[str], map_location: str | torch.device | None = None
) -> torch.jit.ScriptModule:
    """Load a TorchScript file (``torch.load`` refuses these): needs no Python class."""
    with _ignore_jit_deprecation():
        return torch.jit.load(str(path), map_location=map_location)


def batched_inputs(args: Sequence[Any]) -> list[bool]:
    """Which inputs carry the batch in dimension 0, when the caller declared nothing.

    The first tensor input does; another does when its dimension 0 has the same size, except a
    1-D input when that size is 1 (a shape ``(1,)`` is more likely a setting, such as a
    temperature, than a batch of one). Declare ``dynamic_shapes`` to say otherwise.
    """
    tensors = [x for x in args if isinstance(x, torch.Tensor) and x.dim() > 0]
    if not tensors:
        return [False] * len(args)
    batch = tensors[0].shape[0]
    flags = []
    for x in args:
        if not (isinstance(x, torch.Tensor) and x.dim() > 0):
            flags.append(False)
        elif x is tensors[0]:
            flags.append(True)
        else:
            flags.append(x.shape[0] == batch and (x.dim() > 1 or batch > 1))
    return flags


def _bound_positions(model: nn.Module, args: tuple[Any, ...]) -> list[tuple[str, int | None]]:
    """For each positional argument, its parameter name and, for ``*args``, its index there."""
    try:
        bound = inspect.signature(model.forward).bind(*args)
    except TypeError:
        return []
    kinds = {name: p.kind for name, p in inspect.signature(model.forward).parameters.items()}
    positions: list[tuple[str, int | None]] = []
    for name, value in bound.arguments.items():
        if kinds[name] is inspect.Parameter.VAR_POSITIONAL:
            positions.extend((name, i) for i in range(len(value)))
        elif kinds[name] is not inspect.Parameter.VAR_KEYWORD:
            positions.append((name, None))
    return positions[: len(args)]


def _positional_specs(model: nn.Module, args: tuple[Any, ...], dynamic_shapes: Any) -> list[Any]:
    """``dynamic_shapes`` as one spec per positional argument (``None`` where nothing is dynamic)."""
    if dynamic_shapes is None:
        return [None] * len(args)
    if isinstance(dynamic_shapes, dict):
        specs = []
        for name, index in _bound_positions(model, args):
            spec = dynamic_shapes.get(name)
            if index is not None:
                spec = spec[index] if isinstance(spec, (list, tuple)) else None
            specs.append(spec)
    else:
        specs = list(dynamic_shapes)[: len(args)]
    return specs + [None] * (len(args) - len(specs))


def _dynamic_dims(spec: Any) -> list[int]:
    """The dimensions a per-input spec (``{0: Dim(...)}`` or ``[Dim, None]``) declares dynamic."""
    if isinstance(spec, dict):
        items = spec.items()
    elif isinstance(spec, (list, tuple)):
        items = enumerate(spec)
    else:
        return []
    return [d for d, v in items if v is not None and v is not torch.export.Dim.STATIC]


def widen_size_one_dims(
    model: nn.Module, args: tuple[Any, ...], dynamic_shapes: Any
) -> tuple[Any, ...]:
    """Repeat every dimension declared dynamic that has size 1 in the example, to size 2.

    torch.export specialises size-1 dimensions (a 1 could be a broadcast), so a dynamic dimension
    needs an example of size 2 or more; the program still accepts size 1. Only declared dimensions
    are widened: an input of shape ``(1,)`` that is not declared keeps its one value.
    """
    out = []
    for x, spec in zip(args, _positional_specs(model, args, dynamic_shapes), strict=True):
        if isinstance(x, torch.Tensor):
            for d in _dynamic_dims(spec):
                if d < x.dim() and x.shape[d] == 1:
                    x = torch.cat([x, x], dim=d)
        out.append(x)
    return tuple(out)


def batch_dynamic_shapes(
    model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any] | None = None
) -> dict[str, Any] | tuple[Any, ...]:
    """``dynamic_shapes`` making dimension 0 of the batched inputs one shared dynamic batch size.

    Keyed by ``forward``'s argument names (what ``torch.export`` and the ONNX exporter expect);
    non-tensor arguments such as ``use_relu`` and inputs without the batch (see ``batched_inputs``)
    get ``None`` (fixed at export time).
    """
    batch = torch.export.Dim("batch")
    flags = batched_inputs(args)
    specs = [{0: batch} if flag else None for flag in flags]
    positions = _bound_positions(model, args)
    if len(positions) != len(args):
        return tuple(specs)
    shapes: dict[str, Any] = {}
    for (name, index), spec in zip(positions, specs, strict=True):
        if index is None:
            shapes[name] = spec
        else:  # forward(*inputs): one tuple of specs under the name of *inputs
            shapes[name] = (*shapes.get(name, ()), spec)
    for name in kwargs or {}:
        shapes.setdefault(name, None)
    return shapes


def export_program(
    model: nn.Module,
    example_inputs: Inputs,
    path: str | os.PathLike[str] | None = None,
    *,
    dynamic_batch: bool = True,
    kwargs: dict[str, Any] | None = None,
    dynamic_shapes: Any = None,
) -> torch.export.ExportedProgram:
    """``torch.export`` the model (TorchScript's successor), with a dynamic batch dimension.

    ``dynamic_shapes`` (torch.export's own format, e.g. ``{"x": {0: Dim("batch"), 1: Dim("seq")}}``)
    replaces the default dynamic batch. A dimension declared dynamic whose example size is 1 is
    repeated to 2 for the export, because torch.export specialises size-1 dimensions (the
    exported program still accepts size 1). Python-level arguments in ``kwargs`` (such as
    ``use_relu=False``) are fixed at export time. Data-dependent ``if``s must be written with
    ``torch.cond``. Saved with ``save_program`` (atomically, without the machine's file paths) if
    ``path`` is given (``.pt2``). Taught in notebooks/06_torchscript.ipynb.
    """
    args = as_tuple(example_inputs)
    if dynamic_shapes is None and dynamic_batch:
        dynamic_shapes = batch_dynamic_shapes(model, args, kwargs)
    args = widen_size_one_dims(model, args, dynamic_shapes)
    # On failure torch.export prints the partial graph to stderr; it stays on the exception
    # (``exc.partial_fx_graph``) instead of flooding the notebook.
    with (
        exporting_in_eval_mode(model, "torch.export"),
        quiet_loggers(*EXPORT_LOGGERS),
        contextlib.redirect_stderr(io.StringIO()),
    ):
        program = torch.export.export(model, args, kwargs=kwargs, dynamic_shapes=dynamic_shapes)
    if path is not None:
        save_program(program, path)
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
    path: str | os.PathLike[str], inputs: Inputs, *, timeout: float = 180
) -> FreshRun:
    """Load ``path`` in a new Python process without ``course_lib`` and run ``inputs`` through it."""
    return run_all_in_fresh_process([(path, inputs)], timeout=timeout)[0]
