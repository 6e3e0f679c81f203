"""Any nested state of tensors and plain values in one ``.safetensors`` file, without pickle.

``safetensors`` stores a flat ``{name: tensor}`` mapping and string metadata, nothing else: it
cannot hold an optimizer's ``state_dict`` (nested dicts with integer keys, ``param_groups`` of
floats, tuples and lists). Here every tensor goes to the tensor part under a readable dotted
name, and the rest of the structure goes to the metadata as JSON, with the tensors replaced by
their names. Loading parses JSON and maps tensors: no code named in the file can run. A value
that is neither a tensor nor plain data (a class instance, a NumPy scalar) is refused when
saving, with its place in the structure. Taught in ``notebooks/02b_safe_formats.ipynb``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from course_lib.safe_io import CheckpointError, atomic_write, load_safetensors

__all__ = ["MAX_DEPTH", "load_state_safetensors", "save_state_safetensors"]

_METADATA_KEY = "course_lib.structure"
_PLAIN = (str, int, float, bool, type(None))


def _encode(value: Any, where: str, tensors: dict[str, torch.Tensor], seen: dict) -> Any:
    """The JSON form of ``value``; its tensors are added to ``tensors`` under dotted names."""
    if isinstance(value, torch.Tensor):
        name = where or "tensor"
        while name in tensors:  # e.g. {"a.b": t} beside {"a": {"b": t}}
            name += "_"
        tensor = value.detach().to("cpu").contiguous()
        storage = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if tensor.numel() and storage in seen:  # safetensors refuses two names for one memory
            tensor = tensor.clone()
        seen[storage] = name
        tensors[name] = tensor
        return {"__tensor__": name}
    if isinstance(value, Mapping):
        for key in value:
            if type(key) not in _PLAIN:
                raise TypeError(f"{where or 'the state'} has a {type(key).__name__} key {key!r}")
        items = [
            [k, _encode(v, f"{where}.{k}" if where else str(k), tensors, seen)]
            for k, v in value.items()
        ]
        return {"__dict__": items}
    if type(value) is tuple:  # a namedtuple would come back as a plain tuple
        return {
            "__tuple__": [_encode(v, f"{where}.{i}", tensors, seen) for i, v in enumerate(value)]
        }
    if type(value) is list:
        return [_encode(v, f"{where}.{i}", tensors, seen) for i, v in enumerate(value)]
    if type(value) in _PLAIN:  # exactly: a NumPy float64 (a float subclass) would change type
        return value
    raise TypeError(
        f"{where or 'the state'} is a {type(value).__module__}.{type(value).__qualname__}, "
        "which only pickle could store"
    )


#: Deeper than any state a training run saves; a hostile file nests 900 deep for a RecursionError.
MAX_DEPTH = 100
#: What one JSON value (a list, a dict, an item) costs in memory once parsed and decoded (measured:
#: 50 bytes for an int in a list, 66 for an empty list). A structure is refused before parsing
#: when that would exceed twice the file, or 16 MiB for a smaller file (a few hundred thousand
#: values: an optimizer's state, a loss history).
_BYTES_PER_VALUE = 64
_FREE_BYTES = 16 << 20


def _decode(value: Any, tensors: Mapping[str, torch.Tensor], depth: int = 0) -> Any:
    if depth > MAX_DEPTH:
        raise ValueError(f"the structure nests deeper than {MAX_DEPTH} levels")
    if type(value) is list:
        return [_decode(v, tensors, depth + 1) for v in value]
    if isinstance(value, dict):
        if "__tensor__" in value:
            return tensors[value["__tensor__"]]
        if "__tuple__" in value:
            return tuple(_decode(v, tensors, depth + 1) for v in value["__tuple__"])
        return {k: _decode(v, tensors, depth + 1) for k, v in value["__dict__"]}
    return value


def _check_structure_size(path: Path, text: str) -> None:
    """Refuse, before parsing, a structure that would take more than twice the file in memory
    (5 MB of ``[[],[],...]`` parse into 228 MB of lists)."""
    values = text.count("[") + text.count("{") + text.count(",")
    budget = max(2 * path.stat().st_size, _FREE_BYTES)
    if values * _BYTES_PER_VALUE > budget:
        raise CheckpointError(
            path,
            f"its structure metadata lists about {values:,} values, which would take about "
            f"{values * _BYTES_PER_VALUE:,} bytes of memory, more than twice the file's "
            f"{path.stat().st_size:,} bytes (a file crafted to exhaust memory, or not written "
            "by save_state_safetensors).",
            "load its tensors alone with safetensors.torch.load_file(path).",
        )


def save_state_safetensors(state: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Save nested ``state`` (dicts, lists, tuples, tensors, plain values) as one safetensors file.

    Written atomically (``atomic_write``). A value only pickle could store raises a
    ``TypeError`` naming where it is and what to do. Two names for one tensor are stored twice
    (loading does not tie them again). Taught in ``notebooks/02b_safe_formats.ipynb``.
    """
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    try:
        structure = _encode(state, "", tensors, {})
    except TypeError as exc:
        raise TypeError(
            f"{exc}. Store plain data instead (dataclasses.asdict(...), float(x), x.isoformat()), "
            "or keep such values in a torch.save file loaded with weights_only=True."
        ) from None
    metadata = {_METADATA_KEY: json.dumps(structure)}
    return atomic_write(path, lambda temp: save_file(tensors, str(temp), metadata=metadata))


def load_state_safetensors(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> Any:
    """The nested state saved by ``save_state_safetensors``, its tensors on ``map_location``.

    Only JSON is parsed and tensors are mapped: nothing in the file can run code. A plain
    safetensors file (no structure in its metadata) loads as its flat ``{name: tensor}`` dict.
    Taught in ``notebooks/02b_safe_formats.ipynb``.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    fix = "check that the file was written completely (save_state_safetensors writes atomically)."
    tensors = load_safetensors(path, map_location, fix=fix)
    try:
        with safe_open(path, framework="pt") as file:
            metadata = file.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(
            path, f"not a readable safetensors file ({type(exc).__name__}: {exc}).", fix
        ) from None
    if _METADATA_KEY not in metadata:
        return tensors
    text = metadata.pop(_METADATA_KEY)
    del metadata
    _check_structure_size(path, text)
    try:
        return _decode(json.loads(text), tensors)
    except RecursionError:
        raise CheckpointError(
            path,
            f"its structure metadata nests deeper than {MAX_DEPTH} levels.",
            "load its tensors alone with safetensors.torch.load_file(path).",
        ) from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(
            path,
            f"its structure metadata is damaged ({type(exc).__name__}: {exc}).",
            "load its tensors alone with safetensors.torch.load_file(path).",
        ) from None
