"""Which checkpoints to keep (chapter 6.3.8): the retention policies as pure functions.

They read manifest entries (dicts with ``file``, ``epoch``, ``step``, ``metrics``,
``protected``) and touch no file, so that a policy can be tested, and drawn in a notebook,
without saving anything. ``CheckpointManager`` deletes what they no longer keep.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any


def order_key(entry: Mapping[str, Any]) -> tuple[int, int, str]:
    """``(epoch, step, file)``: how checkpoints are ordered, oldest first (never by file times)."""
    epoch = entry.get("epoch")
    step = entry.get("step")
    return (
        -1 if epoch is None else int(epoch),
        -1 if step is None else int(step),
        str(entry.get("file", "")),
    )


def metric_value(entry: Mapping[str, Any], name: str) -> float | None:
    """``entry['metrics'][name]`` as a float; ``None`` if missing, not a number, or NaN."""
    value = (entry.get("metrics") or {}).get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


def retention_reasons(
    entries: Iterable[Mapping[str, Any]],
    *,
    max_to_keep: int | None = 5,
    keep_best: int = 1,
    best_metric: str = "val_loss",
    mode: str = "min",
    keep_every: int | None = None,
    keep: Iterable[str] = (),
) -> dict[str, list[str]]:
    """Why each checkpoint is kept: ``{file: [reasons]}``; an empty list means it may be deleted.

    A pure function of the manifest entries (``file``, ``epoch``, ``step``, ``metrics``,
    ``protected``), so that the policy can be tested and drawn without touching files. Reasons:

    - ``'latest'``: among the ``max_to_keep`` newest by ``(epoch, step)`` (``None``: all);
    - ``'best'``: among the ``keep_best`` best by ``metrics[best_metric]`` (``mode='min'`` or
      ``'max'``; entries without a numeric value are not ranked; ties keep the newer);
    - ``'every'``: ``(epoch + 1) % keep_every == 0``, the chapter's "every 10 epochs" with
      0-based epochs (epochs 9, 19, ...);
    - ``'protected'``: saved with ``protect=True``;
    - ``'kept'``: named in ``keep`` (the checkpoint just saved, and the one ``best_model.pth``
      copies: with hard links that costs no space).
    """
    entries = list(entries)
    reasons: dict[str, list[str]] = {str(e["file"]): [] for e in entries}
    newest_first = sorted(entries, key=order_key, reverse=True)
    latest = newest_first if max_to_keep is None else newest_first[:max_to_keep]
    for entry in latest:
        reasons[str(entry["file"])].append("latest")
    if keep_best > 0:
        ranked = [e for e in newest_first if metric_value(e, best_metric) is not None]
        sign = 1.0 if mode == "min" else -1.0
        ranked.sort(key=lambda e: sign * metric_value(e, best_metric))  # stable: newer first
        for entry in ranked[:keep_best]:
            reasons[str(entry["file"])].append("best")
    if keep_every:
        for entry in entries:
            epoch = entry.get("epoch")
            if epoch is not None and (int(epoch) + 1) % keep_every == 0:
                reasons[str(entry["file"])].append("every")
    for entry in entries:
        if entry.get("protected"):
            reasons[str(entry["file"])].append("protected")
    for name in keep:
        if name in reasons:
            reasons[name].append("kept")
    return reasons


def best_so_far(
    record: Mapping[str, Any] | None,
    entries: Iterable[Mapping[str, Any]],
    metrics: Mapping[str, Any] | None,
    *,
    best_metric: str,
    mode: str,
) -> float | None:
    """The best ``best_metric`` value ever seen: the stored ``record`` and the new ``metrics``.

    ``record`` (``{'name', 'mode', 'value'}``) survives the deletion of the checkpoint that had
    the value; if it is missing or was kept for another metric or mode, the ``entries`` still
    there are ranked instead. ``None`` if no value is a number.
    """
    record = record or {}
    values = []
    if record.get("name") == best_metric and record.get("mode") == mode:
        values.append(record.get("value"))
    else:  # another metric than before: rank what is still here
        values += [metric_value(e, best_metric) for e in entries]
    values.append(metric_value({"metrics": dict(metrics or {})}, best_metric))
    values = [v for v in values if v is not None]
    return (min(values) if mode == "min" else max(values)) if values else None
