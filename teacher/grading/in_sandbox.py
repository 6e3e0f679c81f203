"""The process inside the sandbox: run a student's notebook, then answer the judge's questions.

Not imported by the grader: it is copied into each submission's job folder and run there as
``python run_notebook.py JOB_DIR ANSWERS_DIR`` (inside bubblewrap, ``/grader`` and ``/answers``).
JOB_DIR holds ``cells.json``, ``questions.json`` and the exercise's ``answer.py``.

Everything this process writes is untrusted: the student's code runs in it and can change any of
it. So it reports only *answers* (return values saved as JSON, safetensors or ONNX files) that the
judge, outside, loads safely and compares with the solution's answers to the same questions; the
cell errors and progress it reports are used for feedback, never for points.

The cells run in IPython's shell, as in JupyterLab: magics, ``display()``, ``get_ipython()`` and
the value of a cell's last expression behave as a learner expects.

``python run_notebook.py --serve`` is the warm variant (a "zygote"): started once inside a
bubblewrap sandbox, it imports torch and the rest once, then forks a fresh child per submission.
Each child first walls itself off from the zygote and from every other submission: new user,
mount, PID, IPC and UTS namespaces; only its own job's folders mounted (the job read-only), the
other jobs hidden under an empty tmpfs, a fresh ``/tmp``; then one more user namespace, which
locks those mounts so the student's code cannot undo them. The zygote is not dumpable, so a child
cannot read or write its memory through ``/proc``. Children run one at a time per zygote.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "Asker",
    "ISOLATION_FAILED",
    "PRELOAD",
    "StepTimeout",
    "main",
    "run_cells",
    "serve",
]


class StepTimeout(BaseException):
    """Raised in a cell or question that runs past its time (BaseException: harder to swallow)."""


def _on_alarm(signum: int, frame: object) -> None:
    raise StepTimeout


def _describe(exc: BaseException, lines: int = 4) -> str:
    if isinstance(exc, NotImplementedError) and _raised_in_a_cell(exc):
        return "NotImplementedError: not implemented yet"
    text = "\n".join(str(exc).strip().splitlines()[:lines])
    return f"{type(exc).__name__}: {text}"[:1000]


class Asker:
    """What an exercise's ``answer.py`` uses to ask the student's code and keep its answers."""

    def __init__(self, namespace: dict[str, Any], answers_dir: Path, step_seconds: int) -> None:
        self.namespace = namespace
        self.answers_dir = answers_dir
        self.step_seconds = step_seconds

    def folder(self, qid: str) -> Path:
        """A folder of the answers for question ``qid`` (the judge reads what is left in it)."""
        path = self.answers_dir / qid
        path.mkdir(parents=True, exist_ok=True)
        return path

    def function(self, name: str) -> Callable[..., Any] | None:
        found = self.namespace.get(name)
        return found if callable(found) else None

    def call(self, qid: str, name: str, *args: Any, **kwargs: Any) -> tuple[bool, Any]:
        """Call the notebook's ``name(*args)``; on failure record why as the answer to ``qid``."""
        fn = self.function(name)
        if fn is None:
            record = {
                "type": "NameError",
                "mro": ["NameError"],
                "message": f"NameError: {name} is not defined (did its cell run?)",
            }
            self.save_json(f"{qid}.raised", record)
            return False, None
        return self.run(qid, fn, *args, **kwargs)

    def run(self, qid: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[bool, Any]:
        """``fn(*args)`` with the step's time limit; on failure record why as the answer to ``qid``."""
        signal.signal(signal.SIGALRM, _on_alarm)
        signal.alarm(self.step_seconds)
        try:
            return True, fn(*args, **kwargs)
        except StepTimeout:
            message = f"{getattr(fn, '__name__', 'it')} was still running after {self.step_seconds} s (stopped)"
            self.save_json(f"{qid}.raised", {"type": "Timeout", "mro": [], "message": message})
        except BaseException as exc:  # noqa: BLE001 - the student's code may raise anything
            record = {
                "type": type(exc).__name__,
                "mro": [c.__name__ for c in type(exc).__mro__],
                "message": _describe(exc, lines=30),
            }
            self.save_json(f"{qid}.raised", record)
        finally:
            signal.alarm(0)
        return False, None

    def save_json(self, qid: str, value: Any) -> None:
        (self.answers_dir / f"{qid}.json").write_text(json.dumps(value, default=repr))

    def save_tensors(self, qid: str, tensors: dict[str, Any]) -> None:
        from safetensors.torch import save_file

        path = self.answers_dir / f"{qid}.safetensors"  # made readable for the judge by the grader
        save_file({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, str(path))


# --- cells run as JupyterLab runs them: a kernel-like shell, output limited per cell ----------

CELL_OUTPUT_LIMIT = 100_000  # characters of output kept per cell (as nbgrader's LimitOutput)
# What happened in a cell, for the grader to explain in the feedback in its own words:
# [cell number, kind, detail]; kinds: "timeout", "memory", "exit", "output" (detail: characters
# printed), "backend" (detail: the matplotlib backend a magic asked for).
CELL_EVENTS: list[list[Any]] = []


def _raised_in_a_cell(exc: BaseException) -> bool:
    """True when the innermost frame is the notebook's own code (a stub's ``raise``), not a
    magic's or a library's ``NotImplementedError``."""
    tb = exc.__traceback__
    if tb is None:
        return True  # raised by hand without a traceback: treat as the notebook's own
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_code.co_filename.startswith("<ipython-input-")


class _LimitedOutput:
    """``sys.stdout`` / ``sys.stderr`` for the cells: the first ``CELL_OUTPUT_LIMIT`` characters of
    each cell's output pass, the rest is counted and dropped (as nbgrader's ``LimitOutput``)."""

    def __init__(self, stream: Any, shared: dict[str, int]) -> None:
        self._stream, self._shared = stream, shared

    def write(self, text: str) -> int:
        shared = self._shared
        room = max(0, CELL_OUTPUT_LIMIT - shared["written"])
        if len(text) <= room:
            self._stream.write(text)
        else:
            marker = "" if shared["dropped"] else "\n[output truncated by the grader]\n"
            self._stream.write(text[:room] + marker)
            shared["dropped"] += len(text) - room
        shared["written"] += min(len(text), room)
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _kernel_like_shell() -> Any:
    """IPython's shell, behaving like ipykernel's for what a notebook's first lines often hold:
    ``%matplotlib [inline|widget|qt|...]`` draws inline (the grader has no screen and no widget
    frontend), and ``%autoreload`` / ``%aimport`` load their extension when first used."""
    from IPython.core.interactiveshell import InteractiveShell

    class KernelLikeShell(InteractiveShell):
        def enable_gui(self, gui: str | None = None) -> None:
            """No event loop to integrate: a kernel's figures are shown inline."""

        def enable_matplotlib(self, gui: str | None = None) -> Any:
            if gui not in (None, "inline", "auto"):
                CELL_EVENTS.append([self.execution_count, "backend", str(gui)[:40]])
            return super().enable_matplotlib("inline")

    shell = KernelLikeShell.instance(colors="NoColor")
    # Plain tracebacks, as ``%xmode Plain``: the default one reads and parses the source file
    # of every frame (about 0.15 s per error, most of a stub's run); the feedback quotes the
    # error, not the frames.
    shell.InteractiveTB.set_mode(mode="Plain")
    shell.magics_manager.lazy_magics.update(autoreload="autoreload", aimport="autoreload")
    return shell


def _cell_event(count: int, failure: BaseException | None) -> None:
    kinds = ((StepTimeout, "timeout"), (MemoryError, "memory"), (SystemExit, "exit"))
    for kind, name in kinds:
        if isinstance(failure, kind):
            CELL_EVENTS.append([count, name, ""])


def run_cells(cells: list[str], step_seconds: int, progress: Any) -> tuple[dict, list[str]]:
    """Run the cells one by one in a kernel-like IPython shell, recording errors as "Run All"
    would show them, and what the grader explains in the feedback (``CELL_EVENTS``)."""
    shell = _kernel_like_shell()
    shell.showtraceback_limit = 3
    errors: list[str] = []
    counted = {"written": 0, "dropped": 0}
    real = sys.stdout, sys.stderr
    signal.signal(signal.SIGALRM, _on_alarm)
    for count, source in enumerate(cells, start=1):
        progress.write(f"cell In [{count}]\n")
        print(f"----- In [{count}] -----", flush=True)
        counted.update(written=0, dropped=0)
        sys.stdout, sys.stderr = _LimitedOutput(real[0], counted), _LimitedOutput(real[1], counted)
        signal.alarm(step_seconds)
        try:
            result = shell.run_cell(source, store_history=True)
        except StepTimeout:  # landed outside the cell's own code
            result = None
        finally:
            signal.alarm(0)
            sys.stdout, sys.stderr = real
        if counted["dropped"]:
            CELL_EVENTS.append([count, "output", counted["written"] + counted["dropped"]])
        failure = None if result is None else (result.error_before_exec or result.error_in_exec)
        if result is None or isinstance(failure, StepTimeout):
            errors.append(f"In [{count}]: still running after {step_seconds} s (stopped)")
            _cell_event(count, StepTimeout())
        elif failure is not None:
            errors.append(f"In [{count}]: {_describe(failure)}")
            _cell_event(count, failure)
    sys.stdout.flush()
    return shell.user_ns, errors


def main(argv: list[str]) -> int:
    job_dir, answers_dir = Path(argv[0]), Path(argv[1])
    step_seconds = int(argv[2]) if len(argv) > 2 else 60
    cells = json.loads((job_dir / "cells.json").read_text())
    questions = json.loads((job_dir / "questions.json").read_text())
    progress = (answers_dir / "progress.txt").open("a", buffering=1)
    # The asker is imported before the student's cells run, so the functions it binds at import
    # (os.kill, os.utime, ...) are the real ones even if a cell replaces them later.
    spec = importlib.util.spec_from_file_location("_answer", job_dir / "answer.py")
    assert spec is not None and spec.loader is not None
    answer = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(answer)
    except BaseException:  # noqa: BLE001 - reported as questions that could not be asked
        traceback.print_exc(limit=-3)
        progress.write("questions failed\n")
        return 3
    witness = _fork_witness(answer, job_dir, questions, answers_dir, step_seconds, progress)
    if isinstance(witness, int):
        return witness  # this process was the witness, and has asked the questions
    namespace, errors = run_cells(cells, step_seconds, progress)
    (answers_dir / "cell_errors.json").write_text(json.dumps(errors))
    (answers_dir / "cell_events.json").write_text(json.dumps(CELL_EVENTS))
    progress.write("questions\n")
    print("----- the grader's questions -----", flush=True)
    try:
        ask = Asker(namespace, answers_dir, step_seconds)
        answer.answer(questions, ask) if witness is None else witness.answer(ask)
    except BaseException:  # noqa: BLE001 - e.g. the notebook broke something the questions need
        traceback.print_exc(limit=-3)
        progress.write("questions failed\n")
        return 3
    progress.write("done\n")
    return 0


def _fork_witness(
    answer: Any,
    job_dir: Path,
    questions: list[Any],
    answers_dir: Path,
    step_seconds: int,
    progress: Any,
) -> Any:
    """For an exercise whose questions kill, age or inspect files (its ``answer.py`` defines
    ``witness``), fork before any cell runs (``witness.py``): in the witness, the exit code once
    it has asked every question; in the student's process, what answers the witness. Else None."""
    if not hasattr(answer, "witness"):
        return None
    spec = importlib.util.spec_from_file_location("_witness", job_dir / "witness.py")
    assert spec is not None and spec.loader is not None
    witness = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(witness)
    return witness.fork_witness(answer, questions, answers_dir, step_seconds, progress)


# --- the warm zygote -------------------------------------------------------------------------

# What every exercise imports, paid once per zygote instead of once per submission (as a fresh
# kernel would). torch imports torch._dynamo lazily, on the first optimizer made (1.7 s of CPU
# here), and the ONNX exporter needs onnxscript and torch.export (1.1 s more).
PRELOAD = ("torch", "numpy", "IPython.core.interactiveshell", "safetensors.torch", "onnx",
           "onnxruntime", "torch._dynamo", "torch.export", "torch.onnx", "onnxscript",
           "course_lib.safe_io", "course_lib.models")  # fmt: skip
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x20000, 0x4000000, 0x8000000
CLONE_NEWUSER, CLONE_NEWPID = 0x10000000, 0x20000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = (
    1,
    2,
    4,
    32,
    4096,
    16384,
    1 << 18,
)
PR_SET_PDEATHSIG, PR_SET_DUMPABLE = 1, 4
ISOLATION_FAILED = 97  # the exit code that tells the grader to fall back to a cold sandbox
_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _new_user_namespace(extra_flags: int = 0) -> None:
    uid, gid = os.getuid(), os.getgid()
    # Its own /proc/self files belong to it only while it is dumpable (the zygote is not): when
    # the sandbox's uid is a host uid of its own, root's files are not its to write.
    _libc.prctl(PR_SET_DUMPABLE, 1)
    _check(_libc.unshare(CLONE_NEWUSER | extra_flags), "unshare")
    Path("/proc/self/setgroups").write_text("deny")
    Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
    Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")


def _mount(
    source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None
) -> None:
    encoded = [None if v is None else v.encode() for v in (source, target, fstype, data)]
    _check(_libc.mount(*encoded[:3], flags, encoded[3]), f"mount {target}")


def _wall_off(job: str, keep_under_tmp: list[str], disk_mb: int = 512) -> None:
    """In the grandchild (PID 1 of its namespace): see only this job, then lock that view."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    # The home folder is a size-limited tmpfs of this job's own: filling it costs only the job.
    _mount("tmpfs", "/submission", "tmpfs", MS_NOSUID | MS_NODEV, f"size={disk_mb}m,mode=0777")
    for source, target, read_only in (("job", "/grader", True), ("answers", "/answers", False)):
        _mount(f"{job}/{source}", target, None, MS_BIND | MS_REC)
        if read_only:
            flags = MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV
            _mount(None, target, None, flags)
    _mount("tmpfs", "/jobs", "tmpfs", MS_NOSUID | MS_NODEV)  # every other job: out of sight
    # A fresh /tmp would hide what the sandbox mounted below it (a course cloned under /tmp, its
    # environment): hold those by file descriptor and mount them back on the new /tmp.
    kept = [(path, os.open(path, os.O_PATH)) for path in keep_under_tmp if os.path.isdir(path)]
    _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={disk_mb}m")
    for path, descriptor in kept:
        os.makedirs(path, exist_ok=True)
        _mount(f"/proc/self/fd/{descriptor}", path, None, MS_BIND | MS_REC)
        try:
            flags = MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV
            _mount(None, path, None, flags)
        except OSError:
            pass  # it came read-only from the sandbox's own bind; a refused remount keeps that
        os.close(descriptor)
    if Path("/dev/shm").is_dir():
        _mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "size=64m")
    # The sandbox's root (a tmpfs shared by every job of this zygote) becomes read-only here, so
    # nothing one job writes there (a module named like a package, say) is seen by the next.
    for shared in ("/", "/dev"):
        _mount(None, shared, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    _new_user_namespace()  # the mounts above are now locked: the student cannot unmount them


def _child(request: dict) -> None:
    """Runs in a fork of the zygote; never returns."""
    try:
        job = f"/jobs/{request['job']}"
        output = os.open(f"{job}/output.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)  # the zygote's command pipe: not the student's to read
        os.dup2(output, 1)  # nor its answer pipe to write
        os.dup2(output, 2)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # the zygote's answer pipe and open files
        _new_user_namespace(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS)
        _libc.prctl(PR_SET_DUMPABLE, 0)  # new credentials made it dumpable again: not to its child
        grandchild = os.fork()
        if grandchild:
            _, status = os.waitpid(grandchild, 0)
            code = os.waitstatus_to_exitcode(status)
            os._exit(code if code >= 0 else 128 - code)
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        _wall_off(job, list(request.get("keep_under_tmp", [])), int(request.get("disk_mb", 512)))
        os.chdir("/submission")
        memory, files = request["memory_mb"] << 20, request["file_mb"] << 20
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_FSIZE, (files, files))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except BaseException:  # noqa: BLE001 - report and let the grader fall back to a cold sandbox
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(ISOLATION_FAILED)
    code = main(["/grader", "/answers", str(request["cell_timeout"])])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def serve() -> int:
    """The zygote: import once, then one forked, walled-off child per request line on stdin."""
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - a missing optional package only costs its import later
            pass
    _libc.prctl(PR_SET_DUMPABLE, 0)
    commands, answers = sys.stdin, os.fdopen(os.dup(1), "w", buffering=1)
    answers.write(json.dumps({"ready": True}) + "\n")
    for line in commands:
        request = json.loads(line)
        child = os.fork()
        if child == 0:
            _child(request)
        _, status = os.waitpid(child, 0)
        code = os.waitstatus_to_exitcode(status)
        answers.write(
            json.dumps({"job": request["job"], "exit": code if code >= 0 else 128 - code}) + "\n"
        )
    return 0


if __name__ == "__main__":
    # os._exit: skip interpreter teardown, which a student's atexit hooks or threads could hang.
    sys.stdout.flush()
    code = serve() if sys.argv[1:] == ["--serve"] else main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
