"""distributed.torchrun: what each failed rank did, parsed from torchrun's real report
(``_failures``); the commands ``run_torchrun`` builds and what it tells each node.

The fixtures in tests/distributed/fixtures/torchrun/ are the output (and the agent's error files)
of real runs of ``course_lib.distributed.elastic_job`` under ``run_torchrun`` with one injected
fault each (``--fault exit:1:5`` and so on), captured once, with the machine's paths replaced by
``/repo``, ``/venv`` and ``/tmp/work``. One real failing run stays in test_launcher_orphans.py,
with the other real faults. The last test runs benchmarks/bench_distributed.py under torchrun.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from course_lib.distributed import run_torchrun, torchrun_command
from course_lib.distributed.torchrun import _describe, _failures

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "torchrun"
KILLED_IN_BACKWARD = "was killed by SIGTERM in train(): loss.backward()"


def _parse(name: str) -> dict[int, object]:
    output = (FIXTURES / f"{name}.log").read_text()
    error_files = sorted(FIXTURES.glob(f"{name}.error*.json"))
    return {f.rank: f for f in _failures(output, error_files)}


def test_a_worker_that_raised_is_named_with_its_exception_and_line():
    failed = _parse("raise_1_5")
    assert set(failed) == {0, 1}
    assert failed[1].exitcode == 1
    assert failed[1].what == (
        "raised RuntimeError: injected fault: rank 1 raised at step 5 in _inject(): "
        'raise RuntimeError(f"injected fault: rank {rank} raised at step {step}")'
    )
    assert "Traceback" in failed[1].traceback
    assert failed[0].what == KILLED_IN_BACKWARD  # torchrun stopped the other rank


def test_a_worker_that_raised_and_then_aborted_while_exiting_is_named_with_its_exception():
    """Seen under load: rank 1 raised, @record wrote its traceback, then the process aborted in
    gloo's teardown (SIGABRT). The exception is what it did; the abort comes after."""
    output = (FIXTURES / "raise_1_5.log").read_text()
    output = output.replace("exitcode  : 1 (pid: 31914) ", "exitcode  : -6 (pid: 31914)  (SIGABRT)")
    failed = {f.rank: f for f in _failures(output, [])}
    assert failed[1].exitcode == -6
    assert failed[1].what == (
        "raised RuntimeError: injected fault: rank 1 raised at step 5 in _inject(): "
        'raise RuntimeError(f"injected fault: rank {rank} raised at step {step}")'
        " (then aborted with SIGABRT while exiting)"
    )
    assert failed[0].what == KILLED_IN_BACKWARD  # torchrun's SIGTERM stays a kill


def test_a_worker_that_exited_is_named_with_its_exit_code():
    failed = _parse("exit_1_5")
    assert failed[1].what == "exited with code 3" and failed[1].exitcode == 3
    assert failed[0].what == KILLED_IN_BACKWARD


def test_a_worker_killed_by_a_signal_is_named_with_the_signal():
    failed = _parse("kill_0_5")
    assert failed[0].what == "was killed by SIGKILL" and failed[0].exitcode == -9
    assert failed[1].what == KILLED_IN_BACKWARD
    assert _describe(list(failed.values())) == (
        f"rank 0 was killed by SIGKILL; rank 1 {KILLED_IN_BACKWARD}"
    )


def test_a_collective_timeout_names_where_each_rank_waited():
    failed = _parse("hang_1_5")
    assert failed[0].what.startswith("raised RuntimeError: Timed out waiting 8000ms")
    assert failed[0].what.endswith("in train(): loss.backward()")
    assert "third_party" not in failed[0].what  # gloo's source location is dropped
    assert failed[1].what == (
        "was killed by SIGTERM in _inject(): dist.all_reduce(torch.zeros(1), group=_side_group)"
    )


def test_a_rank_stopped_after_its_own_error_is_named_with_that_error():
    """Seen in CI: rank 0 timed out and wrote its error file; rank 1 then lost its connection to
    rank 0 and left first, so torchrun sent SIGTERM to rank 0 while it was exiting. The timeout
    is what rank 0 did; only an error that says a peer went away is left out of a rank killed
    afterwards (test_a_collective_timeout_names_where_each_rank_waited, the other order)."""
    failed = _parse("hang_1_5_peer_left_first")
    assert failed[0].exitcode == -15
    assert failed[0].what.startswith("raised RuntimeError: Timed out waiting 8000ms")
    assert failed[0].what.endswith(
        "in train(): loss.backward() (then killed by SIGTERM while exiting)"
    )
    assert failed[1].what.startswith("raised RuntimeError: Connection closed by peer")
    assert failed[1].what.endswith(
        "in _inject(): dist.all_reduce(torch.zeros(1), group=_side_group)"
    )


def test_without_a_traceback_the_error_file_says_what_was_raised():
    output = (FIXTURES / "exit_1_5.log").read_text().replace("exitcode  : 3 ", "exitcode  : 1 ")
    (failure,) = [f for f in _failures(output, [FIXTURES / "raise_1_5.error0.json"]) if f.rank == 1]
    assert failure.what == "raised RuntimeError: injected fault: rank 1 raised at step 5"
    (failure,) = [f for f in _failures(output, []) if f.rank == 1]
    assert failure.what == "exited with code 1"


@pytest.mark.parametrize(
    "text", ["", "[job] step 1\n[job] step 2\n", "Failures:\n  <NO_OTHER_FAILURES>"]
)
def test_output_without_a_report_has_no_failures(text, tmp_path):
    broken = tmp_path / "error.json"
    broken.write_text("{not json")
    assert _failures(text, [broken, tmp_path / "missing.json"]) == []
    assert _describe([]) == "no rank reported a failure"


# ---- the commands run_torchrun builds, and what each node is told --------------------------------

JOB = "course_lib.distributed.elastic_job"


def test_commands_for_one_node_and_for_several():
    one = torchrun_command(JOB, ["--steps", "3"], nproc_per_node=2, max_restarts=3)
    assert one[1:] == [
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "--max-restarts=3",
        "-m",
        JOB,
        "--steps",
        "3",
    ]
    node = torchrun_command(JOB, [], nproc_per_node=1, nnodes=2, rdzv_endpoint="127.0.0.1:29500")
    assert "--standalone" not in node
    assert "--rdzv-endpoint=127.0.0.1:29500" in node and "--nnodes=2" in node


def test_run_torchrun_tells_each_node_how_many_ranks_share_the_machine(monkeypatch):
    """The node processes run_torchrun starts get COURSE_RANKS_ON_HOST (all nodes' ranks) and
    their own GPU offset; torchrun itself is replaced by a process that exits at once."""
    import subprocess
    import sys

    import course_lib.distributed.torchrun as torchrun_module

    seen = []
    real_popen = subprocess.Popen

    def popen(command, *args, env=None, **kwargs):
        if "torch.distributed.run" in command:
            seen.append({k: env[k] for k in ("COURSE_RANKS_ON_HOST", "COURSE_HOST_RANK_OFFSET")})
            command = [sys.executable, "-c", "pass"]
        return real_popen(command, *args, env=env, **kwargs)

    monkeypatch.setattr(torchrun_module.subprocess, "Popen", popen)
    run_torchrun(JOB, [], nnodes=2, nproc_per_node=1, timeout=30)
    assert seen == [
        {"COURSE_RANKS_ON_HOST": "2", "COURSE_HOST_RANK_OFFSET": "0"},
        {"COURSE_RANKS_ON_HOST": "2", "COURSE_HOST_RANK_OFFSET": "1"},
    ]


@pytest.mark.slow  # a real torchrun run
@pytest.mark.timeout(200)
def test_the_async_save_benchmark_runs_under_torchrun(tmp_path):
    """A small run of benchmarks/bench_distributed.py: async_save beside training collectives
    must not hang (it needs a process group of its own), and it prints its ratio."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "benchmarks/bench_distributed.py", "--size-mb", "4", "--repeats", "1",
         "--dir", str(tmp_path), "--timeout", "150"],
        cwd=root, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ratio async/sync blocked:" in out.stdout
    assert not list(tmp_path.iterdir())  # its scratch folder is gone
