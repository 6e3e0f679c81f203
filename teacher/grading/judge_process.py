"""Step 3, where the judge runs: a limited process of its own, one forked child per check.

A student's answer is data, but some data is costly to look at: an ONNX graph of 20,000 chained
2048x2048 MatMuls fits in 0.6 MB, an ``Expand`` to 60000x60000 asks for 14 GB, a pickled list of
48 MB takes the weights-only unpickler 15 s. So no check runs in the grading process. One judge
process per grading process (``python -m``-style, started on the first check) imports torch,
onnx and onnxruntime once and runs in a bubblewrap sandbox of its own: no network, the Python
environment, ``teacher/`` and ``course_lib`` read-only, an empty ``/tmp``, and no other file; in
particular no solution notebook and no student's folder. Each request hands it the two answers
folders *as open file descriptors* (``SCM_RIGHTS``), read through ``/proc/self/fd/N``: the only
files it can reach are those answers. Every check then runs in a child forked from it with its
own limits (address space, CPU seconds, a wall-clock deadline): a bomb costs the student that
check ("needed more than N s of CPU on your answer"), never the run, and the next check and the
next student are judged as before. Without bubblewrap the same process runs with the limits only.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import os
import resource
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from teacher.grading.paths import COURSE_LIB_DIR, GRADER_DIR, REPO_ROOT
from teacher.grading.records import CheckResult

__all__ = ["JudgeLimits", "JudgeProcess", "judge_isolated"]

MESSAGE_LIMIT = 1 << 20
ETC_FILES = ("ld.so.cache", "passwd", "group", "nsswitch.conf", "localtime")
PRELOAD = ("torch", "numpy", "onnx", "onnxruntime", "safetensors.torch", "course_lib.safe_io")


@dataclass(frozen=True)
class JudgeLimits:
    """What one check may use while it looks at one student's answers."""

    memory_mb: int = 4096  # address space of the check's process (torch and onnxruntime: ~0.8 GB)
    cpu_seconds: int = 20  # CPU time of the check's process
    wall_seconds: float = 120  # a deadline for a check that sleeps or waits


def _bwrap_available() -> bool:
    from teacher.grading.sandbox import sandbox_available

    return sandbox_available()


def _judge_command() -> list[str]:
    """bubblewrap around the judge process: environment, ``teacher/``, ``course_lib``, nothing else."""
    from teacher.grading.sandbox import _python_paths, system_binds

    command = ["bwrap", "--unshare-all", "--die-with-parent", "--new-session",
               "--ro-bind", "/usr", "/usr", "--proc", "/proc", "--dev", "/dev",
               "--tmpfs", "/tmp", "--dir", "/judge", "--chdir", "/judge"]  # fmt: skip
    command += system_binds(ETC_FILES)  # fewer than a notebook's sandbox: no fonts, no hosts
    for path in _python_paths():
        command += ["--ro-bind", str(path), str(path)]
    for path in (GRADER_DIR.parent, COURSE_LIB_DIR):  # teacher/ (grader, checks) and course_lib
        command += ["--ro-bind", str(path), str(path)]
    command += ["--clearenv"]
    for key, value in _environment().items():
        command += ["--setenv", key, value]
    return command


def _environment() -> dict[str, str]:
    return {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "PYTHONPATH": str(REPO_ROOT),
        "HOME": "/tmp",
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


class JudgeProcess:
    """The judge process: started on first use, restarted if it dies, one request at a time."""

    def __init__(self, limits: JudgeLimits | None = None, sandboxed: bool | None = None) -> None:
        self.limits = limits or JudgeLimits()
        self.sandboxed = _bwrap_available() if sandboxed is None else sandboxed
        self._process: subprocess.Popen | None = None
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()

    def _start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        program = [sys.executable, "-P", "-c",
                   "from teacher.grading.judge_process import serve; serve()",
                   str(theirs.fileno())]  # fmt: skip
        if self.sandboxed:
            command, env, cwd = [*_judge_command(), *program], None, None
        else:
            command, env, cwd = program, {**os.environ, **_environment()}, "/"
        self._process = subprocess.Popen(
            command,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=None,  # a judge that cannot start says why on the teacher's terminal
            pass_fds=[theirs.fileno()],
            start_new_session=True,
        )
        theirs.close()
        self._socket = ours
        if self._receive(time.monotonic() + 300) != {"ready": True}:
            self.close()
            raise RuntimeError("the judge process did not start (see the messages above)")

    def _receive(self, deadline: float) -> Any:
        assert self._socket is not None
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self._socket], [], [], min(left, 1.0))
            if ready:
                data = self._socket.recv(MESSAGE_LIMIT)
                return json.loads(data) if data else None
            if self._process is not None and self._process.poll() is not None:
                return None

    def judge(
        self, exercise: str, student: Any, solution: Any, questions: list[Any]
    ) -> list[CheckResult] | None:
        """Every check of ``exercise``, each in its own limited child; None if the process failed."""
        request = {
            "exercise": exercise,
            "questions": questions,
            "limits": vars(self.limits),
            "answers": [answers.describe() for answers in (student, solution)],
        }
        with self._lock:
            for _attempt in range(2):
                descriptors = []
                try:
                    if self._process is None or self._process.poll() is not None:
                        self._start()
                    assert self._socket is not None
                    descriptors = [answers.open_folder() for answers in (student, solution)]
                    socket.send_fds(self._socket, [json.dumps(request).encode()], descriptors)
                    reply = self._receive(time.monotonic() + 3600)
                except (OSError, ValueError, RuntimeError):
                    reply = None
                finally:
                    for descriptor in descriptors:
                        os.close(descriptor)
                if isinstance(reply, list):
                    return [CheckResult(**result) for result in reply]
                self.close()
        return None

    def close(self) -> None:
        if self._process is not None:
            try:
                os.killpg(self._process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self._process.wait()
            self._process = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None


_shared: JudgeProcess | None = None
_shared_lock = threading.Lock()


def judge_isolated(
    exercise: str, student: Any, solution: Any, questions: list[Any]
) -> list[CheckResult] | None:
    """Judge in this grading process's judge process (started on first use, ended at exit)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = JudgeProcess()
            atexit.register(_shared.close)
        shared = _shared
    return shared.judge(exercise, student, solution, questions)


# --- inside the judge process -----------------------------------------------------------------


def _why_it_died(status: int, limits: dict) -> str:
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        if number == signal.SIGXCPU:
            return (
                f"checking your answer needed more than {limits['cpu_seconds']} s of CPU (stopped): "
                "an answer of this exercise is checked in well under a second"
            )
        name = signal.Signals(number).name if number in signal.valid_signals() else str(number)
        return (
            f"the check stopped on your answer ({name}): it needs more than "
            f"{limits['memory_mb']} MB or does something this exercise's answers never do"
        )
    return f"the check ended without a verdict (exit code {os.WEXITSTATUS(status)})"


def _run_check(exercise: Any, check: Any, fixtures: dict, limits: dict) -> CheckResult:
    """Fork, limit, run one check in the child; whatever happens, a verdict for the parent."""
    points = check.points
    read, write = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.close(read)
            memory = limits["memory_mb"] << 20
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
            cpu = limits["cpu_seconds"]
            resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            result = exercise.run_check(check, fixtures)
            payload = json.dumps(dataclasses.asdict(result))
            with os.fdopen(write, "wb") as pipe:
                pipe.write(payload.encode())
        except MemoryError:
            message = f"checking your answer needed more than {limits['memory_mb']} MB (stopped)"
            payload = json.dumps({"name": check.__name__, "points": 0, "max_points": points,
                                  "message": message})  # fmt: skip
            try:
                os.write(write, payload.encode())
            except OSError:
                pass
        except BaseException:  # noqa: BLE001 - the parent reports a check without a verdict
            traceback.print_exc()
        finally:
            os._exit(0)
    os.close(write)
    deadline = time.monotonic() + limits["wall_seconds"]
    data = b""
    timed_out = False
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        ready, _, _ = select.select([read], [], [], left)
        if not ready:
            continue
        chunk = os.read(read, 1 << 16)
        if not chunk:
            break
        data += chunk
        if len(data) > MESSAGE_LIMIT:
            break
    os.close(read)
    if timed_out:
        os.kill(child, signal.SIGKILL)
    _, status = os.waitpid(child, 0)
    try:
        return CheckResult(**json.loads(data))
    except (ValueError, TypeError):
        pass
    if timed_out:
        message = (
            f"checking your answer took more than {limits['wall_seconds']:g} s (stopped): "
            "an answer of this exercise is checked in well under a second"
        )
    else:
        message = _why_it_died(status, limits)
    return CheckResult(check.__name__, 0, points, message)


def judge_here(request: dict, folders: list[Path]) -> list[dict]:
    """One request, in the judge process: every check of the exercise in its own child."""
    from teacher.grading.judge import Answers, load_exercise

    exercise = load_exercise(request["exercise"])
    student, solution = (
        Answers.from_description(folder, description)
        for folder, description in zip(folders, request["answers"], strict=True)
    )
    fixtures = {"student": student, "solution": solution, "questions": request["questions"]}
    results = [
        _run_check(exercise, check, fixtures, request["limits"]) for check in exercise.checks
    ]
    return [dataclasses.asdict(result) for result in results]


def serve() -> None:
    """The judge process's loop: a request with two folder descriptors in, verdicts out."""
    import importlib

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - a check that needs it says so itself
            pass
    try:
        import onnxruntime
        import torch

        torch.set_num_threads(1)
        onnxruntime.set_default_logger_severity(3)  # a refused answer is its check's verdict
    except Exception:  # noqa: BLE001
        pass
    channel = socket.socket(fileno=int(sys.argv[1]))
    channel.send(json.dumps({"ready": True}).encode())
    while True:
        try:
            message, descriptors, _, _ = socket.recv_fds(channel, MESSAGE_LIMIT, 2)
        except OSError:
            return
        if not message:
            return
        try:
            request = json.loads(message)
            folders = [Path(f"/proc/self/fd/{d}") for d in descriptors]
            reply: Any = judge_here(request, folders)
        except Exception:  # noqa: BLE001 - the grader retries once, then reports
            traceback.print_exc()
            reply = None
        finally:
            for descriptor in descriptors:
                os.close(descriptor)
        channel.send(json.dumps(reply).encode())
