"""Step 2, run sandboxed: one submission's notebook and the judge's questions, in bubblewrap.

The sandbox (Linux, ``bwrap``) has no network, runs as uid 65534 in its own user, PID, IPC and
mount namespaces, sees the Python environment read-only and of the course only ``course_lib``
(no grader code, no hidden checks, no solutions, no tests). Its only
writable places are a fresh home folder (its working directory), the answers folder and a private
``/tmp``; all of them are thrown away after judging. It dies with the grader, and when it ends
every process it started ends with it (its PID namespace goes). Time, memory, file-size and output
limits apply inside and outside the sandbox alike.

Where bubblewrap is missing or cannot start (macOS, a locked-down container) the same runner runs
with only those limits, and the run is marked unsandboxed: the gradebook and the feedback say so.
Set ``COURSE_SANDBOX=off`` to choose that on purpose.
"""

from __future__ import annotations

import functools
import json
import os
import resource
import select
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from teacher.grading.in_sandbox import ISOLATION_FAILED
from teacher.grading.paths import COURSE_LIB_DIR, EXERCISES_DIR, REPO_ROOT
from teacher.grading.records import SandboxRun
from teacher.grading.witness import prepare as prepare_witness

__all__ = ["Limits", "WarmSandbox", "run_sandboxed", "sandbox_available"]

RUNNER = Path(__file__).with_name("in_sandbox.py")
NOBODY = "65534"
TMP_LIMIT_BYTES = 512 << 20  # the private /tmp is memory: bounded
# What the sandbox sees of /etc: enough for the dynamic linker, user names and fonts, no secrets.
ETC_FILES = ("ld.so.cache", "passwd", "group", "nsswitch.conf", "localtime", "fonts", "hosts")


@dataclass(frozen=True)
class Limits:
    """What one submission may use; the defaults suit the course's exercises on a laptop."""

    timeout: float = 300  # seconds for the whole notebook and its questions
    cell_timeout: int = 60  # seconds per cell and per question
    memory_mb: int = 6144
    file_mb: int = 200  # largest file it may write
    output_mb: int = 20  # most output it may print


@functools.cache
def sandbox_available() -> bool:
    """True when bubblewrap is installed and can start a sandbox here (checked once)."""
    if os.environ.get("COURSE_SANDBOX", "").lower() == "off" or shutil.which("bwrap") is None:
        return False
    probe = [*_bwrap_prefix(), "--", "/usr/bin/env", "true"]
    try:
        return subprocess.run(probe, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _python_paths() -> list[Path]:
    """The folders the student's Python needs, read-only: the interpreter and its packages."""
    # Never sys.path itself: it holds the grader's working directory and PYTHONPATH, which may
    # be the teacher's folder of submissions.
    candidates = [Path(sys.prefix), Path(sys.base_prefix), Path(sys.exec_prefix)]
    candidates += [Path(p) for p in site.getsitepackages() if Path(p).is_dir()]
    if site.ENABLE_USER_SITE and Path(site.getusersitepackages()).is_dir():
        candidates.append(Path(site.getusersitepackages()))
    chosen: list[Path] = []
    for path in sorted({p.resolve() for p in candidates}, key=lambda p: len(p.parts)):
        inside_repo = path == REPO_ROOT or REPO_ROOT in path.parents
        if inside_repo and not (
            path == Path(sys.prefix).resolve() or Path(sys.prefix).resolve() in path.parents
        ):
            continue  # of the course's folder only the environment and course_lib are shown
        if path.parts[:2] == ("/", "usr") or any(c in path.parents or c == path for c in chosen):
            continue
        chosen.append(path)
    return chosen


def _mounted_under_tmp() -> list[str]:
    """What the sandbox binds below /tmp (a course or environment there), shallowest first."""
    mounted = [*_python_paths(), COURSE_LIB_DIR]
    return [
        str(p) for p in sorted(mounted, key=lambda p: len(p.parts)) if Path("/tmp") in p.parents
    ]


def _bwrap_prefix() -> list[str]:
    command = ["bwrap", "--unshare-all", "--die-with-parent", "--new-session",
               "--uid", NOBODY, "--gid", NOBODY, "--hostname", "grader",
               "--ro-bind", "/usr", "/usr", "--proc", "/proc", "--dev", "/dev",
               "--size", str(TMP_LIMIT_BYTES), "--tmpfs", "/tmp"]  # fmt: skip
    for top in ("bin", "lib", "lib64", "sbin"):
        path = Path("/") / top
        if path.is_symlink():
            command += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            command += ["--ro-bind", str(path), str(path)]
    for name in ETC_FILES:
        if (Path("/etc") / name).exists():
            command += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
    return command


def _sandbox_command(mounts: list[str], program: list[str]) -> list[str]:
    """bubblewrap with what every sandbox sees (the environment read-only, course_lib, a
    clean environment), plus ``mounts``, running ``program``."""
    command = _bwrap_prefix()
    for path in _python_paths():
        command += ["--ro-bind", str(path), str(path)]
    command += ["--ro-bind", str(COURSE_LIB_DIR), str(COURSE_LIB_DIR)]
    command += [*mounts, "--clearenv"]
    for key, value in _environment("/submission").items():
        command += ["--setenv", key, value]
    # -P: the script's folder is not put on sys.path.
    return [*command, sys.executable, "-P", *program]


def _bwrap_command(
    job_dir: Path, answers_dir: Path, home_dir: Path, cell_timeout: int
) -> list[str]:
    """A cold sandbox for one job."""
    mounts = ["--ro-bind", str(job_dir), "/grader", "--bind", str(answers_dir), "/answers",
              "--bind", str(home_dir), "/submission", "--chdir", "/submission"]  # fmt: skip
    program = ["/grader/run_notebook.py", "/grader", "/answers", str(cell_timeout)]
    return _sandbox_command(mounts, program)


def _environment(home: str) -> dict[str, str]:
    return {
        "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
        "HOME": home,
        "PYTHONPATH": str(REPO_ROOT),  # inside the sandbox only course_lib is there to import
        "CUDA_VISIBLE_DEVICES": "",
        "COURSE_DEVICE": "cpu",
        "MPLBACKEND": "Agg",
        "MPLCONFIGDIR": f"{home}/.matplotlib",
        "IPYTHONDIR": f"{home}/.ipython",
        "OMP_NUM_THREADS": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "TQDM_DISABLE": "1",
    }


def _limits(limits: Limits) -> None:
    """Runs in the child before it starts: its own session, and memory and file-size limits."""
    os.setsid()
    memory, files = limits.memory_mb << 20, limits.file_mb << 20
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_FSIZE, (files, files))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


class _OutputTap:
    """Drains the child's output in a thread: keeps the tail, counts, stops a flood."""

    def __init__(self, stream: object, limit_bytes: int, on_flood: object) -> None:
        self.tail = b""
        self.total = 0
        self.flooded = False
        self._stream, self._limit, self._on_flood = stream, limit_bytes, on_flood
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()

    def _drain(self) -> None:
        while chunk := self._stream.read1(1 << 16):  # type: ignore[attr-defined]
            self.total += len(chunk)
            self.tail = (self.tail + chunk)[-4000:]
            if self.total > self._limit and not self.flooded:
                self.flooded = True
                self._on_flood()  # type: ignore[operator]


def _read_limited(path: Path, limit: int = 1 << 20) -> str:
    """A file the student's process wrote: no links, bounded, any bytes."""
    try:
        if path.is_symlink() or not path.is_file():
            return ""
        with path.open("rb") as handle:
            return handle.read(limit).decode("utf-8", "replace")
    except OSError:
        return ""


def _reported_cell_errors(answers_dir: Path) -> list[str]:
    try:
        errors = json.loads(_read_limited(answers_dir / "cell_errors.json") or "[]")
    except json.JSONDecodeError:
        return []
    if not isinstance(errors, list):
        return []
    return [str(e)[:2000] for e in errors[:200]]


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _prepare(workdir: Path, cells: tuple[str, ...], exercise: str, questions: list) -> None:
    job_dir, answers_dir, home_dir = workdir / "job", workdir / "answers", workdir / "home"
    for folder in (job_dir, answers_dir, home_dir):
        folder.mkdir(parents=True)
    (job_dir / "cells.json").write_text(json.dumps(list(cells)))
    (job_dir / "questions.json").write_text(json.dumps(questions))
    shutil.copyfile(RUNNER, job_dir / "run_notebook.py")
    shutil.copyfile(EXERCISES_DIR / exercise / "answer.py", job_dir / "answer.py")
    for folder in (answers_dir, home_dir):
        folder.chmod(0o777)  # writable by the sandbox's unprivileged user
    prepare_witness(workdir)  # witness.py and this job's key (see witness.py)


def _run_cold(workdir: Path, limits: Limits, sandboxed: bool) -> tuple[int | None, bytes, bool]:
    """A fresh process (in a fresh bubblewrap sandbox when ``sandboxed``) for this one submission."""
    job_dir, answers_dir, home_dir = workdir / "job", workdir / "answers", workdir / "home"
    if sandboxed:
        command = _bwrap_command(job_dir, answers_dir, home_dir, limits.cell_timeout)
        env, cwd = None, None
    else:
        command = [sys.executable, str(job_dir / "run_notebook.py"), str(job_dir), str(answers_dir),
                   str(limits.cell_timeout)]  # fmt: skip
        env, cwd = _environment(str(home_dir)), home_dir
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=lambda: _limits(limits),  # noqa: PLW1509
    )
    tap = _OutputTap(process.stdout, limits.output_mb << 20, lambda: _kill_group(process))
    try:
        returncode: int | None = process.wait(timeout=limits.timeout)
    except subprocess.TimeoutExpired:
        returncode = None
    finally:
        _kill_group(process)  # whatever it left running in its session goes too
        process.wait()
        tap.thread.join(timeout=10)
    return returncode, tap.tail, tap.flooded


class WarmUnavailable(RuntimeError):
    """The warm sandbox could not run this job; the caller runs it in a cold sandbox instead."""


class WarmSandbox:
    """A zygote in one bubblewrap sandbox that forks a walled-off child per submission.

    Starting Python and importing torch (about 1.5 s of CPU) is paid once per zygote instead of
    once per submission. Each child is isolated from the zygote and from other jobs as described
    in ``in_sandbox``; jobs run one at a time per zygote (one zygote per grading thread). A job
    that times out or floods its output takes the zygote down with it; the next job starts a new
    one. Jobs live in this sandbox's own folder (``new_workdir``).
    """

    def __init__(self, scratch: Path, limits: Limits) -> None:
        self.zone = Path(tempfile.mkdtemp(prefix="warm-", dir=scratch))
        self.zone.chmod(0o755)
        self.limits = limits
        self.process: subprocess.Popen | None = None
        self._buffer = b""

    def new_workdir(self) -> Path:
        return Path(tempfile.mkdtemp(prefix="grade-", dir=self.zone))

    def _start(self) -> None:
        runner = self.zone / "run_notebook.py"
        shutil.copyfile(RUNNER, runner)
        mounts = ["--bind", str(self.zone), "/jobs", "--dir", "/submission", "--dir", "/answers",
                  "--dir", "/grader", "--ro-bind", str(runner), "/runner.py", "--chdir", "/"]  # fmt: skip
        command = _sandbox_command(mounts, ["/runner.py", "--serve"])
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            preexec_fn=os.setsid,  # noqa: PLW1509
        )
        self._buffer = b""
        if self._read_line(time.monotonic() + 120) != {"ready": True}:
            self.close()
            raise WarmUnavailable("the warm sandbox did not start")

    def _read_line(self, deadline: float, output: Path | None = None) -> dict | None:
        """The zygote's next line, or None at the deadline or when ``output`` floods."""
        assert self.process is not None and self.process.stdout is not None
        descriptor = self.process.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([descriptor], [], [], min(left, 0.2))
            if ready:
                chunk = os.read(descriptor, 4096)
                if not chunk:
                    raise WarmUnavailable("the warm sandbox ended")
                self._buffer += chunk
                if len(self._buffer) > 1 << 16:
                    raise WarmUnavailable("the warm sandbox wrote nonsense")
            elif output is not None and output.exists():
                if output.stat().st_size > self.limits.output_mb << 20:
                    return None
        line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            reply = json.loads(line)
        except ValueError:
            raise WarmUnavailable("the warm sandbox wrote nonsense") from None
        if not isinstance(reply, dict):
            raise WarmUnavailable("the warm sandbox wrote nonsense")
        return reply

    def run(self, workdir: Path) -> tuple[int | None, bytes, bool]:
        """Run the job prepared in ``workdir``: exit code (None: stopped), output tail, flooded."""
        if self.process is None or self.process.poll() is not None:
            self._start()
        assert self.process is not None and self.process.stdin is not None
        request = {"job": workdir.name, "cell_timeout": self.limits.cell_timeout,
                   "memory_mb": self.limits.memory_mb, "file_mb": self.limits.file_mb,
                   "keep_under_tmp": _mounted_under_tmp()}  # fmt: skip
        output = workdir / "output.txt"
        try:
            self.process.stdin.write(json.dumps(request).encode() + b"\n")
            self.process.stdin.flush()
            reply = self._read_line(time.monotonic() + self.limits.timeout, output)
            if reply is not None and (reply.get("job") != workdir.name or "exit" not in reply):
                raise WarmUnavailable("the warm sandbox answered for another job")
        except (OSError, ValueError) as exc:
            self.close()
            raise WarmUnavailable(f"the warm sandbox failed ({exc})") from None
        except WarmUnavailable:
            self.close()
            raise
        flooded = output.exists() and output.stat().st_size > self.limits.output_mb << 20
        if reply is None:
            self.close()  # the only way to stop its child: the whole sandbox goes
        elif reply.get("exit") == ISOLATION_FAILED:
            self.close()
            raise WarmUnavailable(_read_limited(output, 4000))
        tail = b""
        if output.exists():
            with output.open("rb") as handle:
                handle.seek(max(0, output.stat().st_size - 4000))
                tail = handle.read()
        return (None if reply is None or flooded else int(reply["exit"])), tail, flooded

    def close(self) -> None:
        if self.process is not None:
            _kill_group(self.process)
            self.process.wait()
            self.process = None


def run_sandboxed(
    cells: tuple[str, ...],
    exercise: str,
    questions: list,
    workdir: Path,
    limits: Limits | None = None,
    warm: WarmSandbox | None = None,
) -> SandboxRun:
    """Run ``cells`` then ``exercise``'s questions in a sandbox, with ``workdir`` as its only disk.

    With ``warm``, ``workdir`` must come from ``warm.new_workdir()``; if the warm sandbox cannot
    run the job, it runs in a cold one instead.
    """
    limits = limits or Limits()
    _prepare(workdir, cells, exercise, questions)
    sandboxed = sandbox_available()
    result = None
    if warm is not None and sandboxed:
        try:
            result = warm.run(workdir)
        except WarmUnavailable:
            shutil.rmtree(workdir)
            _prepare(workdir, cells, exercise, questions)
    if result is None:
        result = _run_cold(workdir, limits, sandboxed)
    returncode, tail, flooded = result
    answers_dir = workdir / "answers"
    progress = _read_limited(answers_dir / "progress.txt").strip().splitlines()
    run = SandboxRun(
        answers_dir=answers_dir,
        sandboxed=sandboxed,
        returncode=returncode,
        where=(progress or ["start-up"])[-1][:80],
        cell_errors=_reported_cell_errors(answers_dir),
        output_tail=tail.decode("utf-8", "replace"),
        output_truncated=flooded,
    )
    run.problem = _problem(run, limits, flooded)
    return run


def _problem(run: SandboxRun, limits: Limits, flooded: bool) -> str | None:
    where = run.where
    if flooded:
        return f"printed more than {limits.output_mb} MB of output (stopped in {where}): print less"
    if run.returncode is None:
        return f"stopped after {limits.timeout:g} s in {where} (an endless loop that ignores interrupts?)"
    if run.returncode == 0 and where == "done":
        return None
    signum = -run.returncode if run.returncode < 0 else run.returncode - 128
    if run.returncode < 0 or (run.sandboxed and 128 < run.returncode < 160):
        name = (
            signal.Signals(signum).name if signum in signal.valid_signals() else f"signal {signum}"
        )
        why = {
            "SIGXFSZ": f": a file grew past {limits.file_mb} MB",
            "SIGKILL": ": killed (memory?)",
        }
        return f"the notebook's process died with {name} in {where}{why.get(name, '')}"
    if where == "questions failed":
        last = (run.output_tail.strip().splitlines() or ["no message"])[-1][:300]
        return f"the grader's questions could not be asked after the notebook ran ({last})"
    return (
        f"the notebook's process exited with code {run.returncode} in {where}, before the grader's "
        "questions were answered: a notebook must not call os._exit() or end its own process"
    )
