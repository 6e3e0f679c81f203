"""A training job that uses every RNG the checkpoint captures, to test exact resume in a fresh process.

Python's ``random`` picks which batches get flipped, NumPy adds input noise, torch shuffles the
DataLoader and draws dropout masks; the model has BatchNorm (buffers), the optimizer has moments,
the scheduler has a position and the GradScaler has a scale. Leaving any of these out of a
checkpoint makes the resumed run differ from the uninterrupted one.

    python resume_job.py DIR --epochs N [--stop-after K] [--resume] [--no-rng]

writes ``DIR/ckpt.pth`` after each epoch (the last one is what a killed run leaves), and at the
end ``DIR/final.pth`` (the weights) and prints the loss history as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from course_lib.checkpoint import apply_checkpoint, build_checkpoint
from course_lib.data import make_image_data
from course_lib.models import SmallCNN
from course_lib.notebook import seed_everything
from course_lib.safe_io import safe_load, safe_save


def run(
    out: Path,
    epochs: int,
    *,
    stop_after: int | None = None,
    resume: bool = False,
    rng: bool = True,
    skip_rng: tuple[str, ...] = (),
) -> tuple[nn.Module, list[float]]:
    """Train (or resume) and return the model and per-epoch losses; ``skip_rng`` names RNGs
    ('python', 'numpy', 'torch') whose saved state is not restored."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        seed_everything(0)
        model = SmallCNN(num_classes=4, dropout=0.3)
        data = make_image_data(96, num_classes=4, image_size=16, seed=1)
        loader = torch.utils.data.DataLoader(data, batch_size=16, shuffle=True)
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
        scaler = torch.amp.GradScaler("cpu", growth_interval=3)
        criterion = nn.CrossEntropyLoss()
        start, history = 0, []
        ckpt_path = out / "ckpt.pth"
        if resume:
            checkpoint = safe_load(ckpt_path, map_location="cpu")
            for name in skip_rng:
                del checkpoint["rng"][name]
            apply_checkpoint(
                checkpoint, model, optimizer, scheduler, scaler=scaler, restore_rng=rng
            )
            start = checkpoint["epoch"] + 1
            history = list(checkpoint["extra"]["history"])
        for epoch in range(start, epochs):
            model.train()
            total = 0.0
            for images, labels in loader:
                if random.random() < 0.5:
                    images = images.flip(-1)
                images = images + torch.from_numpy(
                    np.random.normal(0.0, 0.1, size=images.shape).astype(np.float32)
                )
                optimizer.zero_grad()
                loss = criterion(model(images), labels)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                total += loss.item()
            scheduler.step()
            history.append(total / len(loader))
            safe_save(
                build_checkpoint(
                    model,
                    optimizer,
                    scheduler,
                    epoch=epoch,
                    scaler=scaler,
                    metrics={"loss": np.float32(history[-1])},
                    extra={"history": history},
                ),
                ckpt_path,
            )
            if stop_after is not None and epoch + 1 == stop_after:
                break
        return model, history
    finally:
        torch.set_num_threads(threads)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--stop-after", type=int)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--no-rng", action="store_true")
    args = parser.parse_args()
    model, history = run(
        args.out, args.epochs, stop_after=args.stop_after, resume=args.resume, rng=not args.no_rng
    )
    torch.save(model.state_dict(), args.out / "final.pth")
    print(json.dumps(history))
    return 0


if __name__ == "__main__":
    sys.exit(main())
