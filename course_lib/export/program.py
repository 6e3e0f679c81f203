"""``torch.export``, TorchScript's successor: ``.pt2`` programs with a dynamic batch.

Which inputs carry the batch, the ``dynamic_shapes`` that make it dynamic, exporting and saving
(atomically, without the machine's file paths), loading, and a module that names a shape
mismatch clearly.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from course_lib.export.errors import StaticShapeError
from course_lib.export.modes import (
    EXPORT_LOGGERS,
    Inputs,
    as_tuple,
    exporting_in_eval_mode,
    quiet_loggers,
)
from course_lib.export.trust import check_pt2_trusted
from course_lib.export.writing import save_through_python, write_atomically

__all__ = [
    "ExportedModule",
    "batch_dynamic_shapes",
    "batched_inputs",
    "check_input_shapes",
    "export_program",
    "exported_module",
    "load_program",
    "positional_specs",
    "program_input_shapes",
    "widen_size_one_dims",
]


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


def _save_program(program: torch.export.ExportedProgram, path: str | os.PathLike[str]) -> Path:
    """``torch.export.save`` atomically, without the exporting machine's file paths in the file.

    Taught in notebooks/06_torchscript.ipynb.
    """
    with _without_stack_traces(program):
        return write_atomically(
            path,
            lambda temp: save_through_python(temp, lambda f: torch.export.save(program, f)),
            ".pt2 program",
        )


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


def positional_specs(model: nn.Module, args: tuple[Any, ...], dynamic_shapes: Any) -> list[Any]:
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
    for x, spec in zip(args, positional_specs(model, args, dynamic_shapes), strict=True):
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
    ``torch.cond``. Saved with ``_save_program`` (atomically, without the machine's file paths) if
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
        _save_program(program, path)
    return program


def load_program(
    path: str | os.PathLike[str], *, trusted: bool = False
) -> torch.export.ExportedProgram:
    """Load a ``.pt2`` file written by ``torch.export.save``: needs no Python class.

    A program of a graph and tensors loads without running code. A ``.pt2`` that also holds a
    pickle ``weights_only=True`` refuses or an AOTInductor library runs code in
    ``torch.export.load``: it is refused (``UntrustedCodeError``, saying what it holds) unless
    ``trusted=True``. Taught in notebooks/06_torchscript.ipynb.
    """
    check_pt2_trusted(path, trusted)
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
    program: torch.export.ExportedProgram | str | os.PathLike[str], *, trusted: bool = False
) -> ExportedModule:
    """A callable module from a program (or a ``.pt2`` path) that names a shape mismatch clearly.

    A path is read by ``load_program`` (``trusted`` as there). Taught in
    notebooks/06b_export_in_depth.ipynb.
    """
    if isinstance(program, (str, os.PathLike)):
        return ExportedModule(load_program(program, trusted=trusted), name=str(program))
    return ExportedModule(program)
