"""Step 2, run sandboxed: one submission's notebook and the judge's questions, in bubblewrap.

The sandbox (Linux, ``bwrap``) has no network, runs as uid 65534 in its own user, PID, IPC and
mount namespaces, sees the Python environment read-only and of the course only ``course_lib``
(no grader code, no hidden checks, no solutions, no tests). Its only
writable places are a fresh home folder (its working directory), the answers folder and a private
``/tmp``; all of them are thrown away after judging. It dies with the grader, and when it ends
every process it started ends with it (its PID namespace goes). Time, memory, file-size and output
limits apply inside and outside the sandbox alike.

Limits hold for the submission's whole process tree, not per process (``Limits``): when the
grader runs as root each sandbox runs as a host uid of its own (never root), so ``RLIMIT_NPROC``
caps its processes and threads; its home folder and ``/tmp`` are size-limited tmpfs; and a
watchdog (``_Watchdog``) measures the tree twice a second, stopping it when its memory (PSS, all
processes together), its process count, its number of busy processes or its answers folder's disk
use passes the limit. A bomb costs its own submission, never the run or another student.
(cgroups v2 would let the kernel do this; this machine's are not delegated, hence the watchdog.)

Where bubblewrap is missing or cannot start (macOS, a locked-down container) the same runner runs
with only those limits, and the run is marked unsandboxed: the gradebook and the feedback say so.
Set ``COURSE_SANDBOX=off`` to choose that on purpose.
"""

from __future__ import annotations

import functools
import json
import os
import re
import resource
import secrets
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

from teacher.grading.in_sandbox import CELL_OUTPUT_LIMIT, ISOLATION_FAILED
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
    memory_mb: int = 6144  # every process of the submission together (and each one alone)
    file_mb: int = 200  # largest file it may write
    output_mb: int = 20  # most output it may print
    processes: int = 96  # processes and threads at once (the warm zygote's included)
    busy_processes: int = 4  # processes running at once, for more than ``busy_seconds``
    busy_seconds: float = 3.0
    disk_mb: int = 512  # its home folder, its /tmp and its answers folder, each


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


def _bwrap_prefix(tmp_bytes: int = TMP_LIMIT_BYTES) -> list[str]:
    command = ["bwrap", "--unshare-all", "--die-with-parent", "--new-session",
               "--uid", NOBODY, "--gid", NOBODY, "--hostname", "grader",
               "--ro-bind", "/usr", "/usr", "--proc", "/proc", "--dev", "/dev",
               "--perms", "1777", "--size", str(tmp_bytes), "--tmpfs", "/tmp"]  # fmt: skip
    return command + system_binds()


def system_binds(etc_files: tuple[str, ...] = ETC_FILES) -> list[str]:
    """bubblewrap arguments for the system's own folders a Python needs, read-only: ``/bin``,
    ``/lib``... (links kept as links) and the few ``/etc`` files named in ``etc_files``."""
    binds: list[str] = []
    for top in ("bin", "lib", "lib64", "sbin"):
        path = Path("/") / top
        if path.is_symlink():
            binds += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            binds += ["--ro-bind", str(path), str(path)]
    for name in etc_files:
        if (Path("/etc") / name).exists():
            binds += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
    return binds


def _sandbox_command(
    mounts: list[str], program: list[str], tmp_bytes: int = TMP_LIMIT_BYTES
) -> list[str]:
    """bubblewrap with what every sandbox sees (the environment read-only, course_lib, a
    clean environment), plus ``mounts``, running ``program``."""
    command = _bwrap_prefix(tmp_bytes)
    for path in _python_paths():
        command += ["--ro-bind", str(path), str(path)]
    command += ["--ro-bind", str(COURSE_LIB_DIR), str(COURSE_LIB_DIR)]
    command += [*mounts, "--clearenv"]
    for key, value in _environment("/submission").items():
        command += ["--setenv", key, value]
    # -P: the script's folder is not put on sys.path.
    return [*command, sys.executable, "-P", *program]


def _bwrap_command(job_dir: Path, answers_dir: Path, limits: Limits) -> list[str]:
    """A cold sandbox for one job: its home folder is a size-limited tmpfs of its own."""
    disk = str(limits.disk_mb << 20)
    mounts = ["--ro-bind", str(job_dir), "/grader", "--bind", str(answers_dir), "/answers",
              "--size", disk, "--perms", "0777", "--tmpfs", "/submission",
              "--chdir", "/submission"]  # fmt: skip
    program = ["/grader/run_notebook.py", "/grader", "/answers", str(limits.cell_timeout)]
    return _sandbox_command(mounts, program, limits.disk_mb << 20)


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


def _limits(limits: Limits, per_process: bool = True) -> None:
    """Runs in the child before it starts: its own session, memory and file-size limits, and
    first in line for the kernel's OOM killer."""
    os.setsid()
    if per_process:
        memory, files = limits.memory_mb << 20, limits.file_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_FSIZE, (files, files))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    try:
        Path("/proc/self/oom_score_adj").write_text("1000")
    except OSError:
        pass


# --- a host uid of its own per sandbox (when the grader is root) ------------------------------

HOST_UID_BASE = 1_100_000_000  # far above any real user's uid (and below 2**31); not in /etc/passwd


def _new_host_uid() -> int | None:
    """A fresh unprivileged host uid for one sandbox, or None where the grader is not root or
    the machine cannot run a sandbox as another uid (then only the watchdog limits the tree)."""
    tools = ("setpriv", "unshare")
    if os.geteuid() != 0 or not all(map(shutil.which, tools)) or not _host_uid_works():
        return None
    return HOST_UID_BASE + secrets.randbelow(900_000_000)


@functools.cache
def _host_uid_works() -> bool:
    try:
        process = _popen(
            _sandbox_command([], ["-c", "pass"]), Limits(), HOST_UID_BASE - 1,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        return process.wait(timeout=60) == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _user_namespace(host_uid: int) -> tuple[subprocess.Popen, int]:
    """A user namespace in which the sandbox's uid 65534 is ``host_uid`` (and root stays root,
    for bubblewrap's own set-up): a process that holds it, and a descriptor of it."""
    holder = subprocess.Popen(["unshare", "--user", "sleep", "120"], stdin=subprocess.DEVNULL)
    own = os.readlink("/proc/self/ns/user")
    deadline = time.monotonic() + 10
    while os.readlink(f"/proc/{holder.pid}/ns/user") == own:
        if time.monotonic() > deadline or holder.poll() is not None:
            holder.kill()
            holder.wait()
            raise OSError("unshare --user did not start")
        time.sleep(0.005)
    try:
        for name in ("uid_map", "gid_map"):
            Path(f"/proc/{holder.pid}/{name}").write_text(f"{NOBODY} {host_uid} 1\n0 0 1\n")
        return holder, os.open(f"/proc/{holder.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        holder.kill()
        holder.wait()
        raise


def _as_host_uid(command: list[str], userns_fd: int) -> list[str]:
    """``command`` (bubblewrap as root) entering the user namespace ``userns_fd`` and running its
    program as that namespace's 65534 (``setpriv``, all capabilities dropped)."""
    program = len(command) - 1 - command[::-1].index(sys.executable)
    head, tail = command[:program], command[program:]
    out = ["bwrap", "--userns", str(userns_fd), "--unshare-ipc", "--unshare-pid", "--unshare-net",
           "--unshare-uts", "--unshare-cgroup-try", "--cap-add", "CAP_SETUID", "--cap-add",
           "CAP_SETGID"]  # fmt: skip
    skip = 0
    for index, word in enumerate(head[1:], start=1):
        if skip:
            skip -= 1
        elif word == "--unshare-all":
            continue
        elif word in ("--uid", "--gid"):
            skip = 1
        else:
            if word in ("--ro-bind", "--bind") and index + 2 < len(head):
                # bubblewrap (as root) would make the folders above DEST 0700: the sandbox's
                # uid could not reach the Python under /root. Make them 0755 first.
                for parent in reversed(Path(head[index + 2]).parents[:-1]):
                    out += ["--perms", "0755", "--dir", str(parent)]
            out.append(word)
    setpriv = ["/usr/bin/setpriv", "--reuid", NOBODY, "--regid", NOBODY, "--clear-groups",
               "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"]  # fmt: skip
    return [*out, *setpriv, *tail]


def _popen(
    command: list[str], limits: Limits, host_uid: int | None, per_process: bool = True, **kwargs
) -> subprocess.Popen:
    """Start ``command`` (bubblewrap) with ``_limits``; with ``host_uid``, its program runs as
    that host uid, whose processes and threads ``RLIMIT_NPROC`` counts (root's it does not)."""
    holder, descriptors = None, []
    if host_uid is not None:
        try:
            holder, userns = _user_namespace(host_uid)
        except OSError as exc:  # as before: only the watchdog limits this one's tree
            print(f"grading: no host uid of its own for this sandbox ({exc})", file=sys.stderr)
            host_uid = None
        else:
            descriptors.append(userns)
            command = _as_host_uid(command, userns)

    def prepare() -> None:
        _limits(limits, per_process=per_process)
        if host_uid is not None:
            resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes, limits.processes))

    try:
        return subprocess.Popen(command, pass_fds=descriptors, preexec_fn=prepare, **kwargs)  # noqa: PLW1509
    finally:
        for descriptor in descriptors:
            os.close(descriptor)
        if holder is not None:
            holder.kill()  # bubblewrap holds the namespace from here
            holder.wait()


# --- the watchdog: limits on the whole process tree -------------------------------------------

_PAGE = os.sysconf("SC_PAGE_SIZE")


def _process_table() -> dict[int, tuple[int, str, int]]:
    """pid -> (parent pid, state, threads) for every process this grader can see."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as handle:
                stat = handle.read().decode("ascii", "replace")
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 17:
            table[int(entry.name)] = (int(fields[1]), fields[0], int(fields[17]))
    return table


def _tree(root: int, table: dict[int, tuple[int, str, int]]) -> list[int]:
    """``root`` and every process below it (orphans of the sandbox stay below: their new
    parent is the sandbox's PID 1, and ``setsid()`` changes no parent)."""
    children: dict[int, list[int]] = {}
    for pid, (parent, _, _) in table.items():
        children.setdefault(parent, []).append(pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in table:
            found.append(pid)
            todo += children.get(pid, [])
    return found


def _memory_bytes(pids: list[int], limit: int) -> int:
    """The tree's memory: the sum of RSS, or, when that is over ``limit``, of PSS (pages shared
    between forks, such as the zygote's torch, counted once)."""
    rss = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm", "rb") as handle:
                rss += int(handle.read().split()[1]) * _PAGE
        except (OSError, IndexError, ValueError):
            continue
    if rss <= limit:
        return rss
    pss = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup", "rb") as handle:
                for line in handle:
                    if line.startswith(b"Pss:"):
                        pss += int(line.split()[1]) << 10
                        break
        except (OSError, IndexError, ValueError):
            continue
    return pss


def _disk_bytes(folder: Path, most_entries: int = 20_000) -> int:
    """Bytes on disk under ``folder`` (links not followed); stops counting after ``most_entries``."""
    total, seen, todo = 0, 0, [str(folder)]
    while todo and seen < most_entries:
        try:
            with os.scandir(todo.pop()) as entries:
                for entry in entries:
                    seen += 1
                    info = entry.stat(follow_symlinks=False)
                    total += info.st_blocks * 512
                    if entry.is_dir(follow_symlinks=False):
                        todo.append(entry.path)
        except OSError:
            continue
    return total


class _Watchdog:
    """Measures one sandbox's process tree twice a second and kills all of it, once, when it
    passes a limit of ``Limits``; ``verdict`` then says which, in the grader's words."""

    def __init__(self, root: int, limits: Limits, answers_dir: Path, interval: float = 0.5):
        self.root, self.limits, self.answers_dir = root, limits, answers_dir
        self.interval = interval
        self.verdict: str | None = None
        self._busy_since: float | None = None
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=10)

    def _watch(self) -> None:
        ticks = 0
        while not self._stop.wait(self.interval):
            try:
                self.verdict = self._check(ticks)
            except Exception:  # noqa: BLE001 - a failed measurement must not end the run
                self.verdict = None
            if self.verdict:
                self._kill()
                return
            ticks += 1

    def _check(self, ticks: int) -> str | None:
        limits = self.limits
        table = _process_table()
        pids = _tree(self.root, table)
        tasks = sum(table[p][2] for p in pids)
        if tasks > limits.processes:
            return f"it ran more than {limits.processes} processes and threads at once"
        memory = limits.memory_mb << 20
        if _memory_bytes(pids, memory) > memory:
            return f"its processes used more than {limits.memory_mb} MB of memory together"
        busy = sum(table[p][1] == "R" for p in pids)
        now = time.monotonic()
        if busy <= limits.busy_processes:
            self._busy_since = None
        elif self._busy_since is None:
            self._busy_since = now
        elif now - self._busy_since >= limits.busy_seconds:
            return (
                f"it kept {busy} processes busy at once for {limits.busy_seconds:g} s "
                f"(at most {limits.busy_processes} may run at once)"
            )
        if ticks % 4 == 0 and _disk_bytes(self.answers_dir) > limits.disk_mb << 20:
            return f"it wrote more than {limits.disk_mb} MB into its answers folder"
        return None

    def _kill(self) -> None:
        for pid in _tree(self.root, _process_table()):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


@dataclass
class _Outcome:
    """How the sandboxed process ended: exit code (None: stopped), output tail, flooded, and the
    watchdog's verdict when it stopped the tree for passing a limit."""

    returncode: int | None
    tail: bytes
    flooded: bool
    over_limit: str | None = None


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
        folder.chmod(0o755)
    workdir.chmod(0o711)  # a sandbox's own host uid must reach its folders, not list them
    (job_dir / "cells.json").write_text(json.dumps(list(cells)))
    (job_dir / "questions.json").write_text(json.dumps(questions))
    shutil.copyfile(RUNNER, job_dir / "run_notebook.py")
    shutil.copyfile(EXERCISES_DIR / exercise / "answer.py", job_dir / "answer.py")
    for folder in (answers_dir, home_dir):
        folder.chmod(0o777)  # writable by the sandbox's unprivileged user
    prepare_witness(workdir)  # witness.py and this job's key (see witness.py)


def _run_cold(workdir: Path, limits: Limits, sandboxed: bool) -> _Outcome:
    """A fresh process (in a fresh bubblewrap sandbox when ``sandboxed``) for this one submission."""
    job_dir, answers_dir, home_dir = workdir / "job", workdir / "answers", workdir / "home"
    host_uid = None
    if sandboxed:
        command = _bwrap_command(job_dir, answers_dir, limits)
        env, cwd = None, None
        host_uid = _new_host_uid()
    else:
        command = [sys.executable, str(job_dir / "run_notebook.py"), str(job_dir), str(answers_dir),
                   str(limits.cell_timeout)]  # fmt: skip
        env, cwd = _environment(str(home_dir)), home_dir
    process = _popen(
        command,
        limits,
        host_uid,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    tap = _OutputTap(process.stdout, limits.output_mb << 20, lambda: _kill_group(process))
    watchdog = _Watchdog(process.pid, limits, answers_dir)
    try:
        returncode: int | None = process.wait(timeout=limits.timeout)
    except subprocess.TimeoutExpired:
        returncode = None
    finally:
        watchdog.stop()
        _kill_group(process)  # whatever it left running in its session goes too
        process.wait()
        tap.thread.join(timeout=10)
    return _Outcome(returncode, tap.tail, tap.flooded, watchdog.verdict)


def _tail(output: Path) -> bytes:
    try:
        with output.open("rb") as handle:
            handle.seek(max(0, output.stat().st_size - 4000))
            return handle.read()
    except OSError:
        return b""


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
        self._watchdog: _Watchdog | None = None

    def new_workdir(self, prefix: str = "grade-") -> Path:
        return Path(tempfile.mkdtemp(prefix=prefix, dir=self.zone))

    def _start(self) -> None:
        runner = self.zone / "run_notebook.py"
        shutil.copyfile(RUNNER, runner)
        mounts = ["--bind", str(self.zone), "/jobs", "--dir", "/submission", "--dir", "/answers",
                  "--dir", "/grader", "--ro-bind", str(runner), "/runner.py", "--chdir", "/"]  # fmt: skip
        command = _sandbox_command(mounts, ["/runner.py", "--serve"], self.limits.disk_mb << 20)
        self.process = _popen(
            command,
            self.limits,
            _new_host_uid(),
            per_process=False,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
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

    def run(self, workdir: Path) -> _Outcome:
        """Run the job prepared in ``workdir``: exit code (None: stopped), output tail, flooded."""
        if self.process is None or self.process.poll() is not None:
            self._start()
        assert self.process is not None and self.process.stdin is not None
        request = {"job": workdir.name, "cell_timeout": self.limits.cell_timeout,
                   "memory_mb": self.limits.memory_mb, "file_mb": self.limits.file_mb,
                   "disk_mb": self.limits.disk_mb, "keep_under_tmp": _mounted_under_tmp()}  # fmt: skip
        output = workdir / "output.txt"
        output.touch(mode=0o666)  # the job's own uid opens it; the workdir is not its to write
        output.chmod(0o666)
        # The zygote and its child for this job, measured as one tree; a verdict kills both.
        watchdog = _Watchdog(self.process.pid, self.limits, workdir / "answers")
        try:
            self.process.stdin.write(json.dumps(request).encode() + b"\n")
            self.process.stdin.flush()
            reply = self._read_line(time.monotonic() + self.limits.timeout, output)
            if reply is not None and (reply.get("job") != workdir.name or "exit" not in reply):
                raise WarmUnavailable("the warm sandbox answered for another job")
        except (OSError, ValueError, WarmUnavailable) as exc:
            watchdog.stop()
            self.close()
            if watchdog.verdict:  # stopped for passing a limit: that is this job's result
                return _Outcome(-signal.SIGKILL, _tail(output), False, watchdog.verdict)
            if isinstance(exc, WarmUnavailable):
                raise
            raise WarmUnavailable(f"the warm sandbox failed ({exc})") from None
        watchdog.stop()
        flooded = output.exists() and output.stat().st_size > self.limits.output_mb << 20
        if reply is None:
            self.close()  # the only way to stop its child: the whole sandbox goes
        elif reply.get("exit") == ISOLATION_FAILED:
            self.close()
            raise WarmUnavailable(_read_limited(output, 4000))
        returncode = None if reply is None or flooded else int(reply["exit"])
        return _Outcome(returncode, _tail(output), flooded, watchdog.verdict)

    def close(self) -> None:
        if self.process is not None:
            _kill_group(self.process)
            self.process.wait()
            self.process = None


def _readable_by_the_judge(answers_dir: Path) -> None:
    """Let the judge process read what the sandbox wrote: files another host uid made 0600.

    When the grader runs as root, the sandbox writes as a host uid of its own, and a file it
    created private (safetensors writes 0600) is unreadable to the judge process, which has no
    capabilities. GNU chmod walks the tree without recursion (``os.walk`` overflows Python's
    stack on a few thousand nested folders, as ``_remove_tree`` notes) and ignores the symbolic
    links it meets: a link the student planted is left as it is (the judge refuses to follow it).
    """
    try:
        subprocess.run(["chmod", "-R", "a+rX", str(answers_dir)], capture_output=True, timeout=120,
                       check=False)  # fmt: skip
    except subprocess.TimeoutExpired:
        pass  # what stays unreadable is judged as missing


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
    answers_dir = workdir / "answers"
    _readable_by_the_judge(answers_dir)
    progress = _read_limited(answers_dir / "progress.txt").strip().splitlines()
    run = SandboxRun(
        answers_dir=answers_dir,
        sandboxed=sandboxed,
        returncode=result.returncode,
        where=_where((progress or ["start-up"])[-1]),
        cell_errors=_reported_cell_errors(answers_dir),
        output_tail=result.tail.decode("utf-8", "replace"),
        output_truncated=result.flooded,
        notes=_cell_notes(answers_dir, limits),
    )
    run.problem = _problem(run, limits, result.flooded, result.over_limit)
    return run


_PLACES = re.compile(r"start-up|cell In \[\d{1,6}\]|questions|questions failed|done")


def _where(line: str) -> str:
    """The last place the process reported reaching, if it is one the runner writes: the file
    is the student's to write, so anything else is named as such, never quoted."""
    return line if _PLACES.fullmatch(line) else "an unknown place (the progress file was changed)"


_EVENT_NOTES = {
    "timeout": "{cell} was stopped at its time limit ({cell_timeout} s); the rest of it did not run",
    "memory": "{cell} ran out of memory (MemoryError: more than the {memory_mb} MB a submission "
    "may use); the rest of it did not run",
    "exit": "{cell} raised SystemExit (sys.exit() or exit()): in a notebook that ends the cell, "
    "not the notebook; the rest of it did not run",
    "output": "{cell} printed {detail} characters; only the first {kept} were kept (the rest "
    "was dropped, as nbgrader does) and the notebook was graded as usual",
    "backend": "{cell} asked for a matplotlib backend ({detail}) the grader cannot show; "
    "figures were drawn inline instead, as in a kernel without that frontend",
}


def _cell_notes(answers_dir: Path, limits: Limits) -> list[str]:
    """The grader's own sentences for what happened in the cells (from ``cell_events.json``;
    the student's process writes it, so only known kinds, numbers and short names count)."""
    try:
        events = json.loads(_read_limited(answers_dir / "cell_events.json") or "[]")
    except json.JSONDecodeError:
        return []
    notes: list[str] = []
    for event in events[:50] if isinstance(events, list) else []:
        if not (isinstance(event, list) and len(event) == 3 and isinstance(event[0], int)):
            continue
        count, kind, detail = event
        template = _EVENT_NOTES.get(kind) if isinstance(kind, str) else None
        if template is None:
            continue
        detail = re.sub(r"[^\w.-]", "", str(detail))[:40]
        note = template.format(cell=f"In [{count}]", detail=detail, kept=CELL_OUTPUT_LIMIT,
                               cell_timeout=limits.cell_timeout, memory_mb=limits.memory_mb)  # fmt: skip
        if note not in notes:
            notes.append(note)
    return notes


def _problem(
    run: SandboxRun, limits: Limits, flooded: bool, over_limit: str | None = None
) -> str | None:
    where = run.where
    if over_limit:
        return f"stopped in {where}: {over_limit}; the rest of the notebook was not graded"
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
    if where == "questions failed":  # the output, the student's, goes to the feedback, quoted
        return (
            "the grader's questions could not be asked after the notebook ran (its last output "
            "is in the feedback)"
        )
    return (
        f"the notebook's process exited with code {run.returncode} in {where}, before the grader's "
        "questions were answered: a notebook must not call os._exit() or end its own process"
    )
