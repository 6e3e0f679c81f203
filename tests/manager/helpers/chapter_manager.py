"""The chapter's CheckpointManager (section 6.3.8), as written, translated comments only.

Used by the tests to make a folder the way the chapter's manager does, and to show its flaws.
"""

import glob
import os
from datetime import datetime

import torch


class CheckpointManager:
    """Checkpoint manager"""

    def __init__(self, checkpoint_dir, max_to_keep=5):
        self.checkpoint_dir = checkpoint_dir
        self.max_to_keep = max_to_keep
        os.makedirs(checkpoint_dir, exist_ok=True)

    def save(self, model, optimizer, scheduler, epoch, metrics, is_best=False, filename=None):
        checkpoint = {
            "epoch": epoch,
            "model_state_dict": model.state_dict(),
            "optimizer_state_dict": optimizer.state_dict(),
            "scheduler_state_dict": scheduler.state_dict() if scheduler else None,
            "metrics": metrics,
            "timestamp": datetime.now().isoformat(),
        }
        if filename is None:
            filename = f"checkpoint_epoch_{epoch:04d}.pth"
        path = os.path.join(self.checkpoint_dir, filename)
        torch.save(checkpoint, path)
        print(f"Saved checkpoint: {path}")
        if is_best:
            best_path = os.path.join(self.checkpoint_dir, "best_model.pth")
            torch.save(checkpoint, best_path)
            print(f"Updated best model: {best_path}")
        self._cleanup()
        return path

    def load(self, path, model, optimizer=None, scheduler=None, device="cpu"):
        checkpoint = torch.load(path, map_location=device)
        model.load_state_dict(checkpoint["model_state_dict"])
        if optimizer and "optimizer_state_dict" in checkpoint:
            optimizer.load_state_dict(checkpoint["optimizer_state_dict"])
        if scheduler and checkpoint.get("scheduler_state_dict"):
            scheduler.load_state_dict(checkpoint["scheduler_state_dict"])
        print(f"Loaded checkpoint: {path}")
        print(f"  Epoch: {checkpoint['epoch']}")
        print(f"  Metrics: {checkpoint.get('metrics', 'N/A')}")
        return checkpoint

    def load_best(self, model, optimizer=None, scheduler=None, device="cpu"):
        best_path = os.path.join(self.checkpoint_dir, "best_model.pth")
        if os.path.exists(best_path):
            return self.load(best_path, model, optimizer, scheduler, device)
        else:
            raise FileNotFoundError("best model does not exist")

    def load_latest(self, model, optimizer=None, scheduler=None, device="cpu"):
        checkpoints = glob.glob(os.path.join(self.checkpoint_dir, "checkpoint_epoch_*.pth"))
        if not checkpoints:
            raise FileNotFoundError("no checkpoint found")
        latest = max(checkpoints, key=os.path.getctime)
        return self.load(latest, model, optimizer, scheduler, device)

    def _cleanup(self):
        checkpoints = glob.glob(os.path.join(self.checkpoint_dir, "checkpoint_epoch_*.pth"))
        if len(checkpoints) > self.max_to_keep:
            checkpoints.sort(key=os.path.getctime)
            for ckpt in checkpoints[: -self.max_to_keep]:
                os.remove(ckpt)
                print(f"Deleted old checkpoint: {ckpt}")

    def list_checkpoints(self):
        checkpoints = glob.glob(os.path.join(self.checkpoint_dir, "*.pth"))
        for ckpt in sorted(checkpoints):
            info = torch.load(ckpt, map_location="cpu")
            print(f"{os.path.basename(ckpt)}:")
            print(f"  Epoch: {info.get('epoch', 'N/A')}")
            print(f"  Timestamp: {info.get('timestamp', 'N/A')}")
