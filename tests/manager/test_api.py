"""``manager.api``: the chapter's calls, ordering, the manifest they write, formats, async saves.

Mirrors course_lib/manager/: retention in test_retention.py, the manifest's schema in
test_manifest.py, repairs on open in test_reconcile.py, kills, full disks and damaged files in
test_faults.py, readers under pruning writers in test_readers.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import threading
import time
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import course_lib.manager.files as checkpoint_files_module
import course_lib.manager.reconcile as reconcile_module
from course_lib.checkpoint import checkpoint_filename
from course_lib.display import format_table
from course_lib.manager import CheckpointManager
from course_lib.manager.files import file_sha256
from course_lib.models import make_mlp

_common_spec = importlib.util.spec_from_file_location(
    "common", Path(__file__).resolve().parent / "helpers" / "common.py"
)
common = importlib.util.module_from_spec(_common_spec)
_common_spec.loader.exec_module(common)
tiny, mark, weight, _tamper = common.tiny, common.mark, common.weight, common.tamper


HELPERS = Path(__file__).resolve().parent / "helpers"


def _helper(name):
    spec = importlib.util.spec_from_file_location(name, HELPERS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


chapter_manager = _helper("chapter_manager")
retention_model = _helper("retention_model")
reference_kept = retention_model.reference_kept
random_policy = retention_model.random_policy
random_history = retention_model.random_history


def manifest_of(directory):
    return json.loads((Path(directory) / "manifest.json").read_text())


def checkpoint_files(directory):
    return {p.name for p in Path(directory).iterdir() if p.name.startswith("checkpoint_epoch_")}


# ----------------------------------------------------------------------------------------------
# The chapter's usage, as written
# ----------------------------------------------------------------------------------------------


def test_the_chapters_usage_loop_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    model = make_mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=30)
    x, y = torch.randn(64, 10), torch.randn(64, 5)
    x_val, y_val = torch.randn(32, 10), torch.randn(32, 5)

    def train_one_epoch():
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        scheduler.step()
        return loss.item()

    def validate():
        with torch.no_grad():
            return nn.functional.mse_loss(model(x_val), y_val).item()

    best_val_loss = float("inf")  # the chapter uses it without defining it first

    # --- the chapter's code, as written ---
    manager = CheckpointManager("checkpoints", max_to_keep=5)

    for epoch in range(100):
        train_loss = train_one_epoch()
        val_loss = validate()

        is_best = val_loss < best_val_loss
        if is_best:
            best_val_loss = val_loss

        manager.save(
            model,
            optimizer,
            scheduler,
            epoch,
            metrics={"train_loss": train_loss, "val_loss": val_loss},
            is_best=is_best,
        )

    checkpoint = manager.load_latest(model, optimizer, scheduler)
    start_epoch = checkpoint["epoch"] + 1
    # --- end of the chapter's code ---

    assert start_epoch == 100
    assert scheduler.last_epoch == 100
    latest = {f"checkpoint_epoch_{e:04d}.pth" for e in range(95, 100)}
    assert latest <= checkpoint_files("checkpoints")
    assert len(checkpoint_files("checkpoints")) <= 6  # 5 latest + the best by val_loss
    best = manager.load_best(model)
    assert best["metrics"]["val_loss"] == pytest.approx(best_val_loss)
    assert checkpoint["best_metric"] == pytest.approx(best_val_loss)
    rows = manager.list_checkpoints()
    assert [r["epoch"] for r in rows] == sorted(r["epoch"] for r in rows)
    assert manager.load(rows[-1]["file"], model)["epoch"] == 99  # a bare name works too


def test_save_returns_the_path_and_load_restores_everything(tmp_path):
    model, optimizer = tiny()
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    manager = CheckpointManager(tmp_path)
    mark(model, 3)
    optimizer.step()
    scheduler.step()
    path = manager.save(model, optimizer, scheduler, 7, {"val_loss": 0.25})
    assert path == tmp_path / "checkpoint_epoch_0007.pth"
    expected_rand = torch.rand(3)
    model2, optimizer2 = tiny(seed=1)
    scheduler2 = torch.optim.lr_scheduler.StepLR(optimizer2, step_size=1, gamma=0.5)
    torch.manual_seed(123)
    checkpoint = manager.load(path, model2, optimizer2, scheduler2)
    assert checkpoint["epoch"] == 7 and checkpoint["metrics"] == {"val_loss": 0.25}
    assert isinstance(checkpoint["timestamp"], str)
    assert weight(model2) == 3.0
    assert scheduler2.state_dict() == scheduler.state_dict()
    assert torch.equal(torch.rand(3), expected_rand)  # the RNG is where it was at save time


# ----------------------------------------------------------------------------------------------
# Ordering by epoch, never by file times
# ----------------------------------------------------------------------------------------------


def test_the_chapters_manager_orders_by_ctime_and_gets_it_wrong(tmp_path, capsys):
    """What notebook 08 shows live: one chmod and the chapter's manager loses track."""
    model, optimizer = tiny()
    old = chapter_manager.CheckpointManager(str(tmp_path), max_to_keep=3)
    for epoch in range(3):
        mark(model, epoch)
        old.save(model, optimizer, None, epoch, {"val_loss": 1.0})
        time.sleep(0.03)  # file times tick coarsely (a few ms): keep the ctimes distinct
    os.chmod(tmp_path / "checkpoint_epoch_0000.pth", 0o644)  # touches the ctime
    assert old.load_latest(model)["epoch"] == 0
    mark(model, 3)
    old.save(model, optimizer, None, 3, {"val_loss": 1.0})
    assert "checkpoint_epoch_0001.pth" not in checkpoint_files(tmp_path)  # epoch 1 deleted
    assert "checkpoint_epoch_0000.pth" in checkpoint_files(tmp_path)  # the oldest survives


def test_ours_orders_by_epoch_whatever_the_file_times(tmp_path):
    model, optimizer = tiny()
    manager = CheckpointManager(tmp_path, max_to_keep=3, keep_best=0)
    for epoch in range(3):
        mark(model, epoch)
        manager.save(model, optimizer, None, epoch, {"val_loss": 1.0})
    oldest = tmp_path / "checkpoint_epoch_0000.pth"
    os.chmod(oldest, 0o644)
    future = time.time() + 3600
    os.utime(oldest, (future, future))
    assert manager.load_latest(model)["epoch"] == 2
    assert weight(model) == 2.0
    mark(model, 3)
    manager.save(model, optimizer, None, 3, {"val_loss": 1.0})
    assert checkpoint_files(tmp_path) == {f"checkpoint_epoch_{e:04d}.pth" for e in (1, 2, 3)}


def test_steps_order_within_an_epoch(tmp_path):
    model, optimizer = tiny()
    manager = CheckpointManager(tmp_path, max_to_keep=None)
    for step in (900, 100, 500):
        mark(model, step)
        manager.save(model, optimizer, None, 2, {"val_loss": 1.0}, step=step)
    assert checkpoint_filename(2, 500) == "checkpoint_epoch_0002_step_00000500.pth"
    assert [r["step"] for r in manager.list_checkpoints()] == [100, 500, 900]
    assert manager.load_latest(model)["step"] == 900 and weight(model) == 900.0


def test_saving_an_epoch_again_replaces_it(tmp_path):
    model, optimizer = tiny()
    manager = CheckpointManager(tmp_path)
    for value in (1, 2):
        mark(model, value)
        manager.save(model, optimizer, None, 0, {"val_loss": float(value)})
    rows = manager.list_checkpoints()
    assert len(rows) == 1 and rows[0]["val_loss"] == 2.0
    assert weight(model) == 2.0 and manager.load_latest(model)["metrics"]["val_loss"] == 2.0


# ----------------------------------------------------------------------------------------------
# The manifest
# ----------------------------------------------------------------------------------------------


def test_the_manifest_records_each_checkpoint(tmp_path):
    model, optimizer = tiny()
    manager = CheckpointManager(tmp_path)
    manager.save(model, optimizer, None, 4, {"val_loss": 0.5, "acc": 0.9})
    (entry,) = manifest_of(tmp_path)["checkpoints"]
    path = tmp_path / "checkpoint_epoch_0004.pth"
    assert entry["file"] == path.name and entry["epoch"] == 4
    assert entry["metrics"] == {"val_loss": 0.5, "acc": 0.9}
    assert entry["size"] == path.stat().st_size
    assert entry["sha256"] == entry["files"][path.name]["sha256"] == file_sha256(path, "zip")
    assert entry["files"][path.name]["sha256_of"] == "zip"
    assert entry["torch_version"] == torch.__version__
    assert entry["course_version"] and entry["time"].startswith("20")


def test_list_checkpoints_never_opens_a_checkpoint(tmp_path, monkeypatch):
    model, optimizer = tiny()
    manager = CheckpointManager(tmp_path, max_to_keep=3)
    for epoch in range(4):
        manager.save(model, optimizer, None, epoch, {"val_loss": 1.0 / (epoch + 1)}, is_best=True)

    def refuse(*args, **kwargs):
        raise AssertionError("list_checkpoints unpickled a file")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(checkpoint_files_module, "safe_load", refuse)
    monkeypatch.setattr(reconcile_module, "safe_load", refuse)
    rows = manager.list_checkpoints()
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[-1]["best"] is True and "latest" in rows[-1]["kept_by"]
    table = format_table(rows, ["file", "epoch", "val_loss", "kept_by"])
    assert table.splitlines()[2].split() == ["checkpoint_epoch_0001.pth", "1", "0.5000", "latest"]


# ----------------------------------------------------------------------------------------------
# Retention: randomized sequences against a from-scratch model of the policies
# ----------------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_retention_on_real_files_with_a_restart(tmp_path):
    """Real saves; the manager is replaced by a fresh one (a restart) half-way through."""
    rng = random.Random(7)
    model, optimizer = tiny()
    for run in range(24):
        policy = random_policy(rng)
        history = random_history(rng, rng.randint(2, 12))
        directory = tmp_path / f"run{run}"
        manager = CheckpointManager(directory, best_metric="val_loss", **policy)
        restart_at = rng.randrange(len(history))
        for i, (epoch, value, protected, is_best) in enumerate(history):
            if i == restart_at:
                manager = CheckpointManager(directory, best_metric="val_loss", **policy)
            mark(model, epoch)
            metrics = {"train_loss": 1.0} if value is None else {"val_loss": value}
            manager.save(model, optimizer, None, epoch, metrics, is_best=is_best, protect=protected)
            expected = {checkpoint_filename(e) for e in reference_kept(history[: i + 1], **policy)}
            assert checkpoint_files(directory) == expected, (policy, history[: i + 1])
            assert {c["file"] for c in manifest_of(directory)["checkpoints"]} == expected
        assert manager.load_latest(model)["epoch"] == history[-1][0]
        pointer = [h[0] for h in history if h[3]]
        if pointer:
            best = directory / "best_model.pth"
            assert os.path.samefile(best, directory / checkpoint_filename(pointer[-1]))
            assert manager.load_best(model)["epoch"] == pointer[-1]
        assert not [p for p in directory.iterdir() if p.name.endswith(".tmp")]


def test_the_best_metric_so_far_outlives_its_checkpoint(tmp_path):
    """What resuming needs to decide "is this the best model?" (the chapter forgot it)."""
    model, optimizer = tiny()
    manager = CheckpointManager(tmp_path, max_to_keep=1, keep_best=0)
    for epoch, val_loss in enumerate([0.3, 0.1, 0.5, 0.4]):
        manager.save(model, optimizer, None, epoch, {"val_loss": val_loss})
    assert [r["epoch"] for r in manager.list_checkpoints()] == [3]
    assert CheckpointManager(tmp_path).load_latest(model)["best_metric"] == 0.1


def test_best_by_metric_without_is_best(tmp_path):
    model, optimizer = tiny()
    manager = CheckpointManager(tmp_path, max_to_keep=2, best_metric="acc", mode="max")
    for epoch, acc in enumerate([0.5, 0.9, 0.6, 0.7, 0.8]):
        mark(model, epoch)
        manager.save(model, optimizer, None, epoch, {"acc": acc})
    assert [r["epoch"] for r in manager.list_checkpoints()] == [1, 3, 4]
    assert manager.load_best(model)["epoch"] == 1 and weight(model) == 1.0


# ----------------------------------------------------------------------------------------------
# Reconciling the folder on start
# ----------------------------------------------------------------------------------------------


def test_two_managers_on_one_folder_take_turns(tmp_path):
    """Without the lock and the re-read of the manifest, one writer drops the other's entries."""
    errors = []

    def writer(parity):
        try:
            model, optimizer = tiny(seed=parity)
            manager = CheckpointManager(tmp_path, max_to_keep=None)
            for epoch in range(parity, 30, 2):
                mark(model, epoch)
                manager.save(model, optimizer, None, epoch, {"val_loss": 1.0})
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(p,)) for p in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    manager = CheckpointManager(tmp_path, max_to_keep=None)
    assert [r["epoch"] for r in manager.list_checkpoints()] == list(range(30))
    model, _ = tiny()
    for row in manager.list_checkpoints():
        assert manager.load(row["file"], model, restore_rng=False)["epoch"] == row["epoch"]
        assert weight(model) == row["epoch"]


# ----------------------------------------------------------------------------------------------
# Formats and asynchronous saving
# ----------------------------------------------------------------------------------------------


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(5, 3)
        self.out = nn.Linear(3, 5, bias=False)
        self.out.weight = self.embed.weight


def test_safetensors_format(tmp_path):
    torch.manual_seed(0)
    model = Tied()
    optimizer = torch.optim.Adam(model.parameters())
    model.out(torch.randn(2, 3)).sum().backward()
    optimizer.step()
    manager = CheckpointManager(tmp_path, format="safetensors")
    path = manager.save(model, optimizer, None, 0, {"val_loss": 1.0}, is_best=True)
    assert path.name == "checkpoint_epoch_0000.safetensors"
    assert (tmp_path / "checkpoint_epoch_0000.train_state.pth").exists()
    from safetensors.torch import load_file

    assert set(load_file(path)) == {"embed.weight", "out.weight"}
    torch.manual_seed(1)
    model2 = Tied()
    optimizer2 = torch.optim.Adam(model2.parameters())
    checkpoint = manager.load_latest(model2, optimizer2)
    assert checkpoint["epoch"] == 0
    assert torch.equal(model2.embed.weight, model.embed.weight)
    assert model2.out.weight is model2.embed.weight  # still tied
    assert optimizer2.state_dict()["state"][0]["step"] == 1
    assert manager.load_best(model2)["epoch"] == 0
    (row,) = manager.list_checkpoints()
    assert (
        row["size"]
        == path.stat().st_size + (tmp_path / "checkpoint_epoch_0000.train_state.pth").stat().st_size
    )


def test_async_save_writes_a_snapshot(tmp_path):
    model, optimizer = tiny()
    with CheckpointManager(tmp_path, async_save=True) as manager:
        mark(model, 1)
        manager.save(model, optimizer, None, 0, {"val_loss": 1.0})
        mark(model, 99)  # the training loop goes on while the thread writes
    assert manager.load_latest(model)["epoch"] == 0
    assert weight(model) == 1.0


def test_async_saves_reuse_their_buffers_without_mixing_epochs(tmp_path):
    model, optimizer = tiny()
    manager = CheckpointManager(tmp_path, max_to_keep=None, async_save=True)
    for epoch in range(4):
        mark(model, epoch)
        optimizer.step()
        manager.save(model, optimizer, None, epoch, {"val_loss": 1.0})
    manager.wait()
    buffers = {id(t) for t in manager._background.staging.values()}
    mark(model, 4)
    manager.save(model, optimizer, None, 4, {"val_loss": 1.0})
    manager.wait()
    after = {id(t) for t in manager._background.staging.values()}
    assert after == buffers  # reused, not reallocated
    for epoch in range(5):
        manager.load(checkpoint_filename(epoch), model, restore_rng=False)
        assert weight(model) == epoch


def test_async_save_has_one_save_in_flight(tmp_path, monkeypatch):
    model, optimizer = tiny()
    manager = CheckpointManager(tmp_path, async_save=True)
    release = threading.Event()
    real = checkpoint_files_module.torch_save

    def slow(obj, path):
        release.wait(timeout=30)
        real(obj, path)

    monkeypatch.setattr(checkpoint_files_module, "torch_save", slow)
    manager.save(model, optimizer, None, 0, {"val_loss": 1.0})  # returns at once
    second = threading.Thread(
        target=manager.save, args=(model, optimizer, None, 1, {"val_loss": 1.0})
    )
    second.start()
    second.join(timeout=0.5)
    assert second.is_alive(), "a second save started while the first was still writing"
    assert not (tmp_path / "checkpoint_epoch_0000.pth").exists()
    release.set()
    second.join(timeout=30)
    manager.wait()
    assert [r["epoch"] for r in manager.list_checkpoints()] == [0, 1]


def test_no_warnings_on_a_clean_folder(tmp_path):
    model, optimizer = tiny()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        manager = CheckpointManager(tmp_path)
        manager.save(model, optimizer, None, 0, {"val_loss": 1.0}, is_best=True)
        CheckpointManager(tmp_path).load_latest(model)
