"""The rank launcher leaves nothing behind: not when a rank fails, not when its parent is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

RANK_HELPER = textwrap.dedent(
    """
    import subprocess, time

    def start_a_child_and_wait(rank, world_size, tag):
        subprocess.Popen(["sleep", f"{7000 + rank}{tag}"])  # what a rank starts (a data loader...)
        time.sleep(600)
    """
)


def _running(pattern: str) -> list[str]:
    table = subprocess.run(["ps", "-eo", "stat,args"], capture_output=True, text=True).stdout
    return [
        line for line in table.splitlines() if pattern in line and not line.lstrip().startswith("Z")
    ]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM, signal.SIGHUP])
def test_killing_the_launcher_ends_every_rank_and_what_they_started(tmp_path, how):
    (tmp_path / "rank_helper.py").write_text(RANK_HELPER)
    tag = str(int(how))
    launcher = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; sys.path.insert(0, sys.argv[1])\n"
         "from rank_helper import start_a_child_and_wait\n"
         "from course_lib.distributed import launch_ranks\n"
         "launch_ranks(start_a_child_and_wait, 2, args=(sys.argv[2],), timeout=600)",
         str(tmp_path), tag],
        cwd=ROOT,
    )  # fmt: skip
    deadline = time.monotonic() + 90
    while len(_running(f"sleep 700{0}{tag}") + _running(f"sleep 700{1}{tag}")) < 2:
        assert time.monotonic() < deadline, "the ranks never started their children"
        time.sleep(0.5)
    launcher.send_signal(how)
    launcher.wait(timeout=30)
    deadline = time.monotonic() + 20
    while _running("_rank_main") or _running(f"sleep 7000{tag}") or _running(f"sleep 7001{tag}"):
        if time.monotonic() > deadline:
            leftovers = _running("_rank_main") + _running("sleep 700")
            os.system(f"pkill -f 'sleep 700.{tag}'; pkill -f _rank_main")  # clean up, then fail
            pytest.fail(f"left running after the launcher died: {leftovers}")
        time.sleep(0.5)
