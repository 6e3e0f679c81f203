"""Full training checkpoints that resume a run exactly (chapter 6.3.3).

A checkpoint is everything the next step of training depends on: the weights, the optimizer's
moments, the scheduler's position, the loss scaler, the epoch and step counters, the best metric
seen so far, and the state of every random number generator (Python, NumPy, torch CPU and each
CUDA device, see ``course_lib.rng``), because the shuffling order and the dropout masks of the
next epoch come from them. Everything is stored as tensors, numbers, strings, lists and dicts,
so that it loads under ``torch.load(weights_only=True)`` and loading a checkpoint never runs code
from the file.

``course_lib.demo_job`` is a small training job built on ``train_with_checkpoint``, to kill and
resume (``python -m course_lib.demo_job --help``).
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from course_lib.errors import CourseError
from course_lib.rng import capture_rng_state, restore_rng_state
from course_lib.safe_io import CheckpointError, ForeignFileError, MapLocation, safe_load, safe_save

__all__ = [
    "BEST_STEM",
    "CheckpointFieldError",
    "CheckpointMismatchError",
    "FORMAT_VERSION",
    "LATEST_NAME",
    "MALFORMED_FIX",
    "PathLike",
    "apply_checkpoint",
    "apply_checkpoint_from",
    "build_checkpoint",
    "check_checkpoint_fields",
    "checkpoint_filename",
    "load_checkpoint",
    "require_training_checkpoint",
    "save_checkpoint",
    "to_plain",
    "train_with_checkpoint",
]

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


MALFORMED_FIX = (
    "the file was edited or written by other code: load an earlier checkpoint, or rebuild it "
    "with build_checkpoint"
)


class CheckpointFieldError(CourseError, ValueError):
    """A checkpoint's field has a type no checkpoint of ours (or the chapter's) has; names it."""

    def __init__(self, problem: str) -> None:
        super().__init__("checkpoint", problem, MALFORMED_FIX)


class CheckpointMismatchError(CourseError, KeyError):
    """A checkpoint does not hold what the call asks it to restore (no model or optimizer state)."""


_STATE_FIELDS = ("optimizer_state_dict", "scheduler_state_dict", "scaler_state_dict", "metrics")


def check_checkpoint_fields(checkpoint: Mapping[str, Any]) -> None:
    """Check the structure of a loaded checkpoint before anything is restored from it.

    A file can be well-formed for ``torch.load`` and still hold ``epoch='abc'`` or a list where a
    state_dict belongs (hand-edited, or written by other code); restoring from it would fail
    half-way with a raw error, or worse, succeed half-way. Raises ``CheckpointFieldError``
    naming the field. Used by ``apply_checkpoint`` before it restores anything; not taught in a
    notebook.
    """
    odd_keys = [k for k in checkpoint if not isinstance(k, str)]
    if odd_keys:
        raise CheckpointFieldError(f"a top-level key is not a string: {odd_keys[0]!r}")
    state = checkpoint.get("model_state_dict")
    if not isinstance(state, Mapping):
        raise CheckpointFieldError(
            f"'model_state_dict' is a {type(state).__name__}, not a dict of tensors"
        )
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointFieldError(
                f"'model_state_dict' holds {key!r}: {type(value).__name__}, not name: tensor"
            )
    epoch = checkpoint.get("epoch")
    if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, int)):
        raise CheckpointFieldError(f"'epoch' is {epoch!r} ({type(epoch).__name__}), not an integer")
    loss = checkpoint.get("loss")
    numeric = isinstance(loss, (int, float)) or (
        isinstance(loss, torch.Tensor) and loss.numel() == 1
    )
    if loss is not None and (isinstance(loss, bool) or not numeric):
        raise CheckpointFieldError(f"'loss' is a {type(loss).__name__}, not a number")
    for field in _STATE_FIELDS:
        value = checkpoint.get(field)
        if value is not None and not isinstance(value, Mapping):
            raise CheckpointFieldError(f"'{field}' is a {type(value).__name__}, not a dict")
    for field in ("rng", "rng_state", "cuda_rng_state"):
        value = checkpoint.get(field)
        expected = Mapping if field == "rng" else torch.Tensor
        if value is not None and not isinstance(value, expected):
            raise CheckpointFieldError(
                f"'{field}' is a {type(value).__name__}, not a "
                + ("dict of RNG states" if field == "rng" else "tensor")
            )


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
    ``optimizer=None`` to load the weights only (for evaluation). An optimizer passed for a
    checkpoint without optimizer state raises ``CheckpointMismatchError`` (a ``KeyError``: resuming
    with fresh moments would
    silently change the run); a missing scheduler or scaler state gives a warning and leaves
    that object as it is, as the chapter's loader did.
    """
    if "model_state_dict" not in checkpoint:
        raise CheckpointMismatchError(
            "checkpoint",
            "is not a training checkpoint: it has no 'model_state_dict' "
            f"(keys: {sorted(checkpoint)[:8]}).",
            "a bare state_dict loads with model.load_state_dict(torch.load(path, weights_only=True)).",
        )
    check_checkpoint_fields(checkpoint)
    model.load_state_dict(checkpoint["model_state_dict"])
    for name, obj, key in (
        ("optimizer", optimizer, "optimizer_state_dict"),
        ("scheduler", scheduler, "scheduler_state_dict"),
        ("scaler", scaler, "scaler_state_dict"),
    ):
        if obj is None:
            continue
        if checkpoint.get(key) is None:
            if name == "optimizer":
                raise CheckpointMismatchError(
                    "checkpoint",
                    f"an optimizer was passed but it holds no {key!r}.",
                    "pass optimizer=None to load the weights only, or start a fresh optimizer on "
                    "purpose.",
                )
            warnings.warn(
                f"the checkpoint holds no {key!r}: the {name} passed in starts fresh "
                "(the chapter's checkpoints saved without a scheduler look like this).",
                stacklevel=2,
            )
            continue
        obj.load_state_dict(checkpoint[key])
    if restore_rng:
        # restore_rng_state accepts states on any device: map_location may have moved them.
        field, states = "rng", checkpoint.get("rng")
        if states is None:  # the chapter's layout: torch CPU and the current CUDA device only
            field, states = "rng_state", {"torch": checkpoint.get("rng_state")}
            if checkpoint.get("cuda_rng_state") is not None:
                states["cuda"] = [checkpoint["cuda_rng_state"]]
        try:
            restore_rng_state(states)
        except Exception as exc:  # noqa: BLE001 - {'torch': 'x'}: AttributeError, and others
            raise CheckpointFieldError(f"'{field}' cannot be restored ({exc})") from None
    return checkpoint


# ----------------------------------------------------------------------------------------------
# The chapter's functions: same names, same positional arguments, same return values
# ----------------------------------------------------------------------------------------------


def save_checkpoint(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any,
    epoch: int,
    loss: float | None,
    path: PathLike,
    *,
    scaler: Any = None,
    step: int | None = None,
    best_metric: float | None = None,
    metrics: Mapping[str, float] | None = None,
    extra: Mapping[str, Any] | None = None,
    verbose: bool = False,
) -> Path:
    """Save the full training state to ``path`` atomically and durably; return the path.

    The chapter's call ``save_checkpoint(model, optimizer, scheduler, epoch, loss, path)`` works
    as written. Differences: the RNG states of Python, NumPy, torch and every CUDA device are
    stored (the chapter kept torch's only), ``loss`` is stored as a Python float (a NumPy float
    would make the file unloadable under ``weights_only=True``), and the write goes through
    ``safe_save``: an interrupted save leaves the previous file intact. The folder is created if
    needed. The dict also has the chapter's ``'loss'`` key, so the chapter's loader reads it.

    Taught in notebooks/03_checkpoints.ipynb (its last steps).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = build_checkpoint(
        model,
        optimizer,
        scheduler,
        epoch=epoch,
        step=step,
        metrics=metrics,
        best_metric=best_metric,
        scaler=scaler,
        extra=extra,
    )
    checkpoint["loss"] = _to_float(loss)
    safe_save(checkpoint, path)
    if verbose:
        print(f"Checkpoint saved: {path}")
    return path


def require_training_checkpoint(checkpoint: object, path: PathLike, fix: str) -> dict[str, Any]:
    """``checkpoint`` (read from ``path``) if it is a training checkpoint, as a dict.

    Anything else (a bare state_dict, a tensor, another program's dict) is a ``ForeignFileError``
    that says what the file holds; ``fix`` says what to do where the caller loads it.
    """
    if isinstance(checkpoint, Mapping) and "model_state_dict" in checkpoint:
        return dict(checkpoint)
    what = (
        f"keys {sorted(map(str, checkpoint))[:6]}"
        if isinstance(checkpoint, Mapping)
        else f"a {type(checkpoint).__name__}"
    )
    raise ForeignFileError(
        path, f"is not a training checkpoint (no 'model_state_dict'; it holds {what}).", fix
    )


def apply_checkpoint_from(
    checkpoint: Mapping[str, Any],
    path: PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any = None,
    *,
    scaler: Any = None,
    restore_rng: bool = True,
) -> None:
    """``apply_checkpoint`` for a checkpoint read from ``path``: every failure names the file.

    A field of the wrong type is "malformed"; a state that does not fit the model, optimizer or
    scheduler passed in (other shapes, other parameter groups) says to build the same ones as
    the run that saved it. The one place where loading a checkpoint file turns errors into
    ``CheckpointError``s: ``load_checkpoint``, ``train_with_checkpoint`` and the manager use it.
    """
    try:
        apply_checkpoint(
            checkpoint, model, optimizer, scheduler, scaler=scaler, restore_rng=restore_rng
        )
    except CheckpointFieldError as exc:
        raise CheckpointError(path, f"is malformed: {exc.problem}.", MALFORMED_FIX) from None
    except CheckpointMismatchError as exc:
        raise CheckpointError(path, exc.problem, exc.fix) from None
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - load_state_dict of a hostile state raises anything
        raise CheckpointError(
            path,
            f"does not fit what was passed in: {type(exc).__name__}: {str(exc)[:300]}",
            "build the same model/optimizer/scheduler as the run that saved it.",
        ) from exc


def load_checkpoint(
    path: PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any = None,
    device: MapLocation = "cpu",
    *,
    scaler: Any = None,
    restore_rng: bool = True,
    verbose: bool = False,
) -> tuple[int, float | None]:
    """Restore a checkpoint written by ``save_checkpoint`` (ours or the chapter's); return
    ``(epoch, loss)``.

    Loads with ``weights_only=True`` (``safe_io.safe_load``): a damaged, empty or foreign file
    raises a ``CheckpointError`` naming the file and the fix. ``device`` is the ``map_location``;
    the model's parameters keep their own device (``load_state_dict`` copies into them). The
    returned epoch is the last *completed* one: resume at ``epoch + 1``.

    Taught in notebooks/03_checkpoints.ipynb (its last steps).
    """
    checkpoint = require_training_checkpoint(
        safe_load(path, map_location=device),
        path,
        "a bare state_dict loads with model.load_state_dict(safe_load(path)).",
    )
    apply_checkpoint_from(
        checkpoint, path, model, optimizer, scheduler, scaler=scaler, restore_rng=restore_rng
    )
    epoch = int(checkpoint.get("epoch", -1))  # -1: nothing completed, resume at epoch 0
    loss = checkpoint.get("loss")
    if loss is None and checkpoint.get("metrics"):
        loss = checkpoint["metrics"].get("loss", checkpoint["metrics"].get("val_loss"))
    loss = _to_float(loss)
    if verbose:
        shown = "n/a" if loss is None else f"{loss:.4f}"
        print(f"Resuming from epoch {epoch}, loss: {shown}")
    return epoch, loss


# ----------------------------------------------------------------------------------------------
# File names: one scheme, for train_with_checkpoint and the CheckpointManager
# ----------------------------------------------------------------------------------------------

LATEST_NAME = "latest.pth"
BEST_STEM = "best_model"  # best_model.pth; with safetensors, best_model.safetensors + sidecar


def checkpoint_filename(epoch: int, step: int | None = None, *, format: str = "torch") -> str:
    """``checkpoint_epoch_0007.pth`` (or ``..._step_00001234.pth``, or ``.safetensors``).

    Zero-padded so that names sort like epochs; the manager orders by the numbers in its
    manifest, never by names or file times. Used by ``CheckpointManager.save`` and
    ``train_with_checkpoint``; not taught in a notebook.
    """
    suffix = ".safetensors" if format == "safetensors" else ".pth"
    name = f"checkpoint_epoch_{int(epoch):04d}"
    if step is not None:
        name += f"_step_{int(step):08d}"
    return name + suffix


# ----------------------------------------------------------------------------------------------
# Training with checkpoints
# ----------------------------------------------------------------------------------------------


def _best_from_existing(checkpoint_dir: Path) -> float | None:
    """The validation loss of an existing ``best_model.pth`` (for checkpoints that lack
    ``'best_metric'``, such as the chapter's)."""
    best_path = checkpoint_dir / f"{BEST_STEM}.pth"
    if not best_path.exists():
        return None
    try:
        best = safe_load(best_path, map_location="cpu")
    except CheckpointError:
        return None
    value = best.get("best_metric", best.get("loss")) if isinstance(best, Mapping) else None
    return _to_float(value)


def _run_epoch(
    model: nn.Module,
    loader: Any,
    criterion: Callable[..., torch.Tensor],
    device: torch.device,
    optimizer: torch.optim.Optimizer | None = None,
    scaler: Any = None,
) -> tuple[float, int]:
    """One pass over ``loader``: train if an optimizer is given, else evaluate. Returns the mean
    batch loss (as the chapter computes it) and the number of optimizer steps taken."""
    training = optimizer is not None
    model.train(training)
    total, steps = 0.0, 0
    with torch.set_grad_enabled(training):
        for inputs, targets in loader:
            inputs, targets = inputs.to(device), targets.to(device)
            amp = scaler is not None and scaler.is_enabled()
            with torch.autocast(device.type) if amp else contextlib.nullcontext():
                loss = criterion(model(inputs), targets)
            if training:
                optimizer.zero_grad()
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    optimizer.step()
                steps += 1
            total += loss.item()
    return total / max(len(loader), 1), steps


def train_with_checkpoint(
    model: nn.Module,
    train_loader: Any,
    val_loader: Any,
    criterion: Callable[..., torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    num_epochs: int,
    checkpoint_dir: PathLike = "checkpoints",
    resume_from: PathLike | None = None,
    *,
    progress: bool = True,
    verbose: bool = True,
    save_every: int = 10,
    scaler: Any = None,
    restore_rng: bool = True,
) -> dict[str, list[Any]]:
    """The chapter's training loop with checkpoints, fixed; returns the history.

    Per epoch: train, validate, step the scheduler (``ReduceLROnPlateau`` gets the validation
    loss), then write ``latest.pth`` (every epoch, to resume from), ``best_model.pth`` when the
    validation loss improved, and ``checkpoint_epoch_{epoch:04d}.pth`` every ``save_every`` epochs.
    All writes are atomic.

    Fixed against the chapter: on resume the best validation loss is restored (the chapter reset
    it to infinity, so the first resumed epoch overwrote a better ``best_model.pth``); the RNGs
    are restored, so a resumed run is the run that would have happened; the history of the
    epochs before the interruption comes back too. ``resume_from`` that does not exist starts a
    fresh run (the chapter's behaviour), so ``resume_from=checkpoint_dir / 'latest.pth'`` works
    for the first and every later launch.

    Returns ``{'epoch': [...], 'train_loss': [...], 'val_loss': [...]}`` for every epoch so far,
    including those before a resume. A DataLoader with its own ``generator`` is not covered by
    the global RNG state: give it none (the global torch RNG is then used) or save its state in
    ``extra`` yourself.

    Taught in notebooks/03b_resume_in_depth.ipynb, step 4.
    """
    checkpoint_dir = Path(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    history: dict[str, list[Any]] = {"epoch": [], "train_loss": [], "val_loss": []}
    start_epoch, step = 0, 0
    best_val_loss = math.inf
    if resume_from is not None and Path(resume_from).exists():
        checkpoint = require_training_checkpoint(
            safe_load(resume_from, map_location=device),
            resume_from,
            "resume_from= names a file written by train_with_checkpoint (e.g. latest.pth).",
        )
        apply_checkpoint_from(
            checkpoint,
            resume_from,
            model,
            optimizer,
            scheduler,
            scaler=scaler,
            restore_rng=restore_rng,
        )
        start_epoch = int(checkpoint["epoch"]) + 1
        step = int(checkpoint.get("step") or 0)
        saved = checkpoint.get("extra", {}).get("history")
        if saved:
            history = {k: [(int if k == "epoch" else float)(v) for v in saved[k]] for k in history}
        best = checkpoint.get("best_metric")
        if best is None:  # the chapter's checkpoint: fall back on the best file on disk
            best = _best_from_existing(checkpoint_dir)
        best_val_loss = math.inf if best is None else float(best)
        if verbose:
            print(
                f"Resumed from {resume_from}: epoch {start_epoch - 1} done, "
                f"best val loss so far {best_val_loss:.4f}"
            )

    epochs: Sequence[int] = range(start_epoch, num_epochs)
    bar = None
    if progress:
        from course_lib.progress import epoch_bar

        bar = epoch_bar(num_epochs, initial=start_epoch)
    for epoch in epochs:
        train_loss, steps = _run_epoch(model, train_loader, criterion, device, optimizer, scaler)
        step += steps
        val_loss, _ = _run_epoch(model, val_loader, criterion, device)
        if scheduler is not None:
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(val_loss)
            else:
                scheduler.step()
        history["epoch"].append(epoch)
        history["train_loss"].append(train_loss)
        history["val_loss"].append(val_loss)
        improved = val_loss < best_val_loss
        if improved:
            best_val_loss = val_loss

        checkpoint = build_checkpoint(
            model,
            optimizer,
            scheduler,
            epoch=epoch,
            step=step,
            metrics={"train_loss": train_loss, "val_loss": val_loss},
            best_metric=best_val_loss,
            scaler=scaler,
            extra={"history": history},
        )
        checkpoint["loss"] = val_loss  # the chapter's key
        names = [f"{BEST_STEM}.pth"] if improved else []
        if (epoch + 1) % save_every == 0:
            names.append(checkpoint_filename(epoch))
        names.append(LATEST_NAME)  # last, so that it is always the newest complete state
        for name in names:
            safe_save(checkpoint, checkpoint_dir / name)
        if verbose:
            line = f"Epoch {epoch}: Train Loss = {train_loss:.4f}, Val Loss = {val_loss:.4f}"
            line += " (best)" if improved else ""
            (bar.write if bar is not None else print)(line)
        if bar is not None:
            bar.set_postfix(train=f"{train_loss:.4f}", val=f"{val_loss:.4f}")
            bar.update(1)
    if bar is not None:
        bar.close()
    return history
