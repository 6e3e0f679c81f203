"""Loading a model without holding its weights twice: build on ``meta``, load lazily, ``assign``.

The usual load builds the model (one copy of the weights, randomly initialised), reads the file
(a second copy), then copies the second into the first: the peak is about twice the checkpoint.
Here the model is built on the ``meta`` device (shapes only, no memory), the file is opened lazily
(``torch.load(mmap=True)`` or safetensors, both memory-mapped), and
``load_state_dict(assign=True)`` makes the loaded tensors the model's parameters instead of
copying them. Taught in ``notebooks/01b_big_models.ipynb``, "Loading a model bigger than you
would like to copy twice".
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from course_lib.safe_io import CheckpointError, MapLocation, load_safetensors, safe_load

__all__ = ["build_on_meta", "load_big_model", "tensors_left_on_meta", "wide_mlp"]


def wide_mlp(width: int = 2048, depth: int = 12) -> nn.Sequential:
    """A stack of ``depth`` square ``Linear(width, width)`` layers: about ``16 * width**2 * depth`` bytes.

    Big enough to see memory with a few lines of code (the defaults make a 201 MB float32
    checkpoint). Taught in ``notebooks/01b_big_models.ipynb``.
    """
    return nn.Sequential(*[nn.Linear(width, width) for _ in range(depth)])


def build_on_meta(factory: Callable[[], nn.Module]) -> nn.Module:
    """``factory()`` built under ``torch.device("meta")``: every tensor has a shape and no data.

    No memory is allocated and no initialiser runs, so building costs nothing whatever the size.
    Used by ``load_big_model`` and ``load_memory``'s ``meta + assign`` loads; not taught in a
    notebook.
    """
    with torch.device("meta"):
        return factory()


def _open_weights(
    path: str | os.PathLike[str], map_location: MapLocation = "cpu", *, verify_crc: bool = True
) -> dict:
    """A file's tensors, memory-mapped rather than read: ``.safetensors`` or a ``torch.save`` file.

    A ``torch.save`` file goes through ``safe_load(..., mmap=True)`` (``weights_only=True``, clear
    errors); a ``.safetensors`` file through ``safetensors.torch.load_file``, which cannot run code
    at all. On the CPU the tensors are views of the mapped file: pages are read when first used.
    ``verify_crc`` (``torch.save`` files) checks the archive's CRC-32s first: one read of the
    whole file through the page cache: no extra resident memory, but the time of reading it all,
    which a lazy load otherwise avoids (compare the two ``meta + assign`` rows of
    ``benchmarks/bench_memory.py``); safetensors files have no checksum.
    Taught in ``notebooks/01_state_dict.ipynb``.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        return safe_load(path, map_location=map_location, mmap=True, verify_crc=verify_crc)
    return load_safetensors(
        path,
        map_location,
        fix="check that the file was written completely by safetensors.torch.save_file.",
    )


def tensors_left_on_meta(model: nn.Module) -> list[str]:
    """Names of the parameters and buffers of ``model`` that still have no data (``meta``)."""
    named = [*model.named_parameters(), *model.named_buffers()]
    return [name for name, tensor in named if tensor.is_meta]


def load_big_model(
    factory: Callable[[], nn.Module],
    path: str | os.PathLike[str],
    map_location: MapLocation = "cpu",
    *,
    verify_crc: bool = True,
) -> nn.Module:
    """Build ``factory()`` on ``meta`` and give it the file's tensors with ``assign=True``.

    The peak memory is one copy of the weights (memory-mapped on the CPU) instead of two. The
    load is strict: a missing or unexpected key raises as ``load_state_dict`` does. A tensor the
    file cannot provide (a buffer registered with ``persistent=False``) would stay on ``meta`` and
    fail at the first forward pass; this raises a ``CheckpointError`` naming it instead. Returns
    the model in ``eval()`` mode; ``verify_crc`` as in ``_open_weights``. Taught in
    ``notebooks/01b_big_models.ipynb``.
    """
    model = build_on_meta(factory)
    model.load_state_dict(_open_weights(path, map_location, verify_crc=verify_crc), assign=True)
    left = tensors_left_on_meta(model)
    if left:
        raise CheckpointError(
            path,
            f"{len(left)} tensor(s) of the model are not in the file and have no data: "
            f"{', '.join(left[:5])}{' ...' if len(left) > 5 else ''} (buffers registered with "
            "persistent=False are never saved).",
            "build the model normally and load with model.load_state_dict(...) (it keeps "
            "the buffers the constructor computed), or recompute those buffers after loading.",
        )
    return model.eval()
