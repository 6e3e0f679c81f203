"""The loss log of ``elastic_job`` (``losses.jsonl``, one line per step and attempt) and its figure.

Taught in notebooks/05b_torchrun_elastic.ipynb, section 3.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["LossRecord", "plot_elastic_losses", "read_losses"]


@dataclass
class LossRecord:
    """The mean loss over all ranks after ``step``, logged by rank 0 in torchrun attempt ``attempt``."""

    attempt: int
    step: int
    loss: float


def read_losses(workdir: str | os.PathLike[str]) -> list[LossRecord]:
    """Every record of ``workdir/losses.jsonl``, in the order written (a restart repeats steps).

    Taught in notebooks/05b_torchrun_elastic.ipynb, section 3.
    """
    lines = (Path(workdir) / "losses.jsonl").read_text().splitlines()
    return [LossRecord(**json.loads(line)) for line in lines]


def plot_elastic_losses(straight: list[LossRecord], interrupted: list[LossRecord]) -> Any:
    """The loss per step of an uninterrupted run and of a run whose workers torchrun restarted.

    Each attempt of the interrupted run is its own line, so the steps computed twice (after the
    checkpoint it resumed from) show on top of each other. Taught in
    notebooks/05b_torchrun_elastic.ipynb, section 3.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(
        [r.step for r in straight],
        [r.loss for r in straight],
        "k-",
        lw=5,
        alpha=0.25,
        label="uninterrupted",
    )
    for attempt in sorted({r.attempt for r in interrupted}):
        mine = [r for r in interrupted if r.attempt == attempt]
        label = "first attempt (killed)" if attempt == 0 else f"after restart {attempt}"
        ax.plot(
            [r.step for r in mine],
            [r.loss for r in mine],
            "o-" if attempt else "s--",
            ms=4,
            label=label,
        )
    ax.set(xlabel="step", ylabel="training loss (mean of the ranks)", title="An elastic restart")
    ax.legend()
    return fig
