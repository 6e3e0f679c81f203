"""Exporting in eval mode, and quiet exporters.

A program exported in training mode bakes in dropout and BatchNorm's batch statistics, so every
helper exports in eval mode: a model with any submodule left training is switched (with a
``TrainingModeWarning`` that names the submodules) and each submodule's flag and every buffer is
put back exactly as found afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from course_lib.export.errors import TrainingModeWarning

__all__ = [
    "EXPORT_LOGGERS",
    "Inputs",
    "as_tuple",
    "exporting_in_eval_mode",
    "ignore_jit_deprecation",
    "quiet_loggers",
]

Inputs = torch.Tensor | tuple[Any, ...]


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
    Used by ``trace_model``, ``script_model``, ``export_program`` and ``export_onnx``;
    not taught in a notebook.
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
def ignore_jit_deprecation() -> Iterator[None]:
    """Hide TorchScript's DeprecationWarning inside the helpers (notebook 6.3.6 shows it once)."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", category=DeprecationWarning, message=r".*torch\.jit\.\w+` is deprecated.*"
        )
        yield
