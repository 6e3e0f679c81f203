"""What a durable save costs on this machine, and what the measured ratios say.

Notebook 09 measures plain ``torch.save``, ``torch.save`` + ``fsync`` and ``safe_save`` live.
How much ``fsync`` costs depends on the file system: on a disk it waits for the bytes to reach
the platter or flash; on a RAM-backed ``tmpfs``, an overlay in a container, or a disk whose
write cache is not flushed, it returns at once. So the conclusion is computed from the ratios of
this run, never assumed. ``benchmarks/bench_checkpoint_io.py`` does the full comparison.
Taught in notebooks/09b_durability_in_depth.ipynb, step 4.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["SaveCosts", "measure_save_costs"]

PLAIN, FSYNC, SAFE = "torch.save", "torch.save + fsync", "safe_save"
# Below this ratio to plain torch.save, fsync is taken to have returned without waiting for a
# disk (timing noise on a page-cache save is about 10-20 %).
_FSYNC_NOTICEABLE = 1.3


def _timed_ms(save: Callable[[Any, Path], Any], obj: Any, path: Path) -> float:
    start = time.perf_counter()
    save(obj, path)
    return (time.perf_counter() - start) * 1000


@dataclass(frozen=True)
class SaveCosts:
    """Median milliseconds per state (rows) and save method (columns, ``torch.save`` first)."""

    ms: dict[str, dict[str, float]]

    def ratio(self, state: str, method: str) -> float:
        """``method``'s time over plain ``torch.save``'s, for ``state``."""
        return self.ms[state][method] / self.ms[state][PLAIN]

    def table(self) -> str:
        """One block per state: each method's median and its ratio to plain ``torch.save``."""
        lines = []
        for state, row in self.ms.items():
            lines.append(state)
            for method, ms in row.items():
                lines.append(f"  {method:20} {ms:8.2f} ms  ({self.ratio(state, method):4.1f}x)")
        return "\n".join(lines)

    def conclusion(self) -> str:
        """What the ratios of the largest state say about this machine (needs the three methods)."""
        big = max(self.ms, key=lambda s: self.ms[s][PLAIN])
        fsync, safe = self.ratio(big, FSYNC), self.ratio(big, SAFE)
        if fsync < _FSYNC_NOTICEABLE:
            verdict = (
                f"On the {big}, fsync cost {fsync:.1f}x plain torch.save here: this file system "
                "returns from fsync at once (a RAM-backed tmpfs, a container's overlay, or a disk "
                "whose write cache is not flushed), so durability looks free. On a laptop's SSD "
                "or a network disk it is not: run benchmarks/bench_checkpoint_io.py there."
            )
        else:
            extra = max(safe - fsync, 0.0)
            verdict = (
                f"On the {big}, fsync is most of the price: torch.save + fsync took {fsync:.1f}x "
                f"plain torch.save (the disk writing the bytes for real); safe_save's rename and "
                f"folder fsync added {extra:.1f}x more."
            )
        small = min(self.ms, key=lambda s: self.ms[s][PLAIN])
        if small != big:
            verdict += (
                f" On the {small}, safe_save took {self.ms[small][SAFE]:.1f} ms "
                f"({self.ratio(small, SAFE):.1f}x): fixed costs (a temporary file, two fsyncs) "
                "dominate, but they are milliseconds."
            )
        return verdict


def _torch_save_fsync(obj: Any, path: Path) -> None:
    import torch

    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def measure_save_costs(
    states: Mapping[str, Any],
    folder: str | os.PathLike[str],
    methods: Mapping[str, Callable[[Any, Path], Any]] | None = None,
    repeat: int = 5,
) -> SaveCosts:
    """Time every save method on every state, writing ``folder/m.pth``.

    ``methods`` defaults to plain ``torch.save``, ``torch.save`` + ``fsync`` and ``safe_save``
    (the first must be plain ``torch.save``: the baseline of the ratios).
    Taught in notebooks/09b_durability_in_depth.ipynb, step 4.
    """
    import torch

    from course_lib.safe_io import safe_save

    if methods is None:
        methods = {PLAIN: torch.save, FSYNC: _torch_save_fsync, SAFE: safe_save}
    if next(iter(methods)) != PLAIN:
        raise ValueError(f"the first method must be {PLAIN!r}, the baseline of the ratios")
    target = Path(folder) / "m.pth"
    ms: dict[str, dict[str, float]] = {}
    for state, obj in states.items():
        for save in methods.values():  # warm-up: first calls pay for imports and new pages
            save(obj, target)
        # Round by round, each method once per round: all of them meet the same disk (the
        # write-back of earlier saves slows whichever save runs while it happens).
        times: dict[str, list[float]] = {name: [] for name in methods}
        for _ in range(repeat):
            for name, save in methods.items():
                times[name].append(_timed_ms(save, obj, target))
        ms[state] = {name: statistics.median(t) for name, t in times.items()}
    return SaveCosts(ms)
