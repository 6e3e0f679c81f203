"""A checkpoint folder's ``manifest.json`` (chapter 6.3.8): what is committed, with checksums.

A checkpoint counts as *committed* once the manifest (written atomically) lists it with the
size and SHA-256 of each of its files; a file the manifest does not list is ignored. The
manifest also records the ``best_model`` pointer, files still to delete (``pending_delete``)
and the best metric value so far. Here: reading and writing it, its entries, checking files
against an entry, the ``best_model`` hard links, and the lock that makes two managers on one
folder take turns.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import stat
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import torch

from course_lib.checkpoint_files import (
    BEST_STEM,
    PRIMARY_PATTERN,
    SIDECAR_SUFFIX,
    sha256_file,
    sidecar_name,
)
from course_lib.retention import order_key
from course_lib.safe_io import (
    CheckpointError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    ForeignFileError,
    atomic_write,
    safe_load,
)

try:  # POSIX; on Windows two managers on one folder are not serialised
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]


class CheckpointLockTimeoutError(CheckpointError):
    """The folder's lock was held by another process for longer than the timeout."""


MANIFEST_NAME = "manifest.json"
LOCK_NAME = ".manager.lock"
MANIFEST_VERSION = 1


# ----------------------------------------------------------------------------------------------
# The document
# ----------------------------------------------------------------------------------------------


def empty_manifest() -> dict[str, Any]:
    """The manifest of a folder with no checkpoint yet."""
    return {
        "version": MANIFEST_VERSION,
        "checkpoints": {},
        "best": None,
        "pending_delete": [],
        "best_metric": None,
    }


MANIFEST_LIMIT_BYTES = 64 << 20  # about 200,000 checkpoints; a bigger one is not ours


def _plain_name(name: object) -> str:
    """A name read from the manifest, if it names a file directly inside the folder."""
    if (
        not isinstance(name, str)
        or name in ("", ".", "..")
        or "/" in name
        or "\\" in name
        or "\0" in name
    ):
        raise ValueError(f"{name!r} is not a plain file name inside the folder")
    return name


def _read_manifest_text(path: Path) -> str | None:
    """The manifest's text: a regular file of bounded size, never through a link, never blocking."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:  # ELOOP: a symbolic link
        raise CorruptCheckpointError(
            path,
            f"the manifest is not a regular file ({os.strerror(exc.errno or 0)}).",
            MANIFEST_FIX,
        ) from None
    with os.fdopen(descriptor, "rb") as handle:
        status = os.fstat(handle.fileno())
        if not stat.S_ISREG(status.st_mode):
            raise CorruptCheckpointError(
                path, "the manifest is not a regular file (a FIFO, device or folder).", MANIFEST_FIX
            )
        if status.st_size > MANIFEST_LIMIT_BYTES:
            raise CorruptCheckpointError(
                path,
                f"the manifest is larger than {MANIFEST_LIMIT_BYTES >> 20} MB "
                f"({status.st_size} bytes): not one this course wrote.",
                MANIFEST_FIX,
            )
        data = handle.read(MANIFEST_LIMIT_BYTES + 1)
    return data.decode("utf-8")


MANIFEST_FIX = (
    "open a CheckpointManager on the folder with write access: it keeps the damaged file as "
    "manifest.json.damaged and rebuilds the manifest from the checkpoints."
)


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest as ``{'checkpoints': {file: entry}, 'best', 'pending_delete', ...}``.

    ``None`` if there is none; a ``CorruptCheckpointError`` if it is not a regular file of
    bounded size, cannot be parsed, or names a file outside the folder (every name in it is
    checked to be a plain file name: a tampered manifest must not make a manager delete or
    overwrite anything outside its folder).
    """
    path = folder / MANIFEST_NAME
    try:
        text = _read_manifest_text(path)
        if text is None:
            return None
        raw = json.loads(text)
        if not isinstance(raw, dict) or not isinstance(raw.get("checkpoints"), list):
            raise TypeError("not an object with a list of 'checkpoints'")
        entries = {}
        for entry in raw["checkpoints"]:
            if not isinstance(entry, dict):
                raise TypeError("a checkpoint entry is not an object")
            files = entry.get("files")
            if files is not None and not isinstance(files, dict):
                raise TypeError("an entry's 'files' is not an object")
            for name in [entry.get("file"), *(files or {})]:
                _plain_name(name)
            entries[str(entry["file"])] = dict(entry)
        best = raw.get("best")
        if best is not None and not isinstance(best, dict):
            raise TypeError("'best' is not an object")
        if best is not None:
            best_files = best.get("files") or {}
            if not isinstance(best_files, dict):
                raise TypeError("'best' files is not an object")
            for name, record in best_files.items():
                _plain_name(name)
                if isinstance(record, dict) and record.get("source_file") is not None:
                    _plain_name(record["source_file"])
            if best.get("source") is not None:
                _plain_name(best["source"])
        pending_raw = raw.get("pending_delete", [])
        if not isinstance(pending_raw, list):
            raise TypeError("'pending_delete' is not a list")
        pending = [_plain_name(n) for n in pending_raw]
        best_metric = raw.get("best_metric")
        if best_metric is not None and not isinstance(best_metric, dict):
            raise TypeError("'best_metric' is not an object")
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise CorruptCheckpointError(
            path, f"the manifest is damaged ({type(exc).__name__}: {exc}).", MANIFEST_FIX
        ) from None
    return {
        "version": raw.get("version"),
        "checkpoints": entries,
        "best": best,
        "pending_delete": pending,
        "best_metric": best_metric,
    }


def read_manifest_or_empty(folder: Path) -> dict[str, Any]:
    """``read_manifest(folder)``, or an empty manifest if the folder has none."""
    manifest = read_manifest(folder)
    return empty_manifest() if manifest is None else manifest


def write_manifest(folder: Path, manifest: Mapping[str, Any]) -> None:
    """Write ``folder/manifest.json`` atomically: this write is what commits a checkpoint."""
    ordered = sorted(manifest["checkpoints"].values(), key=order_key)
    document = {
        "version": MANIFEST_VERSION,
        "writer": "course_lib.manager.CheckpointManager",
        "checkpoints": ordered,
        "best": manifest.get("best"),
        "pending_delete": list(manifest.get("pending_delete", [])),
    }
    # One checkpoint per line: readable, and json's fast C encoder (indent= disables it).
    rows = ",\n  ".join(json.dumps(entry) for entry in ordered)
    text = (
        f'{{"version": {MANIFEST_VERSION}, "writer": {json.dumps(document["writer"])},\n'
        f' "checkpoints": [\n  {rows}\n ],\n'
        f' "best": {json.dumps(document["best"])},\n'
        f' "best_metric": {json.dumps(manifest.get("best_metric"))},\n'
        f' "pending_delete": {json.dumps(document["pending_delete"])}}}\n'
    )
    atomic_write(folder / MANIFEST_NAME, lambda temp: temp.write_text(text), follow_symlinks=False)


class FolderLock:
    """``with FolderLock(folder):`` holds ``folder/.manager.lock`` (``fcntl.flock``).

    One manager at a time commits or reconciles, so two on one folder take turns. Creating it
    opens the lock file, which raises ``OSError`` in a folder that cannot be written. With a
    ``timeout`` (seconds), a lock held longer than that (by a stopped or hung process) raises a
    ``CheckpointLockTimeoutError`` instead of waiting for ever.
    """

    def __init__(self, folder: Path, timeout: float | None = None) -> None:
        self._path = folder / LOCK_NAME
        self._timeout = timeout
        self._handle = open(self._path, "a+b")  # noqa: SIM115 (closed by __exit__)

    def __enter__(self) -> None:
        try:
            if fcntl is None:
                return
            if self._timeout is None:
                fcntl.flock(self._handle.fileno(), fcntl.LOCK_EX)
                return
            deadline = time.monotonic() + self._timeout
            while True:
                try:
                    fcntl.flock(self._handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise CheckpointLockTimeoutError(
                            self._path,
                            f"another process holds the folder's lock for more than "
                            f"{self._timeout:g} s (a writer that is stopped, hung, or saving "
                            "a very large checkpoint).",
                            f"find it (fuser {self._path}), then resume or end it; or pass a "
                            "longer lock_timeout= to CheckpointManager.",
                        ) from None
                    time.sleep(0.05)
        except BaseException:
            self._handle.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if fcntl is not None:
                fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
        finally:
            self._handle.close()


# ----------------------------------------------------------------------------------------------
# Entries
# ----------------------------------------------------------------------------------------------


def files_of(entry: Mapping[str, Any]) -> list[str]:
    """The files of one checkpoint entry (one, or the weights and their sidecar)."""
    return list((entry.get("files") or {entry["file"]: None}).keys())


def tracked_files(manifest: Mapping[str, Any]) -> set[str]:
    """Every file of every committed checkpoint (not the ``best_model`` pointer)."""
    return {n for e in manifest["checkpoints"].values() for n in files_of(e)}


def newest_committed(manifest: Mapping[str, Any]) -> str | None:
    """The file of the newest committed checkpoint by ``(epoch, step)``; ``None`` if none."""
    entries = manifest["checkpoints"].values()
    return max(entries, key=order_key)["file"] if entries else None


@functools.cache
def _course_version() -> str:
    try:
        from importlib.metadata import version

        return version("course-lib")
    except Exception:  # not installed as a package: running from a checkout
        return "unknown"


def make_entry(
    name: str,
    files: Mapping[str, Mapping[str, Any]],
    epoch: int | None,
    step: int | None,
    metrics: Mapping[str, Any],
    protected: bool,
    *,
    adopted: bool = False,
) -> dict[str, Any]:
    """The manifest entry for checkpoint ``name`` whose ``files`` are ``{file: {size, sha256}}``.

    Metrics are stored as floats (strings if they are not numbers), with the time and the
    torch and course versions that wrote it.
    """
    plain = {}
    for key, value in (metrics or {}).items():
        try:
            plain[str(key)] = float(value)
        except (TypeError, ValueError):
            plain[str(key)] = str(value)
    entry = {
        "file": name,
        "epoch": None if epoch is None else int(epoch),
        "step": None if step is None else int(step),
        "metrics": plain,
        "size": sum(int(f["size"]) for f in files.values()),
        "sha256": files[name]["sha256"],
        "files": {k: dict(v) for k, v in files.items()},
        "format": "safetensors" if name.endswith(".safetensors") else "torch",
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "torch_version": str(torch.__version__),
        "course_version": _course_version(),
        "protected": bool(protected),
    }
    if adopted:
        entry["adopted"] = True
    return entry


def entry_from_file(
    folder: Path, path: Path, metrics: Mapping[str, float] | None = None
) -> dict[str, Any]:
    """A manifest entry for an existing checkpoint file (reads it once, weights_only)."""
    files = [path.name]
    if path.suffix == ".safetensors":
        files.append(sidecar_name(path.name))
        state = safe_load(folder / files[1], map_location="cpu")
    else:
        state = safe_load(path, map_location="cpu")
    if not isinstance(state, Mapping):
        raise ForeignFileError(
            path,
            f"holds a {type(state).__name__}, not a checkpoint dict.",
            "adopt checkpoint files only.",
        )
    match = PRIMARY_PATTERN.match(path.name)
    epoch = state.get("epoch", int(match["epoch"]) if match else None)
    step = state.get("step", int(match["step"]) if match and match["step"] else None)
    raw_metrics = metrics if metrics is not None else state.get("metrics") or {}
    if not raw_metrics and isinstance(state.get("loss"), (int, float)):
        raw_metrics = {"loss": state["loss"]}
    file_info = {}
    for name in files:
        p = folder / name
        file_info[name] = {"size": p.stat().st_size, "sha256": sha256_file(p)}
    return make_entry(path.name, file_info, epoch, step, raw_metrics, False, adopted=True)


def record_for(folder: Path, path: Path, manifest: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The manifest's record (checkpoint entry or best pointer) for ``path``, if any."""
    try:
        if path.parent.resolve() != folder.resolve():
            return None
    except OSError:
        return None
    entry = manifest["checkpoints"].get(path.name)
    if entry is not None:
        return entry
    best = manifest.get("best")
    if best and path.name in best.get("files", {}):
        return best
    return None


_DAMAGED_FIX = (
    "load another checkpoint: manager.load_latest() falls back to the newest good one; "
    "restore this file from a backup if you need this epoch."
)


def verify_files(path: Path, record: Mapping[str, Any]) -> None:
    """Check each file of ``record`` beside ``path`` against its recorded size and SHA-256.

    Raises ``CheckpointNotFoundError`` (a file deleted by hand) or ``CorruptCheckpointError``
    (truncated or changed), naming the file.
    """
    for name, info in record["files"].items():
        file = path.parent / name
        if not file.is_file():
            raise CheckpointNotFoundError(
                file,
                f"listed in {MANIFEST_NAME} but missing (deleted by hand?).",
                "load another checkpoint: manager.load_latest() falls back to the newest "
                "good one; manager.list_checkpoints() lists them.",
            )
        size = file.stat().st_size
        if size != info["size"]:
            raise CorruptCheckpointError(
                file,
                f"the file is {size} bytes, the manifest recorded {info['size']}: it was "
                "truncated or changed after it was saved (a partial copy, a full disk, an edit).",
                _DAMAGED_FIX,
            )
        digest = sha256_file(file)
        if digest != info["sha256"]:
            raise CorruptCheckpointError(
                file,
                f"its SHA-256 ({digest[:12]}...) does not match the manifest's "
                f"({info['sha256'][:12]}...): the file was damaged after it was saved "
                "(disk or copy error, or an edit).",
                _DAMAGED_FIX,
            )


# ----------------------------------------------------------------------------------------------
# The best_model pointer
# ----------------------------------------------------------------------------------------------


def best_names(entry: Mapping[str, Any]) -> dict[str, str]:
    """``{source file: best_model file}`` for each file of a checkpoint."""
    names = {}
    for name in files_of(entry):
        if name.endswith(SIDECAR_SUFFIX):
            names[name] = BEST_STEM + SIDECAR_SUFFIX
        else:
            names[name] = BEST_STEM + Path(name).suffix
    return names


def best_record(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest's ``best`` record for a checkpoint entry: its ``best_model`` files."""
    return {
        "source": entry["file"],
        "epoch": entry["epoch"],
        "step": entry["step"],
        "metrics": entry["metrics"],
        "files": {
            best: {**entry["files"][src], "source_file": src}
            for src, best in best_names(entry).items()
        },
    }


def link_best(folder: Path, entry: Mapping[str, Any]) -> None:
    """Point ``best_model.*`` at a committed checkpoint: a hard link (or a copy) renamed in."""
    for src, best in best_names(entry).items():
        source = folder / src
        target = folder / best
        if not target.is_symlink() and target.exists() and os.path.samefile(source, target):
            # Already linked. (Renaming one hard link over another of the same file is a
            # no-op that leaves the temp name behind, so never try.)
            continue

        def link(temp: Path, source: Path = source) -> None:
            temp.unlink()
            try:
                os.link(source, temp)
            except OSError:  # no hard links here (some network and FAT file systems)
                shutil.copyfile(source, temp)

        atomic_write(target, link, follow_symlinks=False)
