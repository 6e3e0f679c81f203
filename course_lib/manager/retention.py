"""Which checkpoints to keep (chapter 6.3.8): the retention policies as pure functions.

Read this second, after ``api``. The policies read checkpoint records (anything with ``file``,
``epoch``, ``step``, ``metrics`` and ``protected`` attributes: the manifest's
``CheckpointEntry``, or a ``Candidate`` made by hand) and touch no file, so that a policy can be
tested, and drawn in a notebook, without saving anything. ``CheckpointManager`` deletes what
they no longer keep.

Taught in notebooks/08b_retention_async.ipynb, step 4.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

__all__ = [
    "BestMetric",
    "Candidate",
    "Ranked",
    "RetentionPolicy",
    "best_so_far",
    "metric_value",
    "order_key",
    "rank_best",
    "retention_reasons",
]


class Ranked(Protocol):
    """What the policies read of a checkpoint record."""

    @property
    def file(self) -> str: ...
    @property
    def epoch(self) -> int | None: ...
    @property
    def step(self) -> int | None: ...
    @property
    def metrics(self) -> Mapping[str, float | str]: ...
    @property
    def protected(self) -> bool: ...


@dataclass(frozen=True)
class Candidate:
    """A checkpoint as the policies see it, for trying a policy without files.

    ``Candidate(file='e7', epoch=7, metrics={'val_loss': 0.31})``.

    Taught in notebooks/08b_retention_async.ipynb, step 4.
    """

    file: str
    epoch: int | None = None
    step: int | None = None
    metrics: Mapping[str, float | str] = field(default_factory=dict)
    protected: bool = False


@dataclass(frozen=True)
class BestMetric:
    """The best value of ``name`` ever committed in a folder (``mode`` 'min' or 'max')."""

    name: str
    mode: str
    value: float | None


def order_key(entry: Ranked) -> tuple[int, int, str]:
    """``(epoch, step, file)``: how checkpoints are ordered, oldest first (never by file times)."""
    return (
        -1 if entry.epoch is None else int(entry.epoch),
        -1 if entry.step is None else int(entry.step),
        str(entry.file),
    )


def metric_value(metrics: Mapping[str, object], name: str) -> float | None:
    """``metrics[name]`` as a float; ``None`` if missing, not a number, or NaN."""
    value = metrics.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


def rank_best(entries: Iterable[Ranked], best_metric: str, mode: str) -> list[Ranked]:
    """The records that have a numeric ``metrics[best_metric]``, best first (ties: newer first)."""
    newest_first = sorted(entries, key=order_key, reverse=True)
    valued = [(metric_value(e.metrics, best_metric), e) for e in newest_first]
    sign = 1.0 if mode == "min" else -1.0
    ranked = sorted(((v, e) for v, e in valued if v is not None), key=lambda p: sign * p[0])
    return [e for _, e in ranked]  # sorted() is stable: among ties the newer stays first


def retention_reasons(
    entries: Iterable[Ranked],
    *,
    max_to_keep: int | None = 5,
    keep_best: int = 1,
    best_metric: str = "val_loss",
    mode: str = "min",
    keep_every: int | None = None,
    keep: Iterable[str] = (),
) -> dict[str, list[str]]:
    """Why each checkpoint is kept: ``{file: [reasons]}``; an empty list means it may be deleted.

    A pure function of the records (``file``, ``epoch``, ``step``, ``metrics``,
    ``protected``), so that the policy can be tested and drawn without touching files. Reasons:

    - ``'latest'``: among the ``max_to_keep`` newest by ``(epoch, step)`` (``None``: all);
    - ``'best'``: among the ``keep_best`` best by ``metrics[best_metric]`` (``mode='min'`` or
      ``'max'``; records without a numeric value are not ranked; ties keep the newer);
    - ``'every'``: ``(epoch + 1) % keep_every == 0``, the chapter's "every 10 epochs" with
      0-based epochs (epochs 9, 19, ...);
    - ``'protected'``: saved with ``protect=True``;
    - ``'kept'``: named in ``keep`` (the checkpoint just saved, and the source of
      ``best_model.pth``).

    Taught in notebooks/08b_retention_async.ipynb, step 4.
    """
    entries = list(entries)
    reasons: dict[str, list[str]] = {str(e.file): [] for e in entries}
    newest_first = sorted(entries, key=order_key, reverse=True)
    latest = newest_first if max_to_keep is None else newest_first[:max_to_keep]
    for entry in latest:
        reasons[str(entry.file)].append("latest")
    if keep_best > 0:
        for entry in rank_best(entries, best_metric, mode)[:keep_best]:
            reasons[str(entry.file)].append("best")
    if keep_every:
        for entry in entries:
            if entry.epoch is not None and (int(entry.epoch) + 1) % keep_every == 0:
                reasons[str(entry.file)].append("every")
    for entry in entries:
        if entry.protected:
            reasons[str(entry.file)].append("protected")
    for name in keep:
        if name in reasons:
            reasons[name].append("kept")
    return reasons


@dataclass(frozen=True)
class RetentionPolicy:
    """A manager's policies, checked once: ``reasons(entries)`` applies them.

    The arguments are ``CheckpointManager``'s (see ``retention_reasons`` for what each keeps).
    """

    max_to_keep: int | None = 5
    keep_best: int = 1
    best_metric: str = "val_loss"
    mode: str = "min"
    keep_every: int | None = None

    def __post_init__(self) -> None:
        if self.max_to_keep is not None and self.max_to_keep < 1:
            raise ValueError(
                f"max_to_keep={self.max_to_keep!r}: keep at least the latest checkpoint "
                "(max_to_keep=1), or pass None to keep every checkpoint."
            )
        if self.keep_best < 0:
            raise ValueError(f"keep_best={self.keep_best!r} must be 0 (off) or more.")
        if self.mode not in ("min", "max"):
            raise ValueError(f"mode={self.mode!r} must be 'min' (losses) or 'max' (accuracies).")
        if self.keep_every is not None and self.keep_every < 1:
            raise ValueError(f"keep_every={self.keep_every!r} must be None (off) or 1 or more.")

    def reasons(self, entries: Iterable[Ranked], keep: Iterable[str] = ()) -> dict[str, list[str]]:
        """``retention_reasons`` with these policies."""
        return retention_reasons(
            entries,
            max_to_keep=self.max_to_keep,
            keep_best=self.keep_best,
            best_metric=self.best_metric,
            mode=self.mode,
            keep_every=self.keep_every,
            keep=keep,
        )


def best_so_far(
    record: BestMetric | None,
    entries: Iterable[Ranked],
    metrics: Mapping[str, object] | None,
    *,
    best_metric: str,
    mode: str,
) -> BestMetric:
    """The best ``best_metric`` value ever seen: the stored ``record`` and the new ``metrics``.

    ``record`` survives the deletion of the checkpoint that had the value; if it is missing or
    was kept for another metric or mode, the ``entries`` still there are ranked instead. The
    value is ``None`` if no value is a number.
    """
    values: list[float | None] = []
    if record is not None and record.name == best_metric and record.mode == mode:
        values.append(record.value)
    else:  # another metric than before: rank what is still here
        values += [metric_value(e.metrics, best_metric) for e in entries]
    values.append(metric_value(dict(metrics or {}), best_metric))
    numbers = [v for v in values if v is not None]
    best = (min(numbers) if mode == "min" else max(numbers)) if numbers else None
    return BestMetric(best_metric, mode, best)
