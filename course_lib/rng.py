"""Capturing and restoring every random number generator (chapter 6.3.3).

The shuffling order and the dropout masks of the next epoch come from the RNGs of Python, NumPy,
torch CPU and each CUDA device, so a run resumes exactly only if all of them are put back.
``capture_rng_state`` returns their states as tensors, numbers and strings, so that a checkpoint
holding them loads under ``torch.load(weights_only=True)``; ``restore_rng_state`` puts them back
(CUDA states for devices that are missing give a warning, not an error).
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = [
    "capture_rng_state",
    "restore_rng_state",
]


def capture_rng_state() -> dict[str, Any]:
    """The state of every global RNG, as tensors and numbers (loadable with ``weights_only=True``).

    Keys: ``'python'`` (``random``), ``'numpy'`` (``np.random``'s global generator), ``'torch'``
    (the CPU generator: a uint8 tensor) and ``'cuda'`` (a list with one state per CUDA device;
    empty without CUDA or when this process never used it). ``np.random.get_state()`` itself
    returns a tuple holding a NumPy array, which ``weights_only=True`` refuses: hence the
    conversion.

    Taught in notebooks/10b_physicists_view.ipynb.
    """
    version, internal, gauss_next = random.getstate()
    np_state = np.random.get_state(legacy=False)
    cuda_states: list[torch.Tensor] = []
    # Only a process that has used CUDA has CUDA RNG state worth keeping; asking an unused CUDA
    # for it would create a context on every GPU.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
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


def _cpu_byte_tensor(state: Any, name: str = "torch") -> torch.Tensor:
    """The CPU uint8 tensor that ``torch.set_rng_state`` requires, from any device and dtype.

    ``torch.load(map_location=device)`` moves a saved RNG state to the GPU, and both
    ``torch.set_rng_state`` and ``torch.cuda.set_rng_state`` then refuse it ("RNG state must be a
    torch.ByteTensor"). A state that went through a list, NumPy or another dtype comes back too,
    byte for byte; values outside 0..255 are refused rather than wrapped.
    """
    if torch.is_tensor(state):
        if state.device.type == "meta":
            raise ValueError(
                f"RNG state {name!r} is on the meta device, which holds no values: load the "
                "checkpoint with map_location='cpu' (or onto a real device) to restore it."
            )
        tensor = state.detach().to("cpu")
    else:
        tensor = torch.as_tensor(np.asarray(state))
    if tensor.dtype == torch.uint8:
        return tensor.contiguous()
    if tensor.dtype == torch.int8:  # the same bytes, read as signed
        return tensor.contiguous().view(torch.uint8)
    if tensor.dtype == torch.bool or tensor.is_complex():
        raise ValueError(f"RNG state {name!r} is a {tensor.dtype} tensor, not bytes (uint8).")
    if tensor.numel() and (
        bool((tensor < 0).any())
        or bool((tensor > 255).any())
        or (tensor.is_floating_point() and not bool((tensor == tensor.round()).all()))
    ):
        raise ValueError(
            f"RNG state {name!r} ({tensor.dtype}) holds values outside the bytes 0..255: it is "
            "not an RNG state; save torch.get_rng_state() itself."
        )
    return tensor.to(torch.uint8)


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
        torch.cuda.set_rng_state(_cpu_byte_tensor(state, f"cuda[{index}]"), device=index)


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Put back what ``capture_rng_state`` captured (missing keys are left alone).

    CUDA states for devices this machine does not have give a warning, not an error, so a GPU
    checkpoint can be resumed or inspected on a laptop. States on any device and of any integer
    dtype are accepted (``map_location='cuda'`` moves them to the GPU); one on the ``meta``
    device, which has no values, raises a ``ValueError`` that says how to load it instead.

    Taught in notebooks/10b_physicists_view.ipynb.
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
