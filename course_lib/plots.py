"""The notebooks' figures, so that a cell shows the idea and not thirty lines of matplotlib.

Each function draws one figure from numbers the notebook measured and returns it (shown by the
notebook with ``plt.show()``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["plot_resume_curves", "plot_retention", "plot_save_costs"]

History = Mapping[str, Sequence[float]]


def plot_resume_curves(
    straight: History, resumed: History, no_rng: History, kill_after: int
) -> Any:
    """Validation loss per epoch: uninterrupted, killed and resumed with and without RNG state.

    Taught in notebooks/03b_resume_in_depth.ipynb, step 3.
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

    Taught in notebooks/09b_durability_in_depth.ipynb, step 4 (``ms`` is ``SaveCosts.ms``).
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


def plot_retention(
    val_history: Sequence[float], policies: Mapping[str, Mapping[str, Any]], union: str
) -> tuple[Any, list[int]]:
    """What each retention policy keeps, replayed save by save from a run's validation losses.

    Left: which epochs each policy alone keeps at the end. Right: the life of each checkpoint
    under the ``union`` policy, save after save. Returns the figure and the epochs the union
    keeps at the end. The policies are ``retention_reasons`` keyword arguments.

    Taught in notebooks/08b_retention_async.ipynb, step 4.
    """
    import matplotlib.pyplot as plt
    import numpy as np

    from course_lib.manager import Candidate, retention_reasons

    epochs = len(val_history)
    entries = [
        Candidate(str(e), epoch=e, metrics={"val_loss": v}) for e, v in enumerate(val_history)
    ]
    final = np.zeros((len(policies), epochs))
    for row, options in enumerate(policies.values()):
        reasons = retention_reasons(entries, **options)
        for e in range(epochs):
            # A single policy's own max_to_keep=1 keeps the newest: show only the policy itself.
            own = [r for r in reasons[str(e)] if r != "latest" or options.get("max_to_keep") != 1]
            final[row, e] = 1.0 if own else 0.0
    alive = np.full((epochs, epochs), np.nan)  # alive[t, e]: epoch e's file on disk after save t
    kept: dict[int, Candidate] = {}
    for t in range(epochs):
        kept[t] = entries[t]
        reasons = retention_reasons(kept.values(), keep=[str(t)], **policies[union])
        kept = {e: entry for e, entry in kept.items() if reasons[str(e)]}
        for e in kept:
            alive[t, e] = 1.0

    fig, (left, right) = plt.subplots(
        1, 2, figsize=(12, 3.6), gridspec_kw={"width_ratios": [1.4, 1]}
    )
    left.imshow(final, cmap="Greens", vmin=0, vmax=1.3, aspect="auto")
    left.set_yticks(range(len(policies)), list(policies))
    left.set_xticks(range(0, epochs, 5))
    left.set_xlabel("epoch of the checkpoint")
    left.set_title(f"kept after {epochs} epochs")
    for row, options in enumerate(policies.values()):
        if options.get("keep_best") and options.get("max_to_keep") == 1:
            best = retention_reasons(entries, **options)
            for e in [e for e in range(epochs) if "best" in best[str(e)]]:
                left.annotate("best", (e, row), ha="center", va="center", fontsize=7)
    right.imshow(alive, cmap="Greens", vmin=0, vmax=1.3, origin="lower", aspect="auto")
    right.set_xlabel("epoch of the checkpoint")
    right.set_ylabel("after the save of epoch")
    right.set_title("union: which checkpoints are on disk, save after save")
    fig.tight_layout()
    return fig, sorted(kept)
