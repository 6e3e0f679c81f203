"""TorchScript, the chapter's exporter (6.3.6, deprecated in current PyTorch): trace and script.

Tracing records one example's operations and bakes in any Python ``if`` on the data; the helper
checks the trace against the model on other inputs and warns (or raises) when they differ.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils import _pytree as pytree

from course_lib.export.errors import TraceMismatchError, TraceMismatchWarning
from course_lib.export.modes import Inputs, as_tuple, exporting_in_eval_mode, ignore_jit_deprecation
from course_lib.export.trust import check_torchscript_trusted
from course_lib.export.writing import save_through_python, write_atomically

__all__ = [
    "load_torchscript",
    "save_torchscript",
    "script_model",
    "trace_model",
]


def save_torchscript(module: torch.jit.ScriptModule, path: str | os.PathLike[str]) -> Path:
    """``torch.jit.save``, atomically: a failed save keeps the previous file and raises clearly."""
    with ignore_jit_deprecation():
        return write_atomically(
            path,
            lambda temp: save_through_python(temp, lambda f: torch.jit.save(module, f)),
            "TorchScript file",
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
    on_mismatch: str = "warn",
) -> torch.jit.ScriptModule:
    """The chapter's ``torch.jit.trace``: record the operations one example input runs through.

    Tracing keeps no Python control flow: an ``if`` on the data is evaluated once, for the example,
    and baked in (PyTorch emits a ``TracerWarning``, which is left visible). The helper then runs
    the trace and the model on new inputs of the example's shape (the example negated, random
    values); if they differ it warns with ``TraceMismatchWarning`` (``on_mismatch="raise"``: raises
    ``TraceMismatchError``; ``"ignore"``: skips the check), naming the fix: ``script_model``, or
    ``export_program`` with ``torch.cond``. Saved with ``torch.jit.save`` if ``path`` (atomically).
    TorchScript is deprecated: its DeprecationWarning is silenced here (see notebook 6.3.6).
    Taught in notebooks/06b_export_in_depth.ipynb.
    """
    if on_mismatch not in ("warn", "raise", "ignore"):
        raise ValueError(f"on_mismatch={on_mismatch!r}: use 'warn', 'raise' or 'ignore'")
    example = as_tuple(example_inputs)
    with exporting_in_eval_mode(model, "trace"), ignore_jit_deprecation():
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
    if path is not None:
        save_torchscript(traced, path)
    return traced


def script_model(
    model: nn.Module, path: str | os.PathLike[str] | None = None
) -> torch.jit.ScriptModule:
    """The chapter's ``torch.jit.script``: compile ``forward``'s Python source, control flow included.

    The source must type-check: an argument without an annotation is taken to be a Tensor, which is
    why the chapter's ``use_relu=True`` fails and ``use_relu: bool = True`` works.
    Taught in notebooks/06b_export_in_depth.ipynb.
    """
    with exporting_in_eval_mode(model, "script"), ignore_jit_deprecation():
        scripted = torch.jit.script(model)
    if path is not None:
        save_torchscript(scripted, path)
    return scripted


def load_torchscript(
    path: str | os.PathLike[str],
    map_location: str | torch.device | None = None,
    *,
    trusted: bool = False,
) -> torch.jit.ScriptModule:
    """Load a TorchScript file (``torch.load`` refuses these): needs no Python class.

    A TorchScript file is a program that runs while it loads, so it is refused
    (``UntrustedCodeError``) unless ``trusted=True``: pass it for files you made or trust
    completely. Taught in notebooks/06_torchscript.ipynb.
    """
    check_torchscript_trusted(path, trusted)
    with ignore_jit_deprecation():
        return torch.jit.load(str(path), map_location=map_location)
