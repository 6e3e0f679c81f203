"""Measuring inference latency: warm-up, many repeats, and the median, so one slow call does not lie.

A single ``time.perf_counter()`` around one call measures mostly noise: the first calls pay for
lazy initialisation (memory pools, kernel selection, onnxruntime's thread pool), and any call can be
delayed by another process. The median of many timed repeats, after a warm-up, is robust to both.
Calls much shorter than a millisecond are timed in groups (``number`` calls per repeat).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Latency", "measure_latency"]


@dataclass(frozen=True)
class Latency:
    """Seconds per call: the median and the interquartile range over ``repeats`` timed repeats."""

    median_s: float
    q1_s: float
    q3_s: float
    repeats: int
    number: int

    @property
    def median_ms(self) -> float:
        """The median in milliseconds, the unit that suits model inference."""
        return self.median_s * 1e3

    def __str__(self) -> str:
        return (
            f"{self.median_ms:.3f} ms (median of {self.repeats} x {self.number} calls; "
            f"IQR {self.q1_s * 1e3:.3f}-{self.q3_s * 1e3:.3f} ms)"
        )


def _synchronize(device: torch.device | str | None) -> None:
    """Wait for queued GPU work: CUDA kernels run asynchronously, so the clock would stop too early."""
    if device is None:
        return
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _auto_number(
    fn: Callable[..., object], args: tuple[Any, ...], device: torch.device | str | None
) -> int:
    """How many calls make one repeat last about a millisecond (at least 1, at most 1000)."""
    start = time.perf_counter()
    fn(*args)
    _synchronize(device)
    once = max(time.perf_counter() - start, 1e-7)
    return max(1, min(1000, int(1e-3 / once)))


def measure_latency(
    fn: Callable[..., object],
    *args: Any,
    warmup: int = 10,
    repeats: int = 30,
    number: int | None = None,
    device: torch.device | str | None = None,
    max_seconds: float | None = None,
) -> Latency:
    """Time ``fn(*args)`` and return the median seconds per call (with the quartiles).

    ``warmup`` untimed calls come first. Each of the ``repeats`` timings covers ``number`` calls
    (chosen so a repeat lasts about 1 ms when ``None``). Pass ``device`` when ``fn`` runs on a GPU,
    so each timing waits for the GPU to finish. ``max_seconds`` caps the repeats (but keeps at
    least 5) so that a slow call, such as a large batch, does not take minutes. Wrap model calls
    in ``torch.inference_mode()`` if autograd bookkeeping should not be measured.
    Used by ``inference_bench`` (``eager_hotspots``, ``run_benchmark``); not taught in a notebook.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats=}, {warmup=}")
    for _ in range(warmup):
        fn(*args)
    _synchronize(device)
    if number is None:
        number = _auto_number(fn, args, device)
    if max_seconds is not None:
        start = time.perf_counter()
        fn(*args)
        _synchronize(device)
        once = max(time.perf_counter() - start, 1e-9)
        repeats = max(min(repeats, 5), min(repeats, int(max_seconds / (once * number))))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            fn(*args)
        _synchronize(device)
        times.append((time.perf_counter() - start) / number)
    if len(times) >= 2:
        q1, _, q3 = statistics.quantiles(times, n=4)
    else:
        q1 = q3 = times[0]
    return Latency(statistics.median(times), q1, q3, repeats, number)
