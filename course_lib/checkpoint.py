"""Full training checkpoints that resume a run exactly (chapter 6.3.3).

A checkpoint is everything the next step of training depends on: the weights, the optimizer's
moments, the scheduler's position, the loss scaler, the epoch and step counters, the best metric
seen so far, and the state of every random number generator (Python, NumPy, torch CPU and each
CUDA device), because the shuffling order and the dropout masks of the next epoch come from them.
Everything is stored as tensors, numbers, strings, lists and dicts, so that it loads under
``torch.load(weights_only=True)`` and loading a checkpoint never runs code from the file.

Run ``python -m course_lib.checkpoint --help`` for the small training job the notebook kills and
resumes.
"""

from __future__ import annotations

import os
import random
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

FORMAT_VERSION = 1
"""Bumped when the layout of the checkpoint dict changes; ``apply_checkpoint`` reads older ones."""

PathLike = str | os.PathLike[str]


# ----------------------------------------------------------------------------------------------
# Plain values: what weights_only=True accepts
# ----------------------------------------------------------------------------------------------


def _to_float(value: Any) -> float | None:
    """A Python float from a float, int, NumPy scalar or one-element tensor (None stays None).

    ``np.float32`` is the classic trap: it pickles as a NumPy object that ``weights_only=True``
    refuses, so the chapter's checkpoint with ``loss=np.float32(...)`` cannot be loaded.
    """
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return float(value.detach().cpu().item())
    return float(value)


def to_plain(value: Any) -> Any:
    """Convert NumPy scalars and arrays (recursively, inside dicts, lists and tuples) to Python
    numbers and tensors, so that the result loads under ``weights_only=True``."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value)).clone()
    if isinstance(value, Mapping):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(to_plain(v) for v in value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


# ----------------------------------------------------------------------------------------------
# Random number generators
# ----------------------------------------------------------------------------------------------


def capture_rng_state() -> dict[str, Any]:
    """The state of every global RNG, as tensors and numbers (loadable with ``weights_only=True``).

    Keys: ``'python'`` (``random``), ``'numpy'`` (``np.random``'s global generator), ``'torch'``
    (the CPU generator: a uint8 tensor) and ``'cuda'`` (a list with one state per CUDA device;
    empty without CUDA). ``np.random.get_state()`` itself returns a tuple holding a NumPy array,
    which ``weights_only=True`` refuses: hence the conversion.
    """
    version, internal, gauss_next = random.getstate()
    np_state = np.random.get_state(legacy=False)
    cuda_states: list[torch.Tensor] = []
    if torch.cuda.is_available():
        cuda_states = [state.cpu() for state in torch.cuda.get_rng_state_all()]
    return {
        "python": {
            "version": int(version),
            "state": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
        "numpy": {
            "bit_generator": str(np_state["bit_generator"]),
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": cuda_states,
    }


def _cpu_byte_tensor(state: torch.Tensor) -> torch.Tensor:
    """RNG states must be CPU uint8 tensors, whatever ``map_location`` moved them to."""
    return state.detach().to(device="cpu", dtype=torch.uint8)


def _restore_cuda_rng(states: list[torch.Tensor]) -> None:
    if not states:
        return
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if available == 0:
        warnings.warn(
            f"the checkpoint holds the RNG state of {len(states)} CUDA device(s), but this machine "
            "has no CUDA: it was not restored. CPU training resumes exactly; to reproduce a GPU "
            "run bit for bit, resume it on a GPU.",
            stacklevel=3,
        )
        return
    if available < len(states):
        warnings.warn(
            f"the checkpoint holds the RNG state of {len(states)} CUDA devices, this machine has "
            f"{available}: only cuda:0..cuda:{available - 1} were restored.",
            stacklevel=3,
        )
    for index, state in enumerate(states[:available]):
        torch.cuda.set_rng_state(_cpu_byte_tensor(state), device=index)


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Put back what ``capture_rng_state`` captured (missing keys are left alone).

    CUDA states for devices this machine does not have give a warning, not an error, so a GPU
    checkpoint can be resumed or inspected on a laptop.
    """
    if state.get("python") is not None:
        py = state["python"]
        internal = py["state"]
        internal = tuple(
            int(v) for v in (internal.tolist() if torch.is_tensor(internal) else internal)
        )
        random.setstate((int(py["version"]), internal, py["gauss_next"]))
    if state.get("numpy") is not None:
        npy = state["numpy"]
        key = npy["key"]
        key = key.cpu().numpy() if torch.is_tensor(key) else np.asarray(key)
        np.random.set_state(
            {
                "bit_generator": npy["bit_generator"],
                "state": {"key": key.astype(np.uint32), "pos": int(npy["pos"])},
                "has_gauss": int(npy["has_gauss"]),
                "gauss": float(npy["gauss"]),
            }
        )
    if state.get("torch") is not None:
        torch.set_rng_state(_cpu_byte_tensor(state["torch"]))
    if state.get("cuda"):
        _restore_cuda_rng(list(state["cuda"]))


# ----------------------------------------------------------------------------------------------
# Building and applying a checkpoint dict
# ----------------------------------------------------------------------------------------------


def build_checkpoint(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    *,
    epoch: int,
    step: int | None = None,
    metrics: Mapping[str, float] | None = None,
    best_metric: float | None = None,
    scaler: Any = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The full training state as a dict that loads with ``torch.load(weights_only=True)``.

    Keys: ``'format_version'``, ``'epoch'``, ``'step'``, ``'model_state_dict'``,
    ``'optimizer_state_dict'``, ``'scheduler_state_dict'``, ``'scaler_state_dict'``,
    ``'metrics'`` (names to Python floats), ``'best_metric'``, ``'rng'`` (see
    ``capture_rng_state``), ``'torch_version'``, ``'extra'`` (your own plain values: lists,
    numbers, strings, tensors; NumPy values are converted). Absent parts are ``None``.

    The tensors are the live ones (no copy), as with ``model.state_dict()``: save the dict before
    the next optimizer step, or copy it.
    """
    return {
        "format_version": FORMAT_VERSION,
        "epoch": int(epoch),
        "step": None if step is None else int(step),
        "model_state_dict": model.state_dict(),
        "optimizer_state_dict": optimizer.state_dict() if optimizer is not None else None,
        "scheduler_state_dict": to_plain(scheduler.state_dict()) if scheduler is not None else None,
        "scaler_state_dict": scaler.state_dict() if scaler is not None else None,
        "metrics": {str(k): _to_float(v) for k, v in (metrics or {}).items()},
        "best_metric": _to_float(best_metric),
        "rng": capture_rng_state(),
        "torch_version": str(torch.__version__),
        "extra": to_plain(dict(extra)) if extra else {},
    }


def apply_checkpoint(
    checkpoint: Mapping[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    *,
    scaler: Any = None,
    restore_rng: bool = True,
) -> Mapping[str, Any]:
    """Restore model, optimizer, scheduler, scaler and RNGs from ``checkpoint``; return it.

    Reads our checkpoints and the chapter's (``'rng_state'``/``'cuda_rng_state'`` keys). Pass
    ``optimizer=None`` to load the weights only (for evaluation). Asking for a part the
    checkpoint does not hold raises a ``KeyError`` that says so, rather than silently resuming
    with a fresh optimizer, which would change the run.
    """
    if "model_state_dict" not in checkpoint:
        raise KeyError(
            "this is not a training checkpoint: it has no 'model_state_dict' "
            f"(keys: {sorted(checkpoint)[:8]}). A bare state_dict loads with "
            "model.load_state_dict(torch.load(path, weights_only=True))."
        )
    model.load_state_dict(checkpoint["model_state_dict"])
    for name, obj, key in (
        ("optimizer", optimizer, "optimizer_state_dict"),
        ("scheduler", scheduler, "scheduler_state_dict"),
        ("scaler", scaler, "scaler_state_dict"),
    ):
        if obj is None:
            continue
        if checkpoint.get(key) is None:
            raise KeyError(
                f"a {name} was passed but the checkpoint holds no {key!r}: pass {name}=None to "
                f"start it fresh on purpose."
            )
        obj.load_state_dict(checkpoint[key])
    if restore_rng:
        if checkpoint.get("rng") is not None:
            restore_rng_state(checkpoint["rng"])
        else:  # the chapter's layout: torch CPU and the current CUDA device only
            legacy: dict[str, Any] = {"torch": checkpoint.get("rng_state")}
            if checkpoint.get("cuda_rng_state") is not None:
                legacy["cuda"] = [checkpoint["cuda_rng_state"]]
            restore_rng_state(legacy)
    return checkpoint
