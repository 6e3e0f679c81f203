"""The manifest is read as untrusted input: names stay inside the folder, odd files never hang."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from course_lib.manager import CheckpointManager
from course_lib.manager.files import MANIFEST_NAME
from course_lib.manager.manifest import read_manifest
from course_lib.models import make_mlp
from course_lib.safe_io import CorruptCheckpointError

_common_spec = importlib.util.spec_from_file_location(
    "common", Path(__file__).resolve().parent / "helpers" / "common.py"
)
common = importlib.util.module_from_spec(_common_spec)
_common_spec.loader.exec_module(common)
tiny, mark, weight, _tamper = common.tiny, common.mark, common.weight, common.tamper


ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d.update(pending_delete=["../victim"]),
        lambda d: d["checkpoints"][0].update(file="../victim"),
        lambda d: d["checkpoints"][0].update(files={"../victim": {}}),
        lambda d: d.update(pending_delete=["/etc/victim"]),
    ],
    ids=["pending_delete", "entry_file", "entry_files", "absolute"],
)
def test_names_in_a_tampered_manifest_never_reach_outside_the_folder(
    folder_with_a_checkpoint, change
):
    folder = folder_with_a_checkpoint
    victim = folder.parent / "victim"
    victim.write_text("precious")
    _tamper(folder, change)
    with pytest.raises(CorruptCheckpointError, match="not a plain file name"):
        read_manifest(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        manager = CheckpointManager(folder, max_to_keep=1)
        for epoch in (2, 3):
            manager.save(make_mlp(), None, None, epoch, {"val_loss": 0.4})
    assert victim.read_text() == "precious"
    assert (folder / (MANIFEST_NAME + ".damaged")).exists()


@pytest.mark.parametrize(
    "document",
    [{"checkpoints": "x"}, {"checkpoints": [5]}, {"checkpoints": [], "pending_delete": 5}, []],
)
def test_a_manifest_of_wrong_types_is_reported_as_damaged(tmp_path, document):
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(document))
    with pytest.raises(CorruptCheckpointError, match="manifest"):
        read_manifest(tmp_path)


def _open_in_child(folder: Path) -> subprocess.CompletedProcess:
    script = (
        "import resource, sys, warnings\n"
        "resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))\n"
        "from course_lib.manager.manifest import read_manifest\n"
        "from course_lib.safe_io import CorruptCheckpointError\n"
        "try:\n"
        f"    read_manifest(__import__('pathlib').Path({str(folder)!r}))\n"
        "except CorruptCheckpointError as exc:\n"
        "    print('refused:', exc.problem)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def test_a_manifest_linked_to_an_endless_device_is_refused_at_once(tmp_path):
    (tmp_path / MANIFEST_NAME).symlink_to("/dev/zero")
    result = _open_in_child(tmp_path)
    assert result.returncode == 0 and "not a regular file" in result.stdout, result.stderr


def test_a_manifest_that_is_a_fifo_does_not_block(tmp_path):
    os.mkfifo(tmp_path / MANIFEST_NAME)
    result = _open_in_child(tmp_path)
    assert result.returncode == 0 and "not a regular file" in result.stdout, result.stderr


def test_an_oversized_manifest_is_refused(tmp_path):
    with open(tmp_path / MANIFEST_NAME, "wb") as handle:
        handle.truncate(65 << 20)
    with pytest.raises(CorruptCheckpointError, match="larger than"):
        read_manifest(tmp_path)


def test_a_good_manifest_still_reads(folder_with_a_checkpoint):
    manifest = read_manifest(folder_with_a_checkpoint)
    assert list(manifest.checkpoints) == ["checkpoint_epoch_0001.pth"]
    assert manifest.checkpoints["checkpoint_epoch_0001.pth"].epoch == 1
    assert torch.__version__


@pytest.mark.parametrize("planted", ["best_model.pth", "checkpoint_epoch_0002.pth", MANIFEST_NAME])
def test_a_planted_link_is_replaced_never_written_through(folder_with_a_checkpoint, planted):
    folder = folder_with_a_checkpoint
    outside = folder.parent / "outside.txt"
    outside.write_text("precious")
    link = folder / planted
    if link.exists() or link.is_symlink():
        link.unlink()
    link.symlink_to(outside)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        manager = CheckpointManager(folder, max_to_keep=3)
        manager.save(make_mlp(), None, None, 2, {"val_loss": 0.1}, is_best=True)
    assert outside.read_text() == "precious"
    assert not (folder / "best_model.pth").is_symlink()


@pytest.mark.parametrize(
    "change, problem",
    [
        (lambda d: d.update(version=99), "newer"),
        (lambda d: d.update(version="1"), "version"),
        (lambda d: d["checkpoints"][0].update(protected="no"), "protected"),
        (
            lambda d: next(iter(d["checkpoints"][0]["files"].values())).update(sha256_of="half"),
            "sha256_of",
        ),
    ],
    ids=["newer_version", "version_not_a_number", "protected_not_a_bool", "unknown_sha256_of"],
)
def test_the_version_and_flags_are_checked_too(folder_with_a_checkpoint, change, problem):
    _tamper(folder_with_a_checkpoint, change)
    with pytest.raises(CorruptCheckpointError, match=problem):
        read_manifest(folder_with_a_checkpoint)
