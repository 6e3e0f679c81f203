"""Step 2, the witness: questions that kill, age or inspect files, asked where the student cannot reach.

The asker of most exercises runs in the student's process: it calls the notebook's functions and
saves what they return, and whatever the student's code does to it only changes the student's own
answers. That is not enough when the grader must *do* something to the student's code (kill a save
with SIGKILL, move a file's time, plant a malicious checkpoint) or *observe* what it left (a folder's
listing, a file after a kill): in the student's process, ``gc.get_objects()`` finds the asker and
its ``os.kill`` can be replaced. So, when an exercise's ``answer.py`` defines ``witness``:

- Before any student cell runs, the sandbox's process forks. The parent becomes the **witness**: it
  reads this job's key (``.witness-key`` in the answers, written by the grader, see ``prepare``)
  and deletes it, is made not dumpable (no ptrace, no ``/proc/<pid>/mem``), and holds its own pair
  of pipes to the child. Only then does the child, the **student's process**, drop every capability
  and run the cells. It never had the key in its memory.
- After the cells, the witness runs ``answer.witness(questions, w)`` with a :class:`Witness`
  ``w``. ``w.ask(op, ...)`` has the student's process run ``answer.<op>(ask, ...)`` (an ordinary
  asker step: ``ask.call`` / ``ask.run`` / ``ask.save_json``, with ``ask.kept`` to hold objects
  between steps) and returns its reply, an untrusted answer like any other. Whatever the witness
  does itself (``os.utime``, ``torch.save`` of a payload, a kill) the student cannot switch off.
- ``with w.in_child(op, ..., kill_after=s, watch=folder) as outcome:`` has the student's process
  fork a child that runs ``answer.<op>(ask, ...)``; ``s`` seconds after ``folder`` first changes,
  the witness stops the student's process (SIGSTOP) and SIGKILLs every process the student's
  code started (the witness is their subreaper), so nothing of the student's runs inside the
  block; there the asker keeps what it needs (``w.keep``), and on leaving it the student's
  process is resumed. Without ``kill_after`` the child is waited for instead, and the request
  looks the same: a step cannot tell whether it will be killed. This is how ex6 kills saves;
  ex7 (train, SIGKILL, resume; compare bitwise) kills a training run the same way, keeps its
  checkpoint folder, then ``w.ask``\\ s the student's process to resume and keeps the result.
- What the witness saw is recorded with ``w.record(key, value)``, ``w.listing(folder)`` and
  ``w.keep(path, name)`` (a copy and its SHA-256) in ``witness.json``, signed with the job's key
  (HMAC-SHA256). The judge reads them with ``Answers.witnessed(key)``,
  ``Answers.witnessed_listing(folder)`` and ``Answers.witnessed_file(name)``: a record the student
  wrote, changed or copied from elsewhere does not verify and counts as no answer.

Exercises without ``witness`` keep ``answer(questions, ask)`` in the student's process.
This file is copied into each job's folder; inside the sandbox it imports nothing of the course.
"""

from __future__ import annotations

import ast
import contextlib
import ctypes
import hashlib
import hmac
import json
import os
import secrets
import select
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "KEY_NAME",
    "MANIFEST_NAME",
    "Witness",
    "prepare",
    "StudentSide",
    "fork_witness",
    "read_manifest",
    "sign",
]

KEY_NAME = ".witness-key"  # in the answers folder, for the witness (which deletes it)
GRADER_KEY_NAME = "witness.key"  # beside the answers folder, for the judge (never mounted)
MANIFEST_NAME = "witness.json"
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 4, 36, 38
REPLY_LIMIT = 1 << 20
# CPython 3.11 keeps the AST constructor's recursion depth per interpreter, not per thread
# (gh-106905): two ast.parse calls that interleave (``--jobs 2`` prepares two jobs at once) can
# fail with "SystemError: AST constructor recursion depth mismatch". One parse at a time.
_ONE_PARSE_AT_A_TIME = threading.Lock()


# --- the grader's side --------------------------------------------------------------------------


def prepare(workdir: Path) -> None:
    """Give a prepared job its witness: this file in ``job/``, a fresh key for it and the judge.

    Only for an exercise whose ``answer.py`` (already in ``job/``) defines ``witness``: no other
    job gets a key, so none is left lying in a student's answers folder.
    """
    source = (workdir / "job" / "answer.py").read_text()
    with _ONE_PARSE_AT_A_TIME:
        tree = ast.parse(source)
    if not any(isinstance(n, ast.FunctionDef) and n.name == "witness" for n in tree.body):
        return
    key = secrets.token_hex(32)
    shutil.copyfile(Path(__file__), workdir / "job" / "witness.py")
    (workdir / GRADER_KEY_NAME).write_text(key)
    handed = workdir / "answers" / KEY_NAME
    handed.write_text(key)
    handed.chmod(0o644)


def grader_key(answers_dir: Path) -> str | None:
    path = answers_dir.parent / GRADER_KEY_NAME
    try:
        return path.read_text().strip() if path.is_file() and not path.is_symlink() else None
    except OSError:
        return None


def sign(key: str, body: str) -> str:
    return hmac.new(key.encode(), body.encode(), hashlib.sha256).hexdigest()


def read_manifest(text: str, key: str | None) -> dict[str, Any] | None:
    """The witness's records, if ``text`` is a manifest signed with ``key``; else None."""
    if not key:
        return None
    try:
        signed = json.loads(text)
        body, mac = signed["body"], signed["mac"]
        if not (isinstance(body, str) and isinstance(mac, str)):
            return None
        if not hmac.compare_digest(sign(key, body), mac):
            return None
        manifest = json.loads(body)
    except (ValueError, KeyError, TypeError):
        return None
    return manifest if isinstance(manifest, dict) else None


# --- inside the sandbox: the witness ------------------------------------------------------------


def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _processes() -> dict[int, tuple[int, str]]:
    """Every process of this PID namespace and below: ``{pid: (parent pid, state letter)}``,
    pids as this process sees them.

    ``/proc`` may belong to an enclosing namespace (a warm sandbox's child keeps the zygote's):
    its numbers are then not ours. ``NSpid`` lists a process's pid in each namespace from the one
    of ``/proc`` down; the entry at our own depth is the pid we can signal.
    """
    raw: dict[int, tuple[int, list[int], str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = dict(
                line.split(":", 1)
                for line in Path(f"/proc/{entry}/status").read_text().splitlines()
            )
            nspids = [int(n) for n in fields.get("NSpid", entry).split()]
            raw[int(entry)] = (int(fields["PPid"]), nspids, fields["State"].strip()[:1])
        except (OSError, KeyError, ValueError):
            continue
    try:
        me = raw[int(os.readlink("/proc/self"))]
    except (OSError, KeyError, ValueError):
        return {}
    depth = len(me[1]) - 1
    ours = {outer: nspids[depth] for outer, (_, nspids, _) in raw.items() if len(nspids) > depth}
    return {local: (ours.get(raw[outer][0], 0), raw[outer][2]) for outer, local in ours.items()}


class _Pipe:
    """JSON lines over a pair of descriptors, read with a deadline."""

    def __init__(self, read: int, write: int) -> None:
        self.read_fd, self.write_fd = read, write
        self.buffer = b""

    def send(self, message: Any) -> bool:
        data = (json.dumps(message, default=repr) + "\n").encode()
        try:
            while data:
                data = data[os.write(self.write_fd, data) :]
        except OSError:
            return False
        return True

    def receive(self, seconds: float | None = None) -> Any:
        """The next message, or None at EOF, at the deadline, or for nonsense."""
        deadline = None if seconds is None else time.monotonic() + seconds
        while b"\n" not in self.buffer:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            try:
                ready, _, _ = select.select([self.read_fd], [], [], left)
            except InterruptedError:
                continue
            if not ready:
                continue
            try:
                chunk = os.read(self.read_fd, 1 << 16)
            except OSError:
                return None
            if not chunk or len(self.buffer) > REPLY_LIMIT:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        try:
            return json.loads(line)
        except ValueError:
            return None


class Witness:
    """What ``answer.witness(questions, w)`` uses: ask the student's process, act, record."""

    def __init__(self, pipe: _Pipe, student: int, answers_dir: Path, key: str, step: int) -> None:
        self._pipe = pipe
        self._student = student
        self._answers = answers_dir
        self._key = key
        self._step = step
        self._alive = True
        self._records: dict[str, Any] = {}
        self._files: dict[str, str] = {}
        self.student_exit: int | None = None

    # asking ---------------------------------------------------------------------------------

    def folder(self, qid: str) -> Path:
        """A folder of the answers for question ``qid`` (the student's code may write there)."""
        path = self._answers / qid
        path.mkdir(parents=True, exist_ok=True)
        return path

    def ask(self, op: str, *args: Any, **kwargs: Any) -> Any:
        """``answer.<op>(ask, *args, **kwargs)`` run in the student's process: its JSON reply
        (untrusted, as every answer), or None if that process failed or did not reply in time."""
        if not self._alive:
            return None
        self._pipe.send({"op": op, "args": args, "kwargs": kwargs})
        reply = self._pipe.receive(self._step + 15)
        if not isinstance(reply, dict) or "reply" not in reply:
            self._give_up()
            return None
        return reply["reply"]

    @contextlib.contextmanager
    def in_child(
        self,
        op: str,
        *args: Any,
        kill_after: float | None = None,
        watch: Path | None = None,
        **kwargs: Any,
    ) -> Iterator[str]:
        """Run ``answer.<op>(ask, ...)`` in a child of the student's process; then, inside the
        block, nothing of the student's runs: its process is stopped, every other one killed.

        With ``kill_after``, the child is killed that many seconds after ``watch`` (a folder)
        first changes (after the request when ``watch`` is None); without, it is waited for. The
        request looks the same either way, so the student's code cannot tell a step that will be
        killed from one that will not. The block receives ``"killed"``, ``"finished"``,
        ``"no activity"`` (``watch`` never changed), ``"still running"`` or ``"not started"``.
        Leaving it resumes the student's process, which reaps its children.
        """
        if not self._alive:
            yield "not started"
            return
        before = _snapshot(watch) if watch is not None else None
        running = _descendants(self._student)  # what the notebook left running is not the step
        self._pipe.send({"op": op, "args": args, "kwargs": kwargs, "fork": True})
        reply = self._pipe.receive(self._step + 15)
        if not (isinstance(reply, dict) and reply.get("reply") == "forked"):
            self._give_up()
            yield "not started"
            return
        outcome = "finished"
        if kill_after is not None:
            if watch is not None:
                limit = time.monotonic() + min(self._step, 10)  # a save starts in milliseconds
                while _snapshot(watch) == before and time.monotonic() < limit:
                    time.sleep(0.0005)
                if _snapshot(watch) == before:
                    outcome = "no activity"
            time.sleep(kill_after)
            outcome = "killed" if outcome == "finished" else outcome
        else:
            limit = time.monotonic() + self._step
            while _live(_descendants(self._student) - running) and time.monotonic() < limit:
                time.sleep(0.005)
            if _live(_descendants(self._student) - running):
                outcome = "still running"
        self._stop_everything_else()
        try:
            yield outcome
        finally:
            with contextlib.suppress(OSError):
                os.kill(self._student, signal.SIGCONT)
            self.ask("__reap__")

    def _stop_everything_else(self) -> None:
        """SIGSTOP the student's process, SIGKILL every other one it started, wait for both.

        The witness is a child subreaper (or the sandbox's PID 1): every process the student's
        code started, daemons included, is its descendant, and only those are touched.
        """
        with contextlib.suppress(OSError):
            os.kill(self._student, signal.SIGSTOP)
        victims: set[int] = set()
        for _attempt in range(3):  # a fork racing one pass is caught by the next
            for pid in _descendants(os.getpid()) - {self._student}:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
                    victims.add(pid)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            table = _processes()
            student = table.get(self._student, (0, "X"))[1]
            if student in ("T", "t", "Z", "X") and not _live(victims, table):
                break
            self._reap_orphans()
            time.sleep(0.001)

    def _reap_orphans(self) -> None:
        """As PID 1 of the sandbox (warm), killed orphans are ours to reap (but not the student)."""
        with contextlib.suppress(ChildProcessError):
            while True:
                pid, status = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    return
                if pid == self._student:
                    self.student_exit = os.waitstatus_to_exitcode(status)
                    self._alive = False

    def _give_up(self) -> None:
        """The student's process stopped answering: nothing more is asked of it."""
        if self._alive:
            self._alive = False
            with contextlib.suppress(OSError):
                os.kill(self._student, signal.SIGKILL)

    # recording ------------------------------------------------------------------------------

    def record(self, key: str, value: Any) -> None:
        """Record ``value`` (JSON) as seen by the witness; the judge reads ``witnessed(key)``."""
        self._records[key] = json.loads(json.dumps(value))
        self._write()

    def listing(self, relative: str) -> list[str]:
        """Record and return the names in a folder of the answers, as they are now."""
        folder = self._answers / relative
        names = (
            sorted(os.listdir(folder))[:1000]
            if folder.is_dir() and not folder.is_symlink()
            else None
        )
        self.record(f"listing:{relative}", names)
        return names or []

    def keep(self, path: Path, name: str) -> bool:
        """Copy the file at ``path`` (if it is one) to ``name`` in the answers and record it."""
        target = self._answers / name
        if path.is_symlink() or not path.is_file():
            self.record(f"kept:{name}", None)
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.{secrets.token_hex(4)}")
        shutil.copyfile(path, temporary, follow_symlinks=False)
        os.replace(temporary, target)
        self._files[name] = _digest(target)
        self.record(f"kept:{name}", True)
        return True

    def _write(self) -> None:
        body = json.dumps({"records": self._records, "files": self._files})
        signed = json.dumps({"body": body, "mac": sign(self._key, body)})
        temporary = self._answers / f".{MANIFEST_NAME}.{secrets.token_hex(4)}"
        temporary.write_text(signed)
        os.replace(temporary, self._answers / MANIFEST_NAME)


def _descendants(root: int, table: dict[int, tuple[int, str]] | None = None) -> set[int]:
    """Every process below ``root``."""
    table = _processes() if table is None else table
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _live(pids: set[int], table: dict[int, tuple[int, str]] | None = None) -> bool:
    """Whether any of ``pids`` still runs (not gone, not a zombie)."""
    table = _processes() if table is None else table
    return any(pid in table and table[pid][1] not in ("Z", "X") for pid in pids)


def _snapshot(folder: Path) -> list[tuple[str, int, int]]:
    try:
        return sorted(
            (
                e.name,
                e.stat(follow_symlinks=False).st_size,
                e.stat(follow_symlinks=False).st_mtime_ns,
            )
            for e in os.scandir(folder)
        )
    except OSError:
        return []


def _drop_capabilities() -> None:
    """The student's process keeps no capability (a warm sandbox's child has them in its own
    user namespace), so it cannot ptrace the witness whatever ``PR_SET_DUMPABLE`` says."""

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [(n, ctypes.c_uint32) for n in ("effective", "permitted", "inheritable")]

    libc = _libc()
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    header, data = Header(0x20080522, 0), (Data * 2)()  # _LINUX_CAPABILITY_VERSION_3
    libc.capset(ctypes.byref(header), data)


class StudentSide:
    """In the student's process: answers the witness's requests once the cells have run."""

    def __init__(self, answer: Any, pipe: _Pipe) -> None:
        self._answer, self._pipe = answer, pipe

    def answer(self, ask: Any) -> None:
        """Tell the witness the cells are done, then run its requests until it says goodbye."""
        self._pipe.send("cells done")
        _answer(self._answer, ask, self._pipe)


def fork_witness(
    answer: Any, questions: list[Any], answers_dir: Path, step_seconds: int, progress: Any
) -> int | StudentSide:
    """Fork the witness and the student's process, before any cell runs.

    In the parent (the witness): asks ``answer.witness(questions, w)`` once the child says its
    cells are done, and returns the exit code for the sandbox's process. In the child (the
    student's process, capabilities dropped): returns the :class:`StudentSide` to answer with.
    """
    student_reads, witness_writes = os.pipe()
    witness_reads, student_writes = os.pipe()
    _libc().prctl(PR_SET_CHILD_SUBREAPER, 1)  # orphans of the student's code come to the witness
    student = os.fork()
    if student == 0:  # the student's process: only answers
        os.close(witness_reads)
        os.close(witness_writes)
        _libc().prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        pipe = _Pipe(student_reads, student_writes)
        if pipe.receive() != "go":
            os._exit(3)
        _drop_capabilities()
        return StudentSide(answer, pipe)
    os.close(student_reads)
    os.close(student_writes)
    _libc().prctl(PR_SET_DUMPABLE, 0)
    key_path = answers_dir / KEY_NAME
    try:
        key = key_path.read_text().strip()
        key_path.unlink()
    except OSError:
        key = secrets.token_hex(32)  # no key from the grader: records nobody can verify
    pipe = _Pipe(witness_reads, witness_writes)
    pipe.send("go")
    witness = Witness(pipe, student, answers_dir, key, step_seconds)
    if pipe.receive() == "cells done":
        try:
            answer.witness(questions, witness)
        except BaseException as exc:  # noqa: BLE001 - reported as questions that could not be asked
            print(f"the grader's witness failed: {type(exc).__name__}: {exc}", flush=True)
            witness._give_up()
            _wait_for(student, witness)
            progress.write("questions failed\n")
            return 3
        pipe.send({"op": "__bye__"})
    return _wait_for(student, witness)


def _wait_for(student: int, witness: Witness) -> int:
    if witness.student_exit is not None:
        code = witness.student_exit
    else:
        try:
            _, status = os.waitpid(student, 0)
            code = os.waitstatus_to_exitcode(status)
        except ChildProcessError:
            code = 1
    return code if code >= 0 else 128 - code


def _answer(answer: Any, ask: Any, pipe: _Pipe) -> None:
    """The student's process: run each requested step of ``answer`` and reply, until told to stop."""
    ask.kept = {}
    while True:
        request = pipe.receive()
        if not isinstance(request, dict) or request.get("op") == "__bye__":
            return
        op = request.get("op")
        if op == "__reap__":
            with contextlib.suppress(ChildProcessError):
                while os.waitpid(-1, os.WNOHANG)[0]:
                    pass
            pipe.send({"reply": None})
            continue
        step = getattr(answer, str(op), None)
        args, kwargs = request.get("args", []), request.get("kwargs", {})
        if request.get("fork"):
            child = os.fork()
            if child == 0:
                try:
                    step(ask, *args, **kwargs)
                finally:
                    os._exit(0)
            pipe.send({"reply": "forked"})
            continue
        try:
            reply = step(ask, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - the asker's step failed on what the notebook did
            reply = {"asker_failed": f"{type(exc).__name__}: {exc}"[:500]}
        pipe.send({"reply": reply})
