"""Adapting a ``state_dict`` to a model that does not match it exactly (chapter 6.3.4).

Partial loading with a report instead of prints, and renaming keys (exact, prefix and regex
rules) without dropping ``_metadata``. The wrapper prefixes of 6.3.5 (``module.``,
``_orig_mod.``) are in ``course_lib.prefixes``; a look inside a checkpoint file without building
its model is ``course_lib.inspection``.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from course_lib.display import format_table
from course_lib.errors import CourseError

logger = logging.getLogger(__name__)

__all__ = [
    "LoadReport",
    "StateDictMismatchError",
    "format_shape",
    "load_partial_state_dict",
    "rename_state_dict_keys",
]


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _shape(value: Any) -> tuple[int, ...] | None:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def format_shape(shape: tuple[int, ...] | None) -> str:
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
                    "checkpoint": format_shape(ckpt),
                    "model": format_shape(model),
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
                    f"{k} {format_shape(a)} vs model {format_shape(b)}"
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


class StateDictMismatchError(CourseError):
    """A strict load found missing, unexpected or shape-mismatched keys; ``.report`` says which.

    Nothing was loaded: the model is exactly as it was before the call.
    """

    def __init__(self, report: LoadReport, what: str = "model") -> None:
        self.report = report
        super().__init__(
            "state_dict",
            f"does not match the {what}: {report.summary()}",
            "pass strict=False to load the matching keys (and read the report), "
            "or rename_state_dict_keys / remove_module_prefix first.",
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

    Taught in notebooks/04_mismatched_state_dict.ipynb.
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

    Taught in notebooks/04_mismatched_state_dict.ipynb.
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
