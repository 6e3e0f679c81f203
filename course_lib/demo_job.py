"""A small, complete training job to interrupt and resume (chapter 6.3.3: notebook 03, tests).

The chapter's 10 -> 20 -> 5 MLP with dropout, a shuffling ``DataLoader``, Adam and a step
scheduler, trained by ``course_lib.checkpoint.train_with_checkpoint``, which writes
``DIR/latest.pth`` after every epoch. Dropout and shuffling make the run depend on the RNGs, so
a resumed run matches an uninterrupted one only if the checkpoint restored them.

Command line: ``python -m course_lib.demo_job DIR`` runs it, ``--resume`` continues from
``DIR/latest.pth``, ``--epoch-delay`` pauses between epochs so that another process can kill it
at a chosen point; the last line printed is the history as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from course_lib.checkpoint import LATEST_NAME, PathLike, train_with_checkpoint

__all__ = [
    "demo_training",
    "main",
    "make_demo_job",
    "train_one_epoch",
]


def _make_demo_model(dropout: float = 0.2) -> nn.Sequential:
    """The chapter's 10 -> 20 -> 5 MLP with dropout, so that a resumed run depends on the RNG."""
    return nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Dropout(dropout), nn.Linear(20, 5))


def make_demo_job(seed: int = 0) -> dict[str, Any]:
    """Model, loaders (the training one shuffles), loss, optimizer and scheduler, seeded.

    Everything a run needs, built the same way in every process, as a real training script does
    before it resumes.

    Taught in notebooks/03_checkpoints.ipynb and 03b_resume_in_depth.ipynb, step 4.
    """
    from course_lib.data import make_loaders, make_regression_data
    from course_lib.notebook import seed_everything

    seed_everything(seed)
    model = _make_demo_model()
    train_loader, val_loader = make_loaders(make_regression_data(512, seed=seed), batch_size=32)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=5, gamma=0.5)
    return {
        "model": model,
        "train_loader": train_loader,
        "val_loader": val_loader,
        "criterion": nn.MSELoss(),
        "optimizer": optimizer,
        "scheduler": scheduler,
    }


def train_one_epoch(job: dict[str, Any]) -> float:
    """One epoch of a ``make_demo_job`` job; returns the mean validation loss.

    Trains (``model.train()``, the shuffled loader, one optimizer step per batch), steps the
    scheduler, then validates (``model.eval()``, no gradients). The model stays on the CPU.

    Taught in notebooks/03_checkpoints.ipynb, where the learner's checkpoint wraps it.
    """
    model, criterion, optimizer = job["model"], job["criterion"], job["optimizer"]
    model.train()
    for inputs, targets in job["train_loader"]:
        optimizer.zero_grad()
        criterion(model(inputs), targets).backward()
        optimizer.step()
    job["scheduler"].step()
    model.eval()
    with torch.no_grad():
        losses = [criterion(model(inputs), targets).item() for inputs, targets in job["val_loader"]]
    return sum(losses) / len(losses)


def demo_training(
    checkpoint_dir: PathLike,
    num_epochs: int = 12,
    *,
    resume: bool = False,
    restore_rng: bool = True,
    epoch_delay: float = 0.0,
    seed: int = 0,
    progress: bool = False,
    verbose: bool = False,
) -> tuple[nn.Module, dict[str, list[Any]]]:
    """Run (or, with ``resume=True``, continue from ``latest.pth``) the demo job; return the
    model and the history. ``epoch_delay`` sleeps after each epoch so that another process can
    interrupt it at a chosen point.

    Taught in notebooks/03b_resume_in_depth.ipynb, step 3.
    """
    job = make_demo_job(seed)
    checkpoint_dir = Path(checkpoint_dir)
    model = job.pop("model")
    train = job.pop("train_loader")
    if epoch_delay:
        train = _SlowLoader(train, epoch_delay)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small is fastest on one thread (no contention)
    try:
        history = train_with_checkpoint(
            model,
            train,
            job["val_loader"],
            job["criterion"],
            job["optimizer"],
            job["scheduler"],
            num_epochs,
            checkpoint_dir,
            checkpoint_dir / LATEST_NAME if resume else None,
            progress=progress,
            verbose=verbose,
            restore_rng=restore_rng,
        )
    finally:
        torch.set_num_threads(threads)
    return model, history


class _SlowLoader:
    """Wraps a DataLoader and pauses before each epoch after the first, to be interruptible."""

    def __init__(self, loader: DataLoader, delay: float) -> None:
        self.loader, self.delay, self.epochs = loader, delay, 0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        if self.epochs:
            time.sleep(self.delay)
        self.epochs += 1
        return iter(self.loader)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: run or resume the demo job, print one JSON line with the history."""
    parser = argparse.ArgumentParser(prog="python -m course_lib.demo_job", description=__doc__)
    parser.add_argument("checkpoint_dir", type=Path)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--resume", action="store_true", help="continue from latest.pth")
    parser.add_argument("--no-rng", action="store_true", help="resume without restoring RNGs")
    parser.add_argument("--epoch-delay", type=float, default=0.0, help="seconds between epochs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    _, history = demo_training(
        args.checkpoint_dir,
        args.epochs,
        resume=args.resume,
        restore_rng=not args.no_rng,
        epoch_delay=args.epoch_delay,
        seed=args.seed,
        verbose=True,
    )
    print(json.dumps(history))
    return 0


if __name__ == "__main__":
    sys.exit(main())
