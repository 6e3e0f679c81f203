"""Asks a notebook of exercise 4 the judge's questions (runs inside the sandbox, untrusted)."""

import argparse
import datetime
from pathlib import Path

import numpy as np
import torch


def _checkpoint(seed):
    """A checkpoint as the chapter's 2019-era code wrote them: full of NumPy and Python objects."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    return {
        "epoch": int(rng.integers(1, 100)),
        "model_state_dict": torch.nn.Linear(3, 2).state_dict(),
        "loss": np.float32(rng.random()),
        "best_loss": np.float64(rng.random()),
        "history": rng.random(int(rng.integers(3, 9))).astype(np.float32),
        "steps": [np.int64(rng.integers(0, 1000)) for _ in range(3)],
        "numpy_rng": np.random.RandomState(seed).get_state(),
        "saved_at": datetime.datetime(
            2026, int(rng.integers(1, 13)), int(rng.integers(1, 29)), 12, 30
        ),
        "config": argparse.Namespace(lr=float(rng.random()), batch_size=int(rng.integers(8, 64))),
        "data_dir": Path(f"/data/run_{seed}"),
    }


def answer(questions, ask):
    for question in questions:
        qid = question["id"]
        ok, converted = ask.call(qid, "make_weights_only_loadable", _checkpoint(question["seed"]))
        if not ok:
            continue
        folder = ask.folder(qid)
        ask.run(f"{qid}.whole", torch.save, converted, folder / "checkpoint.pt")
        if isinstance(converted, dict):
            # Each entry in a file of its own: one wrong entry costs only its own check.
            for key, value in converted.items():
                if isinstance(key, str) and key.isidentifier():
                    ask.run(f"{qid}.{key}", torch.save, value, folder / f"{key}.pt")
