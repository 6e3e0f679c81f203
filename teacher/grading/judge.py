"""Step 3, judge: the hidden checks, run in the trusted grading process, never in the sandbox.

An exercise's ``teacher/exercises/<name>/judge.py`` defines

- ``questions(rng)``: the questions for this grading run, drawn from ``rng`` (a ``random.Random``
  seeded per run and recorded in the gradebook), as plain JSON data. The sandbox's
  ``answer.py`` asks the student's code these questions; the solution is asked the same ones.
- pytest-style checks, ``def test_<what>(student, solution, questions)``, each marked with
  ``@points(n)``. ``student`` and ``solution`` are :class:`Answers`: what each process left in
  its answers folder, loaded safely (JSON with limits, safetensors, ``weights_only`` torch files,
  regular files only, no links followed). A check passes when it returns; its ``AssertionError``
  message is the student's feedback, so it must name the mistake, never the expected values.

Nothing the student's process reports about itself ("all checks passed") is read here: a check
compares answers, computed by the student's code for questions it could not know in advance,
with the solution's answers, and the comparison runs where the student's code cannot reach it.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import json
import os
import random
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from teacher.grading.paths import EXERCISES_DIR
from teacher.grading.records import CheckResult

__all__ = ["AnswerMissing", "Answers", "Exercise", "load_exercise", "points"]

ANSWER_LIMIT_BYTES = 64 << 20
JSON_LIMIT_BYTES = 1 << 20
# The pickled part of a torch file (its tensors' bytes are stored beside it): the weights-only
# unpickler reads about 3 MB a second, and no exercise's answer pickles more than a few kB.
PICKLE_LIMIT_BYTES = 1 << 20


def points(value: float) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Mark a hidden check with the points it is worth."""

    def mark(check: Callable[..., None]) -> Callable[..., None]:
        check.points = value  # type: ignore[attr-defined]
        return check

    return mark


class AnswerMissing(AssertionError):
    """The student's process left no usable answer to a question (the message says why)."""


class Answers:
    """One process's answers folder, read defensively: it was written by untrusted code."""

    def __init__(self, folder: Path, who: str = "your code", key: str | None = None) -> None:
        from teacher.grading.witness import grader_key

        self.folder = folder
        self.who = who
        # The key the witness signed its records with (beside the answers, never in them).
        self.key = key if key is not None else grader_key(folder)
        self._manifest: dict[str, Any] | None = None

    def describe(self) -> dict[str, Any]:
        """What the judge process needs besides the folder itself (sent as a descriptor)."""
        return {"who": self.who, "key": self.key}

    def open_folder(self) -> int:
        """The folder, opened for the judge process (which sees no other file); if the student's
        code removed it or put something else in its place, an empty folder."""
        try:
            return os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            empty = tempfile.mkdtemp(prefix="no-answers-")
            try:
                return os.open(empty, os.O_RDONLY | os.O_DIRECTORY)
            finally:
                os.rmdir(empty)

    @classmethod
    def from_description(cls, folder: Path, description: dict[str, Any]) -> Answers:
        key = description.get("key")
        return cls(folder, str(description.get("who", "your code")), key or "")

    # What the witness saw (``witness.py``): records signed with this job's key, or nothing.

    def _witnessed(self) -> dict[str, Any]:
        if self._manifest is None:
            from teacher.grading.witness import MANIFEST_NAME, read_manifest

            manifest = None
            try:
                path = self.path(MANIFEST_NAME)
                if path.stat().st_size <= 4 * JSON_LIMIT_BYTES:
                    manifest = read_manifest(path.read_text("utf-8", "replace"), self.key)
            except (AnswerMissing, OSError):
                pass
            self._manifest = manifest or {"records": {}, "files": {}}
        return self._manifest

    def witnessed(self, key: str) -> Any:
        """What the grader's witness recorded under ``key``, or AnswerMissing."""
        records = self._witnessed().get("records", {})
        if not isinstance(records, dict) or key not in records:
            raise AnswerMissing(
                f"the grader's witness has no record of {key.split(':')[-1]} for {self.who} "
                "(did the notebook stop before it, or change the grader's records?)"
            )
        return records[key]

    def witnessed_listing(self, relative: str) -> list[str]:
        """The names in a folder of the answers when the witness looked, sorted."""
        names = self.witnessed(f"listing:{relative}")
        if names is None:
            raise AnswerMissing(self._why_missing(relative))
        return [str(name) for name in names]

    def witnessed_file(self, name: str) -> Path:
        """A file the witness kept, unchanged since (its SHA-256 is in the signed records)."""
        import hashlib

        if not self.witnessed(f"kept:{name}"):
            raise AnswerMissing(f"{name}: there was no file to keep")
        expected = self._witnessed().get("files", {}).get(name)
        path = self.path(name)
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
        if digest.hexdigest() != expected:
            raise AnswerMissing(f"{name}: changed after the grader's witness kept it")
        return path

    def _walk(self, relative: str) -> Path:
        """``folder / relative``, refusing a symbolic link anywhere on the way."""
        path = self.folder
        for part in Path(relative).parts:
            if part in ("..", "/"):
                raise AnswerMissing(f"{relative}: not a name inside the answers")
            path = path / part
            if path.is_symlink():
                raise AnswerMissing(f"{relative}: a symbolic link was planted in the answers")
        return path

    def path(self, relative: str) -> Path:
        """A regular file in the folder (no link anywhere on the way, bounded size), or why not."""
        path = self._walk(relative)
        if not path.is_file():
            raise AnswerMissing(self._why_missing(relative))
        if path.stat().st_size > ANSWER_LIMIT_BYTES:
            raise AnswerMissing(f"{relative}: larger than {ANSWER_LIMIT_BYTES >> 20} MB")
        return path

    def exists(self, relative: str) -> bool:
        try:
            self.path(relative)
        except AnswerMissing:
            return False
        return True

    def raised(self, qid: str) -> dict[str, Any] | None:
        """What the student's function raised for question ``qid`` (its own report), if it did."""
        path = self.folder / f"{qid}.raised.json"
        if path.is_symlink() or not path.is_file() or path.stat().st_size > 1 << 20:
            return None
        try:
            record = json.loads(path.read_text("utf-8", "replace"))
        except (OSError, json.JSONDecodeError):
            return {"type": "?", "mro": [], "message": "(an unreadable error report)"}
        if not isinstance(record, dict):
            return {"type": "?", "mro": [], "message": "?"}
        return {
            "type": str(record.get("type", "?"))[:100],
            "mro": [str(m)[:100] for m in record.get("mro", [])][:50]
            if isinstance(record.get("mro"), list)
            else [],
            "message": str(record.get("message", ""))[:3000],
        }

    def succeeded(self, qid: str) -> None:
        """Fail the check when the function raised for question ``qid``, naming what it raised."""
        raised = self.raised(qid)
        if raised is not None:
            raise AnswerMissing(f"for this question {self.who} raised {raised['message']}")

    def _why_missing(self, relative: str) -> str:
        qid = Path(relative).name.split(".")[0]
        raised = self.raised(qid)
        if raised is not None:
            return f"for this question {self.who} raised {raised['message']}"
        return f"{self.who} gave no answer to this question (did the notebook stop before it?)"

    def json(self, qid: str) -> Any:
        path = self.path(f"{qid}.json")
        if path.stat().st_size > JSON_LIMIT_BYTES:
            raise AnswerMissing(f"the answer to {qid} is larger than {JSON_LIMIT_BYTES >> 20} MB")
        try:
            return json.loads(path.read_text("utf-8", "replace"))
        except json.JSONDecodeError as exc:
            raise AnswerMissing(f"the answer to {qid} is not valid JSON ({exc})") from None

    def tensors(self, qid: str) -> dict[str, Any]:
        from safetensors import SafetensorError
        from safetensors.torch import load

        try:  # read here: safetensors resolves a /proc/self/fd/N path to one the judge cannot see
            return load(self.path(f"{qid}.safetensors").read_bytes())
        except (SafetensorError, OSError, ValueError) as exc:
            raise AnswerMissing(f"the tensors answered to {qid} cannot be read ({exc})") from None

    def torch_file(self, relative: str, *, witnessed: bool = False) -> Any:
        """A ``torch.save`` file, loaded with ``weights_only=True`` on the CPU (``witnessed``:
        one the grader's witness kept, verified against its record)."""
        from course_lib.safe_io import CheckpointError, safe_load

        path = self.witnessed_file(relative) if witnessed else self.path(relative)
        try:
            with zipfile.ZipFile(path) as archive:
                entries = archive.infolist()
        except (zipfile.BadZipFile, OSError):
            entries = []  # not a zip: safe_load says what it is
        if any(e.compress_type != zipfile.ZIP_STORED for e in entries) or (
            sum(e.file_size for e in entries) > ANSWER_LIMIT_BYTES
        ):
            raise AnswerMissing(
                f"{relative}: compressed or oversized (torch.save never compresses)"
            )
        pickled = sum(e.file_size for e in entries if e.filename.endswith(".pkl"))
        if not entries and path.stat().st_size > PICKLE_LIMIT_BYTES:
            raise AnswerMissing(
                f"{relative}: not a complete torch.save archive (torn, or the legacy format that "
                f"is one {path.stat().st_size >> 10} kB pickle)"
            )
        if pickled > PICKLE_LIMIT_BYTES:
            raise AnswerMissing(
                f"{relative}: {pickled >> 10} kB of pickled Python objects "
                f"(at most {PICKLE_LIMIT_BYTES >> 10} kB): store numbers in tensors, not in lists"
            )
        try:
            return safe_load(path, map_location="cpu")
        except CheckpointError as exc:
            raise AnswerMissing(f"{relative}: {exc.problem}") from None
        except Exception as exc:  # noqa: BLE001 - a damaged file may fail anywhere in the unpickler
            raise AnswerMissing(f"{relative} cannot be loaded ({type(exc).__name__})") from None

    def listing(self, relative: str) -> list[str]:
        """The names in a folder of the answers (not following links), sorted."""
        folder = self._walk(relative)
        if not folder.is_dir():
            raise AnswerMissing(self._why_missing(relative))
        return sorted(p.name for p in folder.iterdir())[:1000]


@dataclass(frozen=True)
class Exercise:
    """An exercise's hidden material: its question generator and its checks."""

    name: str
    module: ModuleType
    checks: tuple[Callable[..., None], ...]

    @property
    def max_score(self) -> float:
        return float(sum(check.points for check in self.checks))  # type: ignore[attr-defined]

    def questions(self, seed: int) -> list[Any]:
        return self.module.questions(random.Random(f"{self.name}:{seed}"))

    def judge(self, student: Answers, solution: Answers, questions: list[Any]) -> list[CheckResult]:
        """Every check, each worth its points or none, with the full message of a failure.

        The checks run in the judge process (``judge_process``), each in a limited child: no
        student's answer is ever loaded in the grading process.
        """
        from teacher.grading.judge_process import judge_isolated

        results = judge_isolated(self.name, student, solution, questions)
        if results is None:
            raise RuntimeError("the judge process failed twice; see the grader's messages")
        return results

    def judge_here(
        self, student: Answers, solution: Answers, questions: list[Any]
    ) -> list[CheckResult]:
        """Every check in this process, unlimited: for the judge process and for tests only."""
        fixtures = {"student": student, "solution": solution, "questions": questions}
        return [self.run_check(check, fixtures) for check in self.checks]

    def run_check(self, check: Callable[..., None], fixtures: dict[str, Any]) -> CheckResult:
        """One check: its points when it returns, none with its message when it fails."""
        wanted = inspect.signature(check).parameters
        points = check.points  # type: ignore[attr-defined]
        try:
            check(**{name: fixtures[name] for name in wanted})
        except AssertionError as exc:
            return CheckResult(check.__name__, 0, points, str(exc).strip() or "check failed")
        except MemoryError:
            raise  # the judge process reports it with its limit
        except Exception as exc:  # noqa: BLE001 - a student's answer may break a check anywhere
            return CheckResult(check.__name__, 0, points, f"{type(exc).__name__}: {exc}"[:2000])
        return CheckResult(check.__name__, points, points, "ok")


@functools.cache
def load_exercise(name: str) -> Exercise:
    """Import ``teacher/exercises/<name>/judge.py`` (trusted code) once per grading process."""
    path = EXERCISES_DIR / name / "judge.py"
    spec = importlib.util.spec_from_file_location(f"_course_judge_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    checks = tuple(
        value
        for key, value in vars(module).items()
        if key.startswith("test_") and callable(value) and hasattr(value, "points")
    )
    if not checks:
        raise ValueError(f"{path}: no checks (functions test_* marked with @points)")
    return Exercise(name, module, checks)
