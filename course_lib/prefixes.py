"""The prefixes wrappers put in front of every key (chapter 6.3.5): ``module.`` and ``_orig_mod.``.

``DataParallel`` and ``DistributedDataParallel`` store the model as ``.module``, ``torch.compile``
as ``._orig_mod``, so their ``state_dict`` keys carry those prefixes and a plain model refuses
them. Here: finding the prefix chain every key shares, stripping and adding it (``_metadata``
kept), unwrapping a model, and loading either kind of ``state_dict`` into either kind of model.
"""

from __future__ import annotations

import re
import sys
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

from torch import nn

from course_lib.state_dict import LoadReport, StateDictMismatchError, load_partial_state_dict

__all__ = [
    "WRAPPER_NAMES",
    "WRAPPER_PREFIXES",
    "add_module_prefix",
    "detect_wrapper_prefix",
    "load_state_dict_any_prefix",
    "remove_module_prefix",
    "unwrap_model",
]

#: The prefixes a wrapper puts in front of every key: ``DataParallel`` and
#: ``DistributedDataParallel`` store the model as ``.module``; ``torch.compile`` as ``._orig_mod``.
WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.")

#: Which wrapper adds each prefix, for messages.
WRAPPER_NAMES = {"module.": "DataParallel/DistributedDataParallel", "_orig_mod.": "torch.compile"}


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

    Taught in notebooks/05b_torchrun_elastic.ipynb.
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

    Taught in notebooks/05b_torchrun_elastic.ipynb.
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

    Taught in notebooks/05_data_parallel.ipynb, in depth in notebooks/05b_torchrun_elastic.ipynb.
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
