"""Starting torchrun from a notebook or a test: a deadline, a clear error, no process left behind.

torchrun (``python -m torch.distributed.run``) does the distributed work: it starts one worker per
rank, runs the rendezvous, sets RANK/WORLD_SIZE/MASTER_ADDR, restarts the workers
(``--max-restarts``) and reports which rank failed. What it cannot do for a notebook is what this
module adds: run it as a subprocess with a deadline; kill torchrun, its workers and whatever
they started when the run ends, times out or the notebook's kernel dies (``_reaper``); and turn
torchrun's failure report into one exception that names the rank and what it did.

Taught in notebooks/05_data_parallel.ipynb; in depth in notebooks/05b_torchrun_elastic.ipynb,
sections 2 and 5.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from course_lib.distributed import _reaper
from course_lib.errors import CourseError

__all__ = [
    "RankFailure",
    "TorchrunError",
    "TorchrunResult",
    "TorchrunTimeoutError",
    "free_port",
    "host_layout_env",
    "run_torchrun",
    "torchrun_command",
]

_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class RankFailure:
    """One failed worker, from torchrun's report: its global rank and what it did."""

    rank: int
    exitcode: int
    what: str
    traceback: str = ""


@dataclass
class TorchrunResult:
    """A finished torchrun run: its commands (one per node), exit codes, output and duration."""

    commands: list[list[str]]
    returncodes: list[int]
    output: str
    seconds: float
    failures: list[RankFailure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(code == 0 for code in self.returncodes)

    def job_lines(self, prefixes: tuple[str, ...] = ("[job]", "[fault]")) -> list[str]:
        """The lines the job printed itself (rank 0's ``[job]`` lines, a ``[fault]`` line of the
        rank that misbehaves on purpose): what matters, without torchrun's logs, PIDs or ports."""
        return [line for line in self.output.splitlines() if line.startswith(prefixes)]


class TorchrunError(CourseError):
    """torchrun ended with a failure; ``.result`` has the output, ``.failures`` the failed ranks."""

    def __init__(self, result: TorchrunResult, subject: str, problem: str, fix: str) -> None:
        self.result = result
        self.failures = result.failures
        super().__init__(subject, problem, fix)


class TorchrunTimeoutError(TorchrunError, TimeoutError):
    """torchrun ran past the deadline; its whole process group was killed."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on now, for a multi-node rendezvous endpoint.

    ``--standalone`` picks its own; with ``--rdzv-endpoint`` on a cluster you choose one (29500 is
    the custom). Here several runs may share the machine, so the OS picks. Used by
    ``run_torchrun`` when ``nnodes > 1``; not taught in a notebook.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def torchrun_command(
    module: str,
    args: list[str],
    *,
    nproc_per_node: int = 2,
    max_restarts: int = 0,
    nnodes: int = 1,
    rdzv_endpoint: str | None = None,
    rdzv_id: str = "course",
) -> list[str]:
    """The torchrun command line: ``--standalone`` for one node, c10d rendezvous for several.

    Taught in notebooks/05b_torchrun_elastic.ipynb, sections 2 and 5.
    """
    command = [sys.executable, "-m", "torch.distributed.run"]
    if nnodes == 1 and rdzv_endpoint is None:
        command.append("--standalone")
    else:
        command += [
            f"--nnodes={nnodes}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={rdzv_endpoint}",
            f"--rdzv-id={rdzv_id}",
        ]
    command += [f"--nproc-per-node={nproc_per_node}", f"--max-restarts={max_restarts}"]
    return command + ["-m", module, *args]


_BLOCK = re.compile(
    r"\[\d+\]:\s*\n\s*time\s*:[^\n]*\n\s*host\s*:[^\n]*\n\s*rank\s*:\s*(\d+)[^\n]*\n"
    r"\s*exitcode\s*:\s*(-?\d+)[^\n]*\n\s*error_file:\s*(\S+)[^\n]*\n\s*traceback\s*:\s*(.*?)"
    r"(?=\n-{20,}|\n={20,}|\n\[\d+\]:)",
    re.S,
)


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


_GLOO_SOURCE = re.compile(r"\[[^\]]*third_party/[^\]]*\] ")


def _where(trace: str) -> str:
    """The innermost line of the course's own code in a traceback: where the worker was."""
    lines = trace.splitlines()
    where = ""
    for i, line in enumerate(lines):
        match = re.search(r'File "[^"]*course_lib/([^"]+)", line \d+, in (\w+)', line)
        if match and i + 1 < len(lines):
            where = f"{match.group(2)}(): {lines[i + 1].split('#')[0].strip()}"
    return where


#: Signals a worker sends itself: after an exception that @record wrote down, a worker can still
#: abort in gloo's teardown while the interpreter exits. The exception is what it did.
_SELF_INFLICTED = {-signal.SIGABRT, -signal.SIGSEGV, -signal.SIGBUS}

#: What a collective raises because another rank went away (gloo; NCCL): an echo of that rank's
#: failure, not news, in a rank that torchrun then stopped.
_PEER_GONE = re.compile(r"Connection (?:closed|reset) by peer|remote process exited")


def _what(code: int, trace: str, messages: list[str]) -> str:
    last = [line.strip() for line in trace.splitlines() if line.strip()]
    raised = bool(last) and "Traceback" in trace
    where = _where(trace)
    at = f" in {where}" if where else ""
    # Killed from outside: torchrun sends SIGTERM to the others after one worker failed. A rank
    # can have raised first (its error file is written) and be stopped while exiting, when a
    # peer that its failure brought down left before it: then its error is the news, unless the
    # error only says that a peer went away.
    killed = code < 0 and code not in _SELF_INFLICTED
    if raised and not (killed and _PEER_GONE.search(last[-1])):
        then = "killed by" if killed else "aborted with"
        after = f" (then {then} {_signal_name(code)} while exiting)" if code < 0 else ""
        return f"raised {_GLOO_SOURCE.sub('', last[-1])}{at}{after}"
    if code < 0:
        return f"was killed by {_signal_name(code)}{at}"
    # No traceback: the worker left without an exception (os._exit, a C++ abort...), or it did
    # not decorate its main with @record; the agent's error file may still say more.
    return f"raised {messages[0]}" if code == 1 and messages else f"exited with code {code}"


def _failures(output: str, error_files: list[Path]) -> list[RankFailure]:
    """Parse torchrun's "Root Cause" / "Failures" report; the message comes from the error file."""
    messages = []
    for path in error_files:
        try:
            data = json.loads(path.read_text())
            messages.append(
                data["message"]["message"]
                if isinstance(data["message"], dict)
                else str(data["message"])
            )
        except (OSError, ValueError, KeyError, TypeError):
            continue
    found: dict[int, RankFailure] = {}
    for match in _BLOCK.finditer(output):
        rank, code = int(match.group(1)), int(match.group(2))
        trace = match.group(4).strip()
        found.setdefault(rank, RankFailure(rank, code, _what(code, trace, messages), trace))
    failures = sorted(found.values(), key=lambda f: f.rank)
    return failures


def _describe(failures: list[RankFailure]) -> str:
    return "; ".join(f"rank {f.rank} {f.what}" for f in failures) or "no rank reported a failure"


def _last_lines(output: str) -> str:
    lines = [line for line in output.splitlines() if line.startswith(("[job]", "[fault]"))]
    return "\n".join("    " + line for line in lines[-3:])


def host_layout_env(node: int, *, nnodes: int, nproc_per_node: int) -> dict[str, str]:
    """The variables that tell node ``node``'s workers that all ``nnodes`` nodes share this machine.

    torchrun's ``LOCAL_WORLD_SIZE`` counts one node's ranks; ``choose_backend`` must count every
    rank on the machine (two one-rank nodes on a one-GPU machine must not both take cuda:0 under
    NCCL), and each rank needs a GPU index of its own (``device_index_on_host``).
    """
    from course_lib.distributed.elastic_job import HOST_RANK_OFFSET_VAR, RANKS_ON_HOST_VAR

    return {
        RANKS_ON_HOST_VAR: str(nnodes * nproc_per_node),
        HOST_RANK_OFFSET_VAR: str(node * nproc_per_node),
    }


def run_torchrun(
    module: str,
    args: list[str],
    *,
    nproc_per_node: int = 2,
    nnodes: int = 1,
    max_restarts: int = 0,
    timeout: float = 120.0,
    echo: bool = False,
) -> TorchrunResult:
    """Run ``torchrun ... -m module args`` (``nnodes`` torchrun "nodes" on this machine), wait.

    Returns a ``TorchrunResult`` when every node exits 0. Otherwise raises ``TorchrunError`` naming
    each failed rank and what it did (raised ..., exited with code ..., was killed by SIGKILL; a
    rank that raised and then aborted or was stopped while exiting: raised ... (then aborted with
    SIGABRT ... / then killed by SIGTERM ...)), or
    ``TorchrunTimeoutError`` after ``timeout`` seconds; in every case torchrun, its workers and
    their children are killed as one process group before this returns. ``echo`` prints the job's
    own ``[job]`` lines. Taught in notebooks/05_data_parallel.ipynb, in depth in
    notebooks/05b_torchrun_elastic.ipynb, section 2.
    """
    endpoint = f"127.0.0.1:{free_port()}" if nnodes > 1 else None
    commands = [
        torchrun_command(
            module,
            args,
            nproc_per_node=nproc_per_node,
            max_restarts=max_restarts,
            nnodes=nnodes,
            rdzv_endpoint=endpoint,
        )
        for _ in range(nnodes)
    ]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # torchrun sets one thread per worker only when a node runs several; here every "node" shares
    # this machine's cores. The thread count also decides the order in which a matrix product
    # adds its terms, so the same job on 1 x 2 and 2 x 1 processes gives the same bits only when
    # it is the same.
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_ROOT), env.get("PYTHONPATH")]))
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="course_torchrun_") as tmp:
        folder = Path(tmp)
        marker = uuid.uuid4().hex
        # The guardian reaps the run when this function ends, or when this process dies.
        guardian = subprocess.Popen(
            [sys.executable, _reaper.__file__], stdin=subprocess.PIPE, start_new_session=True
        )
        assert guardian.stdin is not None
        guardian.stdin.write(f"{marker}\n".encode())
        guardian.stdin.flush()
        procs: list[subprocess.Popen[bytes]] = []
        logs = []
        timed_out = False
        try:
            for node, command in enumerate(commands):
                log = (folder / f"node{node}.log").open("wb")
                logs.append(log)
                node_env = dict(
                    env,
                    **host_layout_env(node, nnodes=nnodes, nproc_per_node=nproc_per_node),
                    TORCHELASTIC_ERROR_FILE=str(folder / f"node{node}.error.json"),
                    **{_reaper.MARKER_VARIABLE: marker},  # inherited by every worker and child
                )
                procs.append(
                    subprocess.Popen(
                        command,
                        env=node_env,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,  # its own process group, killed as a whole
                    )
                )
                guardian.stdin.write(f"{procs[-1].pid}\n".encode())
                guardian.stdin.flush()
            deadline = started + timeout
            while any(p.poll() is None for p in procs):
                if time.monotonic() > deadline:
                    timed_out = True
                    break
                time.sleep(0.05)
        finally:
            # Also on Ctrl-C in the notebook: nothing survives the call. torchrun puts every
            # worker in a session of its own, so its process group alone is not enough.
            _reaper.reap([p.pid for p in procs], marker)
            for p in procs:
                p.wait()
            guardian.stdin.close()
            guardian.wait()
            for log in logs:
                log.close()
        output = "\n".join(
            (folder / f"node{n}.log").read_text(errors="replace") for n in range(len(procs))
        )
        error_files = [folder / f"node{n}.error.json" for n in range(len(procs))]
        result = TorchrunResult(
            commands,
            [-9 if timed_out and p.returncode is None else p.returncode for p in procs],
            output,
            time.monotonic() - started,
            [] if timed_out else _failures(output, [f for f in error_files if f.exists()]),
        )
    if echo:
        for line in result.job_lines():
            print(line)
    name = f"torchrun -m {module}"
    if timed_out:
        raise TorchrunTimeoutError(
            result,
            name,
            f"ran past {timeout:g} s and was killed with all its workers.\n"
            f"  The job's last lines:\n{_last_lines(output)}",
            "a worker is stuck (a collective its peers never joined?); give the "
            "process group a timeout (init_process_group(timeout=...)) shorter than this one.",
        )
    if not result.ok:
        restarts = f" after {max_restarts} restart(s)" if max_restarts else ""
        raise TorchrunError(
            result,
            name,
            f"failed{restarts}: {_describe(result.failures)}.",
            "read that rank's traceback in .failures (or .result.output); "
            "checkpoints saved before the failure are intact.",
        )
    return result
