"""A look inside a checkpoint file without building its model (chapters 6.3.4, 6.3.5, 6.3.9).

``inspect_checkpoint`` reads a file (``weights_only``, memory-mapped) or a
``torch.distributed.checkpoint`` folder and lists each entry with its shape, dtype and size,
and the wrapper prefix each ``state_dict`` in it carries. A hostile file may describe billions of
entries or nest without end: the walk is bounded in rows and depth.
"""

from __future__ import annotations

import os
import re
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from course_lib.display import format_table
from course_lib.prefixes import WRAPPER_NAMES, detect_wrapper_prefix
from course_lib.safe_io import ZIP_MAGIC, check_checkpoint_file, safe_load
from course_lib.state_dict import format_shape

__all__ = ["CheckpointInfo", "inspect_checkpoint"]


@dataclass
class CheckpointInfo:
    """What ``inspect_checkpoint`` found: one row per entry, and the wrapper prefix per state_dict."""

    path: Path
    file_bytes: int
    rows: list[dict[str, Any]]
    #: For each dict of tensors (``''`` for the top level, else its key, e.g. ``'model_state_dict'``):
    #: the wrapper prefix all its keys carry (``''`` when none).
    prefixes: dict[str, str]
    kind: str = "torch.save file"

    @property
    def num_tensors(self) -> int:
        return sum(1 for r in self.rows if r["dtype"] != "")

    @property
    def num_elements(self) -> int:
        return sum(r["numel"] for r in self.rows if r["dtype"] != "")

    @property
    def tensor_bytes(self) -> int:
        return sum(r["bytes"] for r in self.rows if r["dtype"] != "")

    def table(self) -> str:
        """The rows as a plain-text table."""
        columns = ["key", "shape", "dtype", "numel", "bytes"]
        return format_table(
            self.rows, columns + (["value"] if any("value" in r for r in self.rows) else [])
        )

    def summary(self) -> str:
        """A few readable lines: what the file is, how big, and which wrapper prefixes it carries."""
        lines = [
            f"{self.path} ({self.kind}, {_human_bytes(self.file_bytes)}): {self.num_tensors} "
            f"tensors, {self.num_elements:,} elements, {_human_bytes(self.tensor_bytes)} of tensor data"
        ]
        wrapped = {where: prefix for where, prefix in self.prefixes.items() if prefix}
        for where, prefix in wrapped.items():
            name = f"'{where}'" if where else "the state_dict"
            wrappers = " inside ".join(
                WRAPPER_NAMES[p] for p in re.findall(r"module\.|_orig_mod\.", prefix)
            )
            lines.append(
                f"{name}: every key starts with {prefix!r}: saved from a {wrappers} wrapper; "
                "remove_module_prefix (or load_state_dict_any_prefix) loads it into a plain model"
            )
        if not wrapped:
            lines.append(
                "no wrapper prefix ('module.', '_orig_mod.'): keys as a plain model has them"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary() + "\n" + self.table()


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


_MAX_ROWS = 10_000  # a table a reader can use; a hostile file may describe billions of entries
_MAX_DEPTH = 64
_SHORT = reprlib.Repr()
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxlevel = 40, 40, 4, 4, 2


def _note(path: str, text: str) -> dict[str, Any]:
    return {"key": path, "shape": "", "dtype": "", "numel": "", "bytes": "", "value": text}


def _walk(obj: Any, path: str, rows: list[dict[str, Any]], prefixes: dict[str, str]) -> None:
    """Rows for ``obj``, depth first, bounded in depth, rows and text, each container once.

    A checkpoint's pickle can make a tiny file describe a cycle, a tree with 2**80 paths through
    shared references, or one long string referenced thousands of times: each container is
    walked once (later references point to the first), and values are shown by a short repr.
    """
    seen: dict[int, str] = {}
    stack: list[tuple[Any, str, int]] = [(obj, path, 0)]
    while stack:
        if len(rows) >= _MAX_ROWS:
            rows.append(_note("...", f"more entries not shown (the table stops at {_MAX_ROWS})"))
            return
        item, where, depth = stack.pop()
        container = isinstance(item, (Mapping, list, tuple))
        if container and id(item) in seen:
            rows.append(_note(where, f"the same object as {seen[id(item)] or 'the top level'}"))
            continue
        if container and depth >= _MAX_DEPTH:
            rows.append(_note(where, f"nested deeper than {_MAX_DEPTH} levels (not shown)"))
            continue
        if isinstance(item, torch.Tensor):
            rows.append(
                {
                    "key": where,
                    "shape": format_shape(tuple(item.shape)),
                    "dtype": _dtype_name(item.dtype),
                    "numel": item.numel(),
                    "bytes": item.numel() * item.element_size(),
                }
            )
        elif isinstance(item, Mapping):
            seen[id(item)] = where
            keys = [str(k) for k in item]
            if any("." in k for k in keys) and all(
                isinstance(v, torch.Tensor) for v in item.values()
            ):
                prefixes[where] = detect_wrapper_prefix(keys)
            children = [(v, f"{where}/{k}" if where else str(k)) for k, v in item.items()]
            stack.extend((v, p, depth + 1) for v, p in reversed(children))
        elif isinstance(item, (list, tuple)) and any(
            isinstance(v, (torch.Tensor, Mapping, list, tuple)) for v in item
        ):
            seen[id(item)] = where
            children = [(v, f"{where}/{i}" if where else str(i)) for i, v in enumerate(item)]
            stack.extend((v, p, depth + 1) for v, p in reversed(children))
        else:
            rows.append(_note(where, f"{type(item).__name__} {_SHORT.repr(item)}"))


def _inspect_dcp_directory(path: Path) -> CheckpointInfo:
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    from course_lib.distributed.safe_dcp import read_dcp_metadata

    metadata = read_dcp_metadata(path)  # a pickle: read without running code, then checked
    rows = []
    for key, meta in sorted(metadata.state_dict_metadata.items()):
        if isinstance(meta, TensorStorageMetadata):
            numel = 1
            for n in meta.size:
                numel *= n
            itemsize = meta.properties.dtype.itemsize
            rows.append(
                {
                    "key": key,
                    "shape": format_shape(tuple(meta.size)),
                    "dtype": _dtype_name(meta.properties.dtype),
                    "numel": numel,
                    "bytes": numel * itemsize,
                    "chunks": len(meta.chunks),
                }
            )
        else:
            rows.append(
                {
                    "key": key,
                    "shape": "",
                    "dtype": "",
                    "numel": "",
                    "bytes": "",
                    "value": "(pickled)",
                }
            )
    top = {r["key"].split(".", 1)[0] for r in rows if r["dtype"]}
    prefixes = {
        name: detect_wrapper_prefix(
            r["key"][len(name) + 1 :] for r in rows if r["key"].startswith(name + ".")
        )
        for name in sorted(top)
    }
    size = sum(f.lstat().st_size for f in path.iterdir() if f.is_file() and not f.is_symlink())
    return CheckpointInfo(path, size, rows, prefixes, kind="torch.distributed.checkpoint directory")


def inspect_checkpoint(path: str | os.PathLike[str]) -> CheckpointInfo:
    """Keys, shapes, dtypes and sizes in a checkpoint, and which wrapper prefix it carries.

    Needs no model: the file is read with ``weights_only=True`` on the CPU, memory-mapped when the
    format allows, so even a large file is inspected without reading its tensor data. Works on
    plain state_dicts, on nested training checkpoints (``model_state_dict/fc.weight`` ...) and on
    ``torch.distributed.checkpoint`` directories (from their metadata alone).

    Taught in notebooks/04b_partial_loading_in_depth.ipynb.
    """
    path = Path(path)
    metadata = path / ".metadata"
    if path.is_dir() and (metadata.is_symlink() or metadata.exists()):
        return _inspect_dcp_directory(path)
    check_checkpoint_file(path)
    with path.open("rb") as f:
        zipped = f.read(4) == ZIP_MAGIC
    obj = safe_load(path, map_location="cpu", mmap=zipped)
    rows: list[dict[str, Any]] = []
    prefixes: dict[str, str] = {}
    _walk(obj, "", rows, prefixes)
    return CheckpointInfo(path, path.stat().st_size, rows, prefixes)
