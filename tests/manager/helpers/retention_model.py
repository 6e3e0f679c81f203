"""A from-scratch model of the retention policies, to check ``retention_reasons`` against.

Computed from the whole history at once, where the manager applies the policies save by save.
"""

from __future__ import annotations

from course_lib.checkpoint import checkpoint_filename
from course_lib.manager import Candidate


def reference_kept(history, *, max_to_keep, keep_best, mode, keep_every):
    """What the policies keep, computed from the whole history at once (not incrementally).

    ``history``: (epoch, val_loss or None, protected, is_best) in save order, epochs increasing.
    """
    epochs = [h[0] for h in history]
    kept = set(epochs if max_to_keep is None else epochs[-max_to_keep:])
    ranked = sorted((h for h in history if h[1] is not None), key=lambda h: h[1])
    if mode == "max":
        ranked.reverse()
    kept |= {h[0] for h in ranked[:keep_best]}
    if keep_every:
        kept |= {e for e in epochs if (e + 1) % keep_every == 0}
    kept |= {h[0] for h in history if h[2]}
    pointer = [h[0] for h in history if h[3]]
    if pointer:
        kept.add(pointer[-1])
    return kept


def random_policy(rng):
    return {
        "max_to_keep": rng.choice([None, 1, 2, 3, 5]),
        "keep_best": rng.choice([0, 1, 2, 3]),
        "mode": rng.choice(["min", "max"]),
        "keep_every": rng.choice([None, None, 2, 3, 5]),
    }


def random_history(rng, length):
    history = []
    for epoch in sorted(rng.sample(range(3 * length), length)):
        value = None if rng.random() < 0.1 else rng.random()
        history.append((epoch, value, rng.random() < 0.05, rng.random() < 0.2))
    return history


def entry(epoch, value, protected):
    return Candidate(
        file=checkpoint_filename(epoch),
        epoch=epoch,
        metrics={} if value is None else {"val_loss": value},
        protected=protected,
    )
