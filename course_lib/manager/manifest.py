"""A checkpoint folder's ``manifest.json`` as typed records, read and written here only.

For maintainers (read it after ``commit`` and ``files``). A checkpoint counts as *committed*
once the manifest (written atomically) lists it with the size and SHA-256 of each of its files
(``files.FileRecord``: of the whole file, or of a ``torch.save`` file's zip structure);
a file the manifest does not list is ignored. The manifest also records the ``best_model``
pointer, files still to delete (``pending_delete``) and the best metric value so far.

The JSON is untrusted input: ``read_manifest`` opens it as a regular file of bounded size
(never through a link, never blocking on a FIFO), checks the type of every field, and checks
that every name in it is a plain file name inside the folder, so that a tampered manifest can
never make a manager delete or overwrite anything outside its folder. Whatever fails the
check is a ``CorruptCheckpointError``; the manager then keeps the file aside and rebuilds it.
"""

from __future__ import annotations

import functools
import json
import os
import stat
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from course_lib.checkpoint import BEST_STEM
from course_lib.manager.files import MANIFEST_NAME, SHA256_OF, SIDECAR_SUFFIX, FileRecord
from course_lib.manager.retention import BestMetric, order_key
from course_lib.safe_io import CorruptCheckpointError, atomic_write

__all__ = [
    "MANIFEST_FIX",
    "BestPointer",
    "CheckpointEntry",
    "FileRecord",
    "Manifest",
    "read_manifest",
    "read_manifest_or_empty",
    "write_manifest",
]

# 2: a file's record may say "sha256_of": "zip" (its SHA-256 is of its zip structure). A
# version-1 reader would take such a digest for the whole file's and find every checkpoint
# damaged, so it is told the manifest is newer instead. Version 1 is still read (whole files).
MANIFEST_VERSION = 2
MANIFEST_LIMIT_BYTES = 64 << 20  # about 200,000 checkpoints; a bigger one is not ours
MANIFEST_FIX = (
    "open a CheckpointManager on the folder with write access: it keeps the damaged file as "
    "manifest.json.damaged and rebuilds the manifest from the checkpoints."
)
_WRITER = "course_lib.manager.CheckpointManager"


# ----------------------------------------------------------------------------------------------
# The records
# ----------------------------------------------------------------------------------------------


@dataclass
class CheckpointEntry:
    """One committed checkpoint: its main ``file``, counters, metrics and every file's record.

    ``size`` is the total of its files; ``sha256`` is the main file's (of the whole file or of
    its zip structure, as its record says: ``files.FileRecord``). ``files`` holds one file,
    or the ``.safetensors`` weights and their ``.train_state.pth`` sidecar.
    """

    file: str
    epoch: int | None
    step: int | None
    metrics: dict[str, float | str]
    files: dict[str, FileRecord]
    time: str = ""
    torch_version: str = ""
    course_version: str = ""
    protected: bool = False
    adopted: bool = False

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files.values())

    @property
    def sha256(self) -> str:
        return self.files[self.file].sha256

    @property
    def format(self) -> str:
        return "safetensors" if self.file.endswith(".safetensors") else "torch"


@dataclass
class BestPointer:
    """What ``best_model.*`` holds: a hard link (or copy) of checkpoint ``source``'s files.

    ``files`` maps each ``best_model`` file to its record, whose ``source_file`` names the
    checkpoint file it was made from.
    """

    source: str | None
    epoch: int | None
    step: int | None
    metrics: dict[str, float | str]
    files: dict[str, FileRecord]

    @property
    def file(self) -> str:
        """The ``best_model`` file that holds the weights (not the sidecar)."""
        return next(n for n in self.files if not n.endswith(SIDECAR_SUFFIX))

    @classmethod
    def of(cls, entry: CheckpointEntry) -> BestPointer:
        """The pointer to ``entry``: one ``best_model`` file per file of the checkpoint."""
        files = {}
        for name, record in entry.files.items():
            suffix = SIDECAR_SUFFIX if name.endswith(SIDECAR_SUFFIX) else Path(name).suffix
            files[BEST_STEM + suffix] = replace(record, source_file=name)
        return cls(entry.file, entry.epoch, entry.step, dict(entry.metrics), files)


@dataclass
class Manifest:
    """The whole manifest: committed checkpoints by file name, and the folder's bookkeeping."""

    checkpoints: dict[str, CheckpointEntry] = field(default_factory=dict)
    best: BestPointer | None = None
    pending_delete: list[str] = field(default_factory=list)
    best_metric: BestMetric | None = None

    def ordered(self, *, newest_first: bool = False) -> list[CheckpointEntry]:
        """The checkpoints by ``(epoch, step)`` (never by file times)."""
        return sorted(self.checkpoints.values(), key=order_key, reverse=newest_first)

    def newest(self) -> str | None:
        """The file of the newest committed checkpoint; ``None`` if there is none."""
        entries = self.ordered(newest_first=True)
        return entries[0].file if entries else None

    def tracked_files(self) -> set[str]:
        """Every file of every committed checkpoint (not the ``best_model`` pointer)."""
        return {name for entry in self.checkpoints.values() for name in entry.files}

    def rows(self, reasons: dict[str, list[str]]) -> list[dict[str, Any]]:
        """One row per checkpoint, oldest first: ``list_checkpoints``'s table.

        ``reasons`` are the retention reasons per file (``'kept'`` is shown as ``best_model``).
        """
        best_source = self.best.source if self.best else None
        rows = []
        for entry in self.ordered():
            row: dict[str, Any] = {"file": entry.file, "epoch": entry.epoch, "step": entry.step}
            for key, value in entry.metrics.items():
                row[key if key not in row else f"metric:{key}"] = value
            kept_by = [r if r != "kept" else "best_model" for r in reasons[entry.file]]
            row.update(
                size=entry.size,
                sha256=entry.sha256,
                time=entry.time,
                kept_by=",".join(kept_by),
                best=entry.file == best_source,
            )
            rows.append(row)
        return rows

    def record_for(self, name: str) -> CheckpointEntry | BestPointer | None:
        """The record that lists file ``name``: a checkpoint's entry, or the best pointer."""
        if name in self.checkpoints:
            return self.checkpoints[name]
        if self.best is not None and name in self.best.files:
            return self.best
        return None


@functools.cache
def _course_version() -> str:
    try:
        from importlib.metadata import version

        return version("course-lib")
    except Exception:  # not installed as a package: running from a checkout
        return "unknown"


def new_entry(
    name: str,
    files: dict[str, FileRecord],
    epoch: int | None,
    step: int | None,
    metrics: Any,
    *,
    protected: bool = False,
    adopted: bool = False,
) -> CheckpointEntry:
    """The entry for checkpoint ``name``, stamped with the time and the torch and course versions.

    Metrics are stored as floats (strings if they are not numbers).
    """
    plain: dict[str, float | str] = {}
    for key, value in dict(metrics or {}).items():
        try:
            plain[str(key)] = float(value)
        except (TypeError, ValueError):
            plain[str(key)] = str(value)
    return CheckpointEntry(
        file=name,
        epoch=None if epoch is None else int(epoch),
        step=None if step is None else int(step),
        metrics=plain,
        files=dict(files),
        time=datetime.now(UTC).isoformat(timespec="seconds"),
        torch_version=str(torch.__version__),
        course_version=_course_version(),
        protected=bool(protected),
        adopted=adopted,
    )


# ----------------------------------------------------------------------------------------------
# Reading: the schema, checked
# ----------------------------------------------------------------------------------------------


class _Damaged(ValueError):
    """A field of the manifest that does not fit the schema."""


def _plain_name(name: object) -> str:
    """A name read from the manifest, if it names a file directly inside the folder."""
    if (
        not isinstance(name, str)
        or name in ("", ".", "..")
        or "/" in name
        or "\\" in name
        or "\0" in name
    ):
        raise _Damaged(f"{name!r} is not a plain file name inside the folder")
    return name


class _Bool:
    """``_typed(value, _Bool, ...)``: a real ``bool`` (``_typed`` refuses bools elsewhere)."""


def _typed(value: object, kind: type | tuple[type, ...], what: str) -> Any:
    if kind is _Bool:
        if not isinstance(value, bool):
            raise _Damaged(f"{what} is {type(value).__name__} {value!r:.40}, not true or false")
        return value
    if isinstance(value, bool) or not isinstance(value, kind):  # to Python a bool is an int
        raise _Damaged(
            f"{what} is {type(value).__name__} {value!r:.40}, not what the manager writes"
        )
    return value


def _optional_int(value: object, what: str) -> int | None:
    return None if value is None else int(_typed(value, int, what))


def _metrics(value: object, what: str) -> dict[str, float | str]:
    metrics = _typed(value if value is not None else {}, dict, what)
    return {str(k): _typed(v, (int, float, str), f"{what}[{k!r}]") for k, v in metrics.items()}


def _file_record(value: object, what: str) -> FileRecord:
    record = _typed(value, dict, what)
    source = record.get("source_file")
    sha256_of = _typed(record.get("sha256_of", "file"), str, f"{what} sha256_of")
    if sha256_of not in SHA256_OF:
        raise _Damaged(f"{what} sha256_of is {sha256_of!r:.40}, not one of {SHA256_OF}")
    return FileRecord(
        size=int(_typed(record.get("size"), int, f"{what} size")),
        sha256=str(_typed(record.get("sha256"), str, f"{what} sha256")),
        source_file=None if source is None else _plain_name(source),
        sha256_of=sha256_of,
    )


def _files(raw: dict[str, Any], what: str) -> dict[str, FileRecord]:
    files = raw.get("files")
    if files is None:  # one-file entries may carry their record inline
        files = {raw.get("file"): {"size": raw.get("size"), "sha256": raw.get("sha256")}}
    files = _typed(files, dict, f"{what} files")
    return {_plain_name(n): _file_record(r, f"{what} file {n!r}") for n, r in files.items()}


def _entry(raw: object) -> CheckpointEntry:
    raw = _typed(raw, dict, "a checkpoint entry")
    name = _plain_name(raw.get("file"))
    files = _files(raw, f"entry {name!r}")
    if name not in files:
        raise _Damaged(f"entry {name!r} does not list its own file")
    return CheckpointEntry(
        file=name,
        epoch=_optional_int(raw.get("epoch"), f"entry {name!r} epoch"),
        step=_optional_int(raw.get("step"), f"entry {name!r} step"),
        metrics=_metrics(raw.get("metrics"), f"entry {name!r} metrics"),
        files=files,
        time=str(raw.get("time", "")),
        torch_version=str(raw.get("torch_version", "")),
        course_version=str(raw.get("course_version", "")),
        protected=_typed(raw.get("protected", False), _Bool, f"entry {name!r} protected"),
        adopted=_typed(raw.get("adopted", False), _Bool, f"entry {name!r} adopted"),
    )


def _best(raw: object) -> BestPointer | None:
    if raw is None:
        return None
    raw = _typed(raw, dict, "'best'")
    source = raw.get("source")
    files = _files({"files": raw.get("files") or {}}, "'best'")
    if not any(not name.endswith(SIDECAR_SUFFIX) for name in files):
        raise _Damaged("'best' lists no best_model file (its 'files' are missing or empty)")
    return BestPointer(
        source=None if source is None else _plain_name(source),
        epoch=_optional_int(raw.get("epoch"), "'best' epoch"),
        step=_optional_int(raw.get("step"), "'best' step"),
        metrics=_metrics(raw.get("metrics"), "'best' metrics"),
        files=files,
    )


def _best_metric(raw: object) -> BestMetric | None:
    if raw is None:
        return None
    raw = _typed(raw, dict, "'best_metric'")
    value = raw.get("value")
    return BestMetric(
        name=str(_typed(raw.get("name"), str, "'best_metric' name")),
        mode=str(_typed(raw.get("mode"), str, "'best_metric' mode")),
        value=None if value is None else float(_typed(value, (int, float), "'best_metric' value")),
    )


def _parse(document: object) -> Manifest:
    document = _typed(document, dict, "the manifest")
    version = _typed(document.get("version", MANIFEST_VERSION), int, "'version'")
    if version > MANIFEST_VERSION:
        raise _Damaged(
            f"version {version} was written by a newer course_lib (this one reads up to "
            f"{MANIFEST_VERSION}): update course_lib rather than let this one rewrite it"
        )
    checkpoints = _typed(document.get("checkpoints"), list, "'checkpoints'")
    pending = _typed(document.get("pending_delete", []), list, "'pending_delete'")
    entries = [_entry(raw) for raw in checkpoints]
    return Manifest(
        checkpoints={entry.file: entry for entry in entries},
        best=_best(document.get("best")),
        pending_delete=[_plain_name(n) for n in pending],
        best_metric=_best_metric(document.get("best_metric")),
    )


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


def read_manifest(folder: Path) -> Manifest | None:
    """The folder's manifest; ``None`` if it has none.

    A ``CorruptCheckpointError`` if it is not a regular file of bounded size, cannot be parsed,
    has a field of the wrong type, or names a file outside the folder.
    """
    path = folder / MANIFEST_NAME
    try:
        text = _read_manifest_text(path)
        if text is None:
            return None
        return _parse(json.loads(text))
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise CorruptCheckpointError(
            path, f"the manifest is damaged ({type(exc).__name__}: {exc}).", MANIFEST_FIX
        ) from None


def read_manifest_or_empty(folder: Path) -> Manifest:
    """``read_manifest(folder)``, or an empty manifest if the folder has none."""
    manifest = read_manifest(folder)
    return Manifest() if manifest is None else manifest


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------


def _file_json(record: FileRecord) -> dict[str, Any]:
    document: dict[str, Any] = {
        "size": record.size,
        "sha256": record.sha256,
        "sha256_of": record.sha256_of,
    }
    if record.source_file is not None:
        document["source_file"] = record.source_file
    return document


def _entry_json(entry: CheckpointEntry) -> dict[str, Any]:
    document = {
        "file": entry.file,
        "epoch": entry.epoch,
        "step": entry.step,
        "metrics": entry.metrics,
        "size": entry.size,
        "sha256": entry.sha256,
        "files": {name: _file_json(r) for name, r in entry.files.items()},
        "format": entry.format,
        "time": entry.time,
        "torch_version": entry.torch_version,
        "course_version": entry.course_version,
        "protected": entry.protected,
    }
    if entry.adopted:
        document["adopted"] = True
    return document


def _best_json(best: BestPointer | None) -> dict[str, Any] | None:
    if best is None:
        return None
    return {
        "source": best.source,
        "epoch": best.epoch,
        "step": best.step,
        "metrics": best.metrics,
        "files": {name: _file_json(r) for name, r in best.files.items()},
    }


def write_manifest(folder: Path, manifest: Manifest) -> None:
    """Write ``folder/manifest.json`` atomically: this write is what commits a checkpoint."""
    best_metric = manifest.best_metric
    # One checkpoint per line: readable, and json's fast C encoder (indent= disables it).
    rows = ",\n  ".join(json.dumps(_entry_json(e)) for e in manifest.ordered())
    text = (
        f'{{"version": {MANIFEST_VERSION}, "writer": {json.dumps(_WRITER)},\n'
        f' "checkpoints": [\n  {rows}\n ],\n'
        f' "best": {json.dumps(_best_json(manifest.best))},\n'
        f' "best_metric": {json.dumps(None if best_metric is None else vars(best_metric))},\n'
        f' "pending_delete": {json.dumps(list(manifest.pending_delete))}}}\n'
    )
    atomic_write(folder / MANIFEST_NAME, lambda temp: temp.write_text(text), follow_symlinks=False)
