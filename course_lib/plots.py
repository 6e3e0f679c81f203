"""The notebooks' figures, so that a cell shows the idea and not thirty lines of matplotlib.

Each function draws one figure from numbers the notebook measured and returns it (shown by the
notebook with ``plt.show()``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["plot_resume_curves", "plot_save_costs"]

History = Mapping[str, Sequence[float]]


def plot_resume_curves(
    straight: History, resumed: History, no_rng: History, kill_after: int
) -> Any:
    """Validation loss per epoch: uninterrupted, killed and resumed with and without RNG state.

    Taught in notebooks/03_checkpoints.ipynb, step 4.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(straight["epoch"], straight["val_loss"], "k-", lw=4, alpha=0.3, label="uninterrupted")
    ax.plot(
        resumed["epoch"], resumed["val_loss"], "o-", ms=4, label="killed, resumed (RNG restored)"
    )
    after = slice(kill_after - 1, None)
    ax.plot(
        no_rng["epoch"][after],
        no_rng["val_loss"][after],
        "s--",
        ms=4,
        label="killed, resumed without RNG state",
    )
    ax.axvline(kill_after - 0.5, color="red", ls=":", label="kill -9")
    ax.set(
        xlabel="epoch", ylabel="validation loss", yscale="log", title="Resuming from a checkpoint"
    )
    ax.legend()
    return fig


def plot_save_costs(ms: Mapping[str, Mapping[str, float]]) -> Any:
    """One bar chart per state: the median milliseconds of each save method.

    Taught in notebooks/09_safe_saving.ipynb, step 4 (``ms`` is ``SaveCosts.ms``).
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(ms), figsize=(4.5 * len(ms), 3), squeeze=False)
    for ax, (state, row) in zip(axes[0], ms.items(), strict=True):
        ax.bar(list(row), list(row.values()), color=["tab:gray", "tab:orange", "tab:green"])
        ax.set(title=state, ylabel="median time (ms)")
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle("The cost of durability on this machine")
    fig.tight_layout()
    return fig
