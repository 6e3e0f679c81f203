"""Faults under torchrun: each run ends in time, names the rank and what it did, leaves no process.

Every torchrun here has a unique marker in its command line (its ``--workdir``, or the name of its
job module) and the process table is searched for it after the run: torchrun, its workers and what
the workers started must all be gone, whether the run failed, timed out, or the process that
started it was killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from course_lib.distributed import (
    TorchrunError,
    TorchrunTimeoutError,
    check_step_folder,
    run_torchrun,
)

pytestmark = pytest.mark.slow  # ./course test --fast leaves it out

ROOT = Path(__file__).resolve().parents[2]
JOB = "course_lib.distributed.elastic_job"


def _running(marker: str) -> list[str]:
    table = subprocess.run(["ps", "-eo", "pid,stat,args"], capture_output=True, text=True).stdout
    return [
        line
        for line in table.splitlines()
        if marker in line and line.split()[1][0] != "Z" and "ps -eo" not in line
    ]


def _assert_nothing_left(marker: str) -> None:
    deadline = time.monotonic() + 15
    while _running(marker):
        if time.monotonic() > deadline:
            leftovers = _running(marker)
            for line in leftovers:  # clean up what this test started, then fail
                try:
                    os.kill(int(line.split()[0]), signal.SIGKILL)
                except OSError:
                    pass
            pytest.fail(f"left running: {leftovers}")
        time.sleep(0.3)


def _job(workdir: Path, fault: str, timeout_s: int = 8) -> list[str]:
    return [
        "--workdir", str(workdir), "--steps", "8", "--save-every", "4",
        "--collective-timeout", str(timeout_s), "--fault", fault,
    ]  # fmt: skip


@pytest.mark.timeout(150)
def test_a_failing_worker_is_named_with_what_it_did(tmp_path):
    """One real failing run; what torchrun reports for other faults (an exit code, a signal) is
    parsed from captured output in test_torchrun.py."""
    fault, rank = "raise:1:5", 1
    what = "raised RuntimeError: injected fault: rank 1 raised at step 5 in _inject()"
    started = time.monotonic()
    with pytest.raises(TorchrunError) as info:
        run_torchrun(JOB, _job(tmp_path, fault), timeout=120)
    assert time.monotonic() - started < 90
    assert not isinstance(info.value, TorchrunTimeoutError)
    failed = {f.rank: f for f in info.value.failures}
    assert failed[rank].what.startswith(what), info.value
    assert f"rank {rank} {what}" in str(info.value)
    _assert_nothing_left(str(tmp_path))
    check_step_folder(tmp_path / "checkpoints" / "step_000004")  # saved before the fault: intact


@pytest.mark.timeout(150)
def test_a_worker_hung_in_a_collective_ends_at_the_process_group_timeout(tmp_path):
    """Rank 1 waits in a collective that rank 0 never joins; rank 0 waits in DDP's gradient
    all-reduce for rank 1. The 8 s process-group timeout ends it, and the error says where each was."""
    started = time.monotonic()
    with pytest.raises(TorchrunError) as info:
        run_torchrun(JOB, _job(tmp_path, "hang:1:5"), timeout=120)
    assert time.monotonic() - started < 60
    message = str(info.value)
    assert "Timed out waiting 8000ms" in message, message
    failed = {f.rank: f for f in info.value.failures}
    assert set(failed) == {0, 1}
    # Whichever timed out first, each rank is named with the line it was waiting in.
    assert "in _inject(): dist.all_reduce(torch.zeros(1), group=_side_group)" in failed[1].what
    assert "in train(): loss.backward()" in failed[0].what or failed[0].what.startswith(
        "was killed by SIGTERM"
    ), message
    _assert_nothing_left(str(tmp_path))


@pytest.mark.timeout(120)
def test_a_hang_without_a_collective_timeout_is_ended_by_the_deadline(tmp_path):
    started = time.monotonic()
    with pytest.raises(TorchrunTimeoutError) as info:
        run_torchrun(JOB, _job(tmp_path, "hang:1:5", timeout_s=600), timeout=15)
    assert time.monotonic() - started < 30
    assert "ran past 15 s" in str(info.value)
    assert "[fault] rank 1: hang at step 5" in str(info.value)  # the job's last words
    _assert_nothing_left(str(tmp_path))


@pytest.mark.timeout(200)
def test_when_the_restart_budget_is_used_up_the_error_is_final_and_checkpoints_stay(tmp_path):
    with pytest.raises(TorchrunError) as info:
        run_torchrun(JOB, _job(tmp_path, "kill:1:6:*"), max_restarts=1, timeout=150)
    assert "failed after 1 restart(s)" in str(info.value)
    assert info.value.failures, info.value.result.output[-3000:]
    _assert_nothing_left(str(tmp_path))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_000004"]
    check_step_folder(tmp_path / "checkpoints" / "step_000004")


HELPER = textwrap.dedent(
    """
    import subprocess, sys, time

    if __name__ == "__main__":
        subprocess.Popen(["sleep", "7777" + sys.argv[1]])  # what a worker starts (a data loader...)
        time.sleep(600)
    """
)


@pytest.mark.timeout(150)
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM, signal.SIGHUP])
def test_killing_the_process_that_ran_torchrun_ends_everything(tmp_path, how):
    tag = f"{int(how)}{os.getpid()}"
    module = f"orphan_helper_{tag}"
    (tmp_path / f"{module}.py").write_text(HELPER)
    launcher = subprocess.Popen(
        [sys.executable, "-c",
         "import sys\n"
         "from course_lib.distributed import run_torchrun\n"
         "run_torchrun(sys.argv[1], [sys.argv[2]], timeout=600)",
         module, tag],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(tmp_path)),
    )  # fmt: skip
    deadline = time.monotonic() + 90
    while len(_running(f"sleep 7777{tag}")) < 2:
        assert time.monotonic() < deadline, "the workers never started their children"
        time.sleep(0.5)
    launcher.send_signal(how)
    launcher.wait(timeout=30)
    _assert_nothing_left(module)
    _assert_nothing_left(f"sleep 7777{tag}")
