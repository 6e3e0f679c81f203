"""Asks a notebook of exercise 1 the judge's questions (runs inside the sandbox, untrusted)."""

from os import chmod, utime
from time import sleep, time

import torch

# Bound when this module is imported, before the notebook's cells run: a cell that replaces
# os.utime, os.chmod or torch.save does not change what the steps below do.
_torch_save = torch.save


def _state(epoch, seed):
    generator = torch.Generator().manual_seed(seed + epoch)
    return {"epoch": epoch, "weights": torch.randn(3, generator=generator)}


class _Payload:
    """Unpickling this runs code: what a malicious checkpoint does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('payload ran')",))


def _age_oldest(folder):
    files = sorted(p for p in folder.iterdir() if p.suffix == ".pth") if folder.is_dir() else []
    if not files:
        return
    oldest = files[0]
    sleep(0.05)  # file times tick coarsely: make the change visible
    future = time() + 3600
    utime(oldest, (future, future))
    chmod(oldest, 0o644)  # changes the ctime, as the chapter's manager relied on


def answer(questions, ask):
    for question in questions:
        qid, seed = question["id"], question["seed"]
        folder = ask.folder(qid) / "checkpoints"
        ok, manager = ask.call(
            f"{qid}.init", "SimpleCheckpointManager", folder, max_to_keep=question["max_to_keep"]
        )
        if not ok:
            continue
        for step, (operation, *args) in enumerate(question["steps"]):
            key = f"{qid}.{step}"
            if operation == "save":
                ask.run(key, manager.save, _state(args[0], seed), args[0])
            elif operation == "save_unpicklable":
                ask.run(key, manager.save, {"epoch": args[0], "bad": lambda: None}, args[0])
            elif operation == "epochs":
                ok, epochs = ask.run(key, manager.epochs)
                if ok:
                    ask.save_json(key, [repr(e) for e in epochs])
            elif operation == "load_latest":
                ok, loaded = ask.run(key, manager.load_latest)
                if ok:
                    epoch = loaded.get("epoch") if isinstance(loaded, dict) else None
                    ask.save_json(key, {"epoch": repr(epoch)})
                    weights = loaded.get("weights") if isinstance(loaded, dict) else None
                    if isinstance(weights, torch.Tensor):
                        ask.save_tensors(key, {"weights": weights})
            elif operation == "age_oldest":
                _age_oldest(folder)
            elif operation == "plant_payload":
                epoch, marker = args
                payload = {"epoch": epoch, "x": _Payload(str(ask.folder(qid) / marker))}
                folder.mkdir(parents=True, exist_ok=True)
                _torch_save(payload, folder / f"checkpoint_epoch_{epoch:04d}.pth")
