"""Adapting a ``state_dict`` to a model that does not match it exactly (chapters 6.3.4 and 6.3.5).

Partial loading with a report instead of prints, renaming keys (exact, prefix and regex rules)
without dropping ``_metadata``, the ``module.`` / ``_orig_mod.`` prefixes that ``DataParallel``,
``DistributedDataParallel`` and ``torch.compile`` add, and a look inside a checkpoint file
without building its model.
"""

from __future__ import annotations

import logging
import os
import re
import reprlib
import sys
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from course_lib.display import format_table
from course_lib.safe_io import ZIP_MAGIC, check_checkpoint_file, safe_load

logger = logging.getLogger(__name__)

#: The prefixes a wrapper puts in front of every key: ``DataParallel`` and
#: ``DistributedDataParallel`` store the model as ``.module``; ``torch.compile`` as ``._orig_mod``.
WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.")

_WRAPPER_NAMES = {"module.": "DataParallel/DistributedDataParallel", "_orig_mod.": "torch.compile"}


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _shape(value: Any) -> tuple[int, ...] | None:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def _fmt_shape(shape: tuple[int, ...] | None) -> str:
    return "-" if shape is None else "[" + ", ".join(map(str, shape)) + "]"


def _with_metadata(
    new: OrderedDict[str, Any], metadata: Mapping[str, Any] | None
) -> OrderedDict[str, Any]:
    if metadata is not None:
        new._metadata = OrderedDict(metadata)  # type: ignore[attr-defined]
    return new


# --------------------------------------------------------------------------------------------
# Partial loading
# --------------------------------------------------------------------------------------------


@dataclass
class LoadReport:
    """What ``load_partial_state_dict`` did, key by key.

    ``loaded``: copied into the model. ``missing``: in the model, absent from the checkpoint (the
    model keeps its own values). ``unexpected``: in the checkpoint, absent from the model (ignored).
    ``shape_mismatched``: in both with different shapes, as ``(key, checkpoint_shape, model_shape)``
    (the model keeps its own values). ``applied`` is False when nothing was loaded (``strict=True``
    with a mismatch).
    """

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatched: list[tuple[str, tuple[int, ...] | None, tuple[int, ...] | None]] = field(
        default_factory=list
    )
    applied: bool = True
    #: The wrapper prefix removed from the checkpoint's keys first (``load_state_dict_any_prefix``).
    stripped_prefix: str = ""

    @property
    def ok(self) -> bool:
        """True when checkpoint and model matched exactly (a strict load would have succeeded)."""
        return not (self.missing or self.unexpected or self.shape_mismatched)

    @property
    def skipped(self) -> list[str]:
        """Checkpoint keys that were not loaded (unexpected or of the wrong shape)."""
        return self.unexpected + [k for k, _, _ in self.shape_mismatched]

    def rows(self, *, include_loaded: bool = True) -> list[dict[str, str]]:
        """One row per key (``key``, ``status``, ``checkpoint``, ``model`` shapes), for a table."""
        rows = []
        mismatched = {k: (a, b) for k, a, b in self.shape_mismatched}
        for key in self.loaded if include_loaded else []:
            rows.append({"key": key, "status": "loaded", "checkpoint": "", "model": ""})
        for key, (ckpt, model) in mismatched.items():
            rows.append(
                {
                    "key": key,
                    "status": "shape mismatch",
                    "checkpoint": _fmt_shape(ckpt),
                    "model": _fmt_shape(model),
                }
            )
        for key in self.missing:
            rows.append({"key": key, "status": "missing", "checkpoint": "-", "model": ""})
        for key in self.unexpected:
            rows.append({"key": key, "status": "unexpected", "checkpoint": "", "model": "-"})
        return rows

    def table(self, *, include_loaded: bool = True) -> str:
        """``rows()`` as a plain-text table."""
        return format_table(self.rows(include_loaded=include_loaded))

    def summary(self) -> str:
        """One readable line: how many keys were loaded, and what was skipped and why."""
        total = len(self.loaded) + len(self.unexpected) + len(self.shape_mismatched)
        verb = "loaded" if self.applied else "would load (nothing was loaded)"
        parts = [f"{verb} {len(self.loaded)}/{total} checkpoint tensors"]
        if self.stripped_prefix:
            parts[0] += f" (after stripping the checkpoint's {self.stripped_prefix!r} prefix)"
        if self.shape_mismatched:
            parts.append(
                f"{len(self.shape_mismatched)} shape-mismatched: "
                + ", ".join(
                    f"{k} {_fmt_shape(a)} vs model {_fmt_shape(b)}"
                    for k, a, b in self.shape_mismatched
                )
            )
        if self.missing:
            parts.append(
                f"{len(self.missing)} missing (model keeps its values): " + ", ".join(self.missing)
            )
        if self.unexpected:
            parts.append(
                f"{len(self.unexpected)} unexpected (ignored): " + ", ".join(self.unexpected)
            )
        return "; ".join(parts)

    def __str__(self) -> str:
        return self.summary()

    def __repr__(self) -> str:
        return f"LoadReport({self.summary()})"


class StateDictMismatchError(RuntimeError):
    """A strict load found missing, unexpected or shape-mismatched keys; ``.report`` says which.

    Nothing was loaded: the model is exactly as it was before the call.
    """

    def __init__(self, report: LoadReport, what: str = "model") -> None:
        self.report = report
        super().__init__(
            f"state_dict does not match the {what}: {report.summary()}\n"
            "  How to fix: pass strict=False to load the matching keys (and read the report), "
            "or rename_state_dict_keys / remove_module_prefix first."
        )


def _compare(model_state: Mapping[str, Any], state_dict: Mapping[str, Any]) -> LoadReport:
    report = LoadReport()
    for key, value in state_dict.items():
        if key not in model_state:
            report.unexpected.append(key)
            continue
        target = model_state[key]
        if isinstance(target, torch.Tensor):
            if not isinstance(value, torch.Tensor):
                raise TypeError(
                    f"state_dict[{key!r}] is a {type(value).__name__}, not a tensor: is this a "
                    "whole checkpoint rather than its model state_dict? Pass "
                    "checkpoint['model_state_dict'] (or whichever entry holds the weights)."
                )
            if value.shape != target.shape:
                report.shape_mismatched.append((key, tuple(value.shape), tuple(target.shape)))
                continue
        report.loaded.append(key)
    report.missing = [k for k in model_state if k not in state_dict]
    return report


def load_partial_state_dict(
    model: nn.Module, state_dict: Mapping[str, Any], strict: bool = False
) -> LoadReport:
    """Load every key of ``state_dict`` that the model has with the same shape; return a report.

    The chapter's version printed what it skipped and ignored ``strict``. This one returns a
    ``LoadReport`` (loaded, missing, unexpected, shape-mismatched with both shapes), logs a warning
    when anything was skipped, and with ``strict=True`` raises ``StateDictMismatchError`` (carrying
    the same report) *before* touching the model. If copying fails midway (say, out of memory),
    the tensors already copied are restored, so the model is never left half-loaded (this keeps a
    copy of the tensors about to be overwritten for the duration of the call).
    ``state_dict._metadata`` (per-module version numbers that e.g. BatchNorm's loader reads) is
    passed through to ``load_state_dict``.
    """
    model_state = model.state_dict()
    report = _compare(model_state, state_dict)
    if strict and not report.ok:
        report.applied = False
        raise StateDictMismatchError(report)

    to_load = _with_metadata(
        OrderedDict((k, state_dict[k]) for k in report.loaded),
        getattr(state_dict, "_metadata", None),
    )
    backup = {
        k: v.detach().clone() if isinstance(v, torch.Tensor) else v
        for k, v in model_state.items()
        if k in to_load
    }
    try:
        model.load_state_dict(to_load, strict=False)
    except BaseException:
        with torch.no_grad():  # copy back directly: the module's own loader just failed
            for key, value in backup.items():
                if isinstance(value, torch.Tensor):
                    model_state[key].copy_(value)
        raise
    if not report.ok:
        logger.warning("load_partial_state_dict: %s", report.summary())
    return report


# --------------------------------------------------------------------------------------------
# Renaming keys
# --------------------------------------------------------------------------------------------


def _rename_one(
    key: str,
    key_mapping: Mapping[str, str],
    prefixes: list[tuple[str, str]],
    patterns: list[tuple[re.Pattern[str], str]],
) -> str:
    if key in key_mapping:
        return key_mapping[key]
    for old, new in prefixes:  # longest first
        if key.startswith(old):
            return new + key[len(old) :]
    for regex, repl in patterns:
        if regex.search(key):
            return regex.sub(repl, key, count=1)
    return key


def _owner(key: str, modules: Iterable[str]) -> str:
    """The longest module name in ``modules`` that owns ``key`` ('' is the root)."""
    best = ""
    for name in modules:
        if name and key.startswith(name + ".") and len(name) > len(best):
            best = name
    return best


def rename_state_dict_keys(
    state_dict: Mapping[str, Any],
    key_mapping: Mapping[str, str] | None = None,
    *,
    prefixes: Mapping[str, str] | None = None,
    patterns: Iterable[tuple[str | re.Pattern[str], str]] = (),
) -> OrderedDict[str, Any]:
    """Return a copy of ``state_dict`` with keys renamed; the tensors are shared, not copied.

    Each key gets the first rule that applies, in this order:

    * ``key_mapping``: exact names, ``{'fc1.weight': 'encoder.fc1.weight'}`` (the chapter's form);
    * ``prefixes``: ``{'fc1.': 'encoder.fc1.'}`` renames every key starting with ``'fc1.'``
      (the longest matching prefix wins);
    * ``patterns``: ``[(r'^layer(\\d+)\\.', r'blocks.\\1.')]``, ``re.sub`` with the first pattern
      that matches (once per key).

    Keys no rule matches are kept. Unlike the chapter's version, ``_metadata`` is kept, with module
    names renamed the same way. Two keys that would end up with the same name raise a
    ``ValueError`` naming both, instead of one silently overwriting the other.
    """
    key_mapping = dict(key_mapping or {})
    prefix_rules = sorted((prefixes or {}).items(), key=lambda kv: -len(kv[0]))
    pattern_rules = [(re.compile(p) if isinstance(p, str) else p, r) for p, r in patterns]

    new: OrderedDict[str, Any] = OrderedDict()
    source_of: dict[str, str] = {}
    renamed: dict[str, str] = {}
    for key, value in state_dict.items():
        new_key = _rename_one(key, key_mapping, prefix_rules, pattern_rules)
        if new_key in source_of:
            raise ValueError(
                f"rename_state_dict_keys: {source_of[new_key]!r} and {key!r} would both become "
                f"{new_key!r}; fix the mapping so that every key gets its own name."
            )
        source_of[new_key] = key
        new[new_key] = value
        if new_key != key:
            renamed[key] = new_key

    metadata = getattr(state_dict, "_metadata", None)
    if metadata is None:
        return new
    # Module names follow their keys: 'fc1.weight' -> 'encoder.fc1.weight' moves module 'fc1' to
    # 'encoder.fc1'. Modules without keys of their own (containers) follow the prefix/regex rules.
    module_moves: dict[str, str] = {}
    for old_key, new_key in renamed.items():
        owner = _owner(old_key, metadata)
        local = old_key[len(owner) + 1 :] if owner else old_key
        if new_key == local:
            module_moves.setdefault(owner, "")
        elif new_key.endswith("." + local):
            module_moves.setdefault(owner, new_key[: -len(local) - 1])
    new_metadata: OrderedDict[str, Any] = OrderedDict()
    for name, value in metadata.items():
        if name in module_moves:
            target = module_moves[name]
        elif name:
            moved = _rename_one(name + ".", {}, prefix_rules, pattern_rules)
            target = moved[:-1] if moved.endswith(".") else name
        else:
            target = name
        new_metadata.setdefault(target, value)
    new._metadata = new_metadata  # type: ignore[attr-defined]
    return new


# --------------------------------------------------------------------------------------------
# Wrapper prefixes: DataParallel / DDP ('module.') and torch.compile ('_orig_mod.')
# --------------------------------------------------------------------------------------------


def detect_wrapper_prefix(keys: Iterable[str], prefixes: Iterable[str] = WRAPPER_PREFIXES) -> str:
    """The chain of wrapper prefixes that *every* key carries, e.g. ``'module._orig_mod.'``.

    Only a prefix shared by all keys counts: a wrapper prefixes everything, whereas a model may
    well have its own submodule called ``module`` next to others.
    """
    keys = list(keys)
    prefixes = tuple(prefixes)
    found = ""
    while keys:
        for prefix in prefixes:
            if all(k.startswith(prefix) for k in keys):
                found += prefix
                keys = [k[len(prefix) :] for k in keys]
                break
        else:
            break
    return found


def _strip_metadata(metadata: Mapping[str, Any], prefix: str) -> OrderedDict[str, Any]:
    out: OrderedDict[str, Any] = OrderedDict()
    bare = prefix[:-1]
    for name, value in metadata.items():
        if name == bare:
            out[""] = value  # the wrapped model's root entry becomes the root
        elif name.startswith(prefix):
            out[name[len(prefix) :]] = value
        elif name == "" or bare.startswith(name + "."):
            continue  # the wrapper's own entries
        else:
            out[name] = value
    return out


def remove_module_prefix(
    state_dict: Mapping[str, Any], prefixes: Iterable[str] = WRAPPER_PREFIXES
) -> OrderedDict[str, Any]:
    """Strip the wrapper prefixes (``module.``, ``_orig_mod.``, nested in any order) from every key.

    A prefix is stripped only when every key carries it, and only the exact prefix: a key like
    ``'module_norm.weight'`` or ``'modules_list.0.weight'`` never loses its first characters (the
    danger of the ``k[7:]`` idiom). ``_metadata`` is kept, renamed the same way (like
    ``torch.nn.modules.utils.consume_prefix_in_state_dict_if_present``, which works in place and
    strips from any key that has the prefix). Returns a new dict; the tensors are shared.
    """
    return _strip(state_dict, detect_wrapper_prefix(state_dict.keys(), prefixes))


def _strip(state_dict: Mapping[str, Any], prefix: str) -> OrderedDict[str, Any]:
    new: OrderedDict[str, Any] = OrderedDict((k[len(prefix) :], v) for k, v in state_dict.items())
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        new._metadata = _strip_metadata(metadata, prefix) if prefix else OrderedDict(metadata)  # type: ignore[attr-defined]
    return new


def add_module_prefix(
    state_dict: Mapping[str, Any], prefix: str = "module."
) -> OrderedDict[str, Any]:
    """The inverse of ``remove_module_prefix``: put ``prefix`` in front of every key (and module
    name in ``_metadata``), as a ``DataParallel``/DDP (``'module.'``) or compiled (``'_orig_mod.'``)
    model's ``state_dict()`` would have it.
    """
    if not prefix.endswith("."):
        raise ValueError(
            f"prefix must end with '.', got {prefix!r} (did you mean {prefix + '.'!r}?)"
        )
    new: OrderedDict[str, Any] = OrderedDict((prefix + k, v) for k, v in state_dict.items())
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        new._metadata = OrderedDict(  # type: ignore[attr-defined]
            (prefix + name if name else prefix[:-1], value) for name, value in metadata.items()
        )
    return new


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside ``DataParallel``, ``DistributedDataParallel`` and ``torch.compile`` wrappers
    (nested in any order). Loading into it is the same as loading into the wrapper: they share
    parameters."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
            continue
        dynamo = sys.modules.get("torch._dynamo.eval_frame")  # present once torch.compile ran
        optimized = getattr(dynamo, "OptimizedModule", None)
        if optimized is not None and isinstance(model, optimized):
            model = model._orig_mod
            continue
        return model


def load_state_dict_any_prefix(
    model: nn.Module, state_dict: Mapping[str, Any], *, strict: bool = True
) -> LoadReport:
    """Load a plain or wrapper-prefixed ``state_dict`` into a plain or wrapped model, in one call.

    The chapter's 6.3.5 recipe strips ``module.`` and then loads into the still-wrapped model,
    which raises. Here the model is unwrapped (``unwrap_model``) and the checkpoint stripped of
    whatever wrapper prefix all its keys share, unless its keys already match the model's as they
    are (a model with a real submodule called ``module``). Then ``load_partial_state_dict``: with
    ``strict=True`` (the default, as in ``load_state_dict``) any remaining mismatch raises
    ``StateDictMismatchError`` and nothing is loaded.
    """
    inner = unwrap_model(model)
    inner_keys = set(inner.state_dict().keys())
    # Candidates: the checkpoint as is, then with one more wrapper prefix stripped each time.
    candidates = [("", state_dict)]
    for prefix in re.findall(r"module\.|_orig_mod\.", detect_wrapper_prefix(state_dict.keys())):
        stripped = candidates[-1][0] + prefix
        candidates.append((stripped, _strip(state_dict, stripped)))
    exact = [c for c in candidates if set(c[1].keys()) == inner_keys]
    if exact:
        prefix, state_dict = exact[0]
    else:  # the most keys in common; on a tie, the most stripped
        prefix, state_dict = max(
            candidates, key=lambda c: (len(inner_keys & set(c[1].keys())), len(c[0]))
        )
    try:
        report = load_partial_state_dict(inner, state_dict, strict=strict)
    except StateDictMismatchError as error:
        error.report.stripped_prefix = prefix
        raise
    report.stripped_prefix = prefix
    return report


# --------------------------------------------------------------------------------------------
# Looking inside a checkpoint without building the model
# --------------------------------------------------------------------------------------------


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
                _WRAPPER_NAMES[p] for p in re.findall(r"module\.|_orig_mod\.", prefix)
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
                    "shape": _fmt_shape(tuple(item.shape)),
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
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    metadata = FileSystemReader(str(path)).read_metadata()
    rows = []
    for key, meta in sorted(metadata.state_dict_metadata.items()):
        if isinstance(meta, TensorStorageMetadata):
            numel = 1
            for n in meta.size:
                numel *= n
            itemsize = torch.empty((), dtype=meta.properties.dtype).element_size()
            rows.append(
                {
                    "key": key,
                    "shape": _fmt_shape(tuple(meta.size)),
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
    size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    return CheckpointInfo(path, size, rows, prefixes, kind="torch.distributed.checkpoint directory")


def inspect_checkpoint(path: str | os.PathLike[str]) -> CheckpointInfo:
    """Keys, shapes, dtypes and sizes in a checkpoint, and which wrapper prefix it carries.

    Needs no model: the file is read with ``weights_only=True`` on the CPU, memory-mapped when the
    format allows, so even a large file is inspected without reading its tensor data. Works on
    plain state_dicts, on nested training checkpoints (``model_state_dict/fc.weight`` ...) and on
    ``torch.distributed.checkpoint`` directories (from their metadata alone).
    """
    path = Path(path)
    if path.is_dir() and (path / ".metadata").exists():
        return _inspect_dcp_directory(path)
    check_checkpoint_file(path)
    with path.open("rb") as f:
        zipped = f.read(4) == ZIP_MAGIC
    obj = safe_load(path, map_location="cpu", mmap=zipped)
    rows: list[dict[str, Any]] = []
    prefixes: dict[str, str] = {}
    _walk(obj, "", rows, prefixes)
    return CheckpointInfo(path, path.stat().st_size, rows, prefixes)
