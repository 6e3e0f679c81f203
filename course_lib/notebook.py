"""What every chapter notebook does first: pick the device, seed the RNGs, make a clean work folder."""

from __future__ import annotations

import logging
import random
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

from course_lib.device import describe_device, try_device

__all__ = [
    "SCRATCH_ROOT",
    "seed_everything",
    "start",
]

SCRATCH_ROOT = Path("scratch")


def seed_everything(seed: int = 0) -> None:
    """Seed Python's ``random``, NumPy's global RNG and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _fresh_workdir(name: str) -> Path:
    """An empty folder ``scratch/<name>`` (relative, so printed paths are the same on every machine)."""
    path = SCRATCH_ROOT / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def start(section: str, *, seed: int = 0) -> tuple[torch.device, Path]:
    """Set up a chapter notebook: print the device line, seed, and return ``(device, workdir)``.

    Files the chapter writes go to ``scratch/<section>/`` beside the notebook, where the learner
    can see them in JupyterLab's file browser. The exporter's and TorchScript's log noise is quieted.

    Taught in notebooks/00_introduction.ipynb.
    """
    device = try_device()
    print(describe_device(device))
    seed_everything(seed)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    logging.getLogger("torch.export").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")
    _short_tracebacks()
    return device, _fresh_workdir(section)


def _short_tracebacks() -> None:
    """In a notebook, show an error as its last line: the exception and its message.

    The cells that fail on purpose teach the message; the frames above it run through torch's
    and this machine's files, whose absolute paths mean nothing on the learner's machine.
    ``%xmode Context`` brings the full traceback back. (The magic itself would print a line.)
    """
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None:
        shell.InteractiveTB.set_mode(mode="Minimal")
