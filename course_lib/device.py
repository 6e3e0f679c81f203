"""Choosing the device a notebook runs on: CUDA, else MPS, else CPU, overridable by COURSE_DEVICE."""

from __future__ import annotations

import os

import torch

__all__ = [
    "DEVICE_ENV_VAR",
    "describe_device",
    "save_as_if_on_gpu",
    "try_device",
]

DEVICE_ENV_VAR = "COURSE_DEVICE"


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def try_device(prefer: str | None = None) -> torch.device:
    """Return the device to run on.

    Order: ``prefer`` if given, else the ``COURSE_DEVICE`` environment variable, else CUDA when
    available, else Apple's MPS, else CPU. An explicit choice that this machine cannot honour raises
    a ``RuntimeError`` that says what is available, rather than failing later inside a kernel.
    """
    choice = prefer if prefer is not None else os.environ.get(DEVICE_ENV_VAR, "").strip()
    if choice:
        device = torch.device(choice)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(
                f"{DEVICE_ENV_VAR}={choice!r} asks for CUDA, but this PyTorch sees no CUDA device "
                f"(torch {torch.__version__}, cuda build: {torch.version.cuda}). "
                f"Unset {DEVICE_ENV_VAR} or set it to 'cpu'."
            )
        if device.type == "cuda" and device.index is not None:
            if device.index >= torch.cuda.device_count():
                raise RuntimeError(
                    f"{DEVICE_ENV_VAR}={choice!r}: there are only "
                    f"{torch.cuda.device_count()} CUDA device(s) (cuda:0 .. "
                    f"cuda:{torch.cuda.device_count() - 1})."
                )
        if device.type == "mps" and not _mps_available():
            raise RuntimeError(f"{DEVICE_ENV_VAR}={choice!r} asks for MPS, which is not available.")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def describe_device(device: torch.device | None = None) -> str:
    """One line for the top of a notebook: which device, and why it was chosen."""
    device = try_device() if device is None else device
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        what = f"{torch.cuda.get_device_name(index)} (CUDA {torch.version.cuda})"
    elif device.type == "mps":
        what = "Apple GPU (MPS)"
    else:
        what = f"CPU, {torch.get_num_threads()} threads"
    source = f"set by {DEVICE_ENV_VAR}" if os.environ.get(DEVICE_ENV_VAR) else "auto-chosen"
    return f"Running on device: {device} [{what}; {source}; torch {torch.__version__}]"


def save_as_if_on_gpu(obj: object, path: str | os.PathLike[str], device: str = "cuda:0") -> None:
    """Write ``obj`` exactly as ``torch.save`` on a GPU machine would: every tensor tagged ``device``.

    A file's tensors remember the device they were saved from; ``torch.load`` puts them back there
    unless ``map_location`` says otherwise. This lets a learner on a CPU-only machine meet a
    "GPU-saved" file. It uses ``torch.serialization``'s location taggers, a private registry.

    Taught in notebooks/01_state_dict.ipynb.
    """
    from torch import serialization

    def tag_as_gpu(storage: object) -> str:
        return device

    def never_used(storage: object, location: str) -> None:
        return None

    entry = (-1, tag_as_gpu, never_used)
    serialization._package_registry.insert(0, entry)
    try:
        torch.save(obj, path)
    finally:
        serialization._package_registry.remove(entry)
