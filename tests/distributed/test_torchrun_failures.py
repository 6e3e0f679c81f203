"""torchrun._failures: what each failed rank did, parsed from torchrun's real report.

The fixtures in tests/distributed/fixtures/torchrun/ are the output (and the agent's error files)
of real runs of ``course_lib.distributed.elastic_job`` under ``run_torchrun`` with one injected
fault each (``--fault exit:1:5`` and so on), captured once, with the machine's paths replaced by
``/repo``, ``/venv`` and ``/tmp/work``. One real failing run stays in test_launcher_orphans.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

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
