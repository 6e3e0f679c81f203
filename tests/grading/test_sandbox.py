"""Step 2: what a notebook inside the sandbox can see and do, probed from inside, and its limits."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import nbformat
import pytest
from submissions import (
    FORGED_PROBLEM,
    MEMORY_BOMB,
    ROOT,
    disk_bomb,
    fork_bomb,
    needs_bwrap,
    with_cells,
)

from teacher.grading import Limits, Status, grade_notebook
from teacher.grading.sandbox import run_sandboxed

PROBE = """
import json, os, socket, pathlib
seen = {"uid": os.getuid(), "cwd": os.getcwd(), "course": sorted(os.listdir(%(root)r)),
        "course_lib": sorted(os.listdir(%(root)r + "/course_lib")),
        "teacher": os.path.exists(%(root)r + "/teacher")}
for name, path in [("repo_write", %(root)r + "/course_lib/x.py"), ("tmp_write", "/tmp/x"),
                   ("usr_write", "/usr/x")]:
    try:
        pathlib.Path(path).write_text("x"); seen[name] = "written"
    except OSError as exc:
        seen[name] = type(exc).__name__
try:
    socket.create_connection(("1.1.1.1", 53), timeout=2); seen["net"] = "open"
except OSError as exc:
    seen["net"] = type(exc).__name__
import course_lib.safe_io
seen["course_lib_imports"] = True
try:
    import teacher.grading.judge
    seen["grading_imports"] = True
except ImportError:  # the grader and the hidden checks live outside what the sandbox shows
    seen["grading_imports"] = False
pathlib.Path("/answers/probe.json").write_text(json.dumps(seen))
"""


@needs_bwrap
def test_the_sandbox_shows_only_course_lib_read_only_and_no_network(tmp_path):
    run = run_sandboxed((PROBE % {"root": str(ROOT)},), "ex3_partial_loading", [], tmp_path)
    seen = json.loads((run.answers_dir / "probe.json").read_text())
    assert run.sandboxed and seen["uid"] == 65534 and seen["cwd"] == "/submission"
    assert seen["course"] == [".venv", "course_lib"] or seen["course"] == ["course_lib"]
    assert "safe_io.py" in seen["course_lib"] and seen["teacher"] is False
    assert seen["repo_write"] == "OSError" or seen["repo_write"].endswith("Error")
    assert seen["repo_write"] != "written" and seen["usr_write"] != "written"
    assert seen["tmp_write"] == "written" and not (ROOT / "course_lib" / "x.py").exists()
    assert seen["net"] != "open"
    assert seen["course_lib_imports"] and not seen["grading_imports"]


@needs_bwrap
def test_an_endless_cell_is_stopped_and_the_rest_still_graded(tmp_path):
    path = tmp_path / "ex3_partial_loading.ipynb"
    nbformat.write(with_cells("ex3_partial_loading", "while True:\n    pass"), path)
    report = grade_notebook(path, limits=Limits(cell_timeout=5, timeout=120))
    assert report.status == Status.OK, report.summary()
    assert any("still running after 5 s (stopped)" in e for e in report.cell_errors)
    assert report.score == report.max_score, report.summary()


@needs_bwrap
def test_a_cell_that_blocks_the_time_limit_is_killed_with_its_cell_named(tmp_path):
    path = tmp_path / "ex3_partial_loading.ipynb"
    sneaky = "import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\nwhile True:\n    pass"
    nb = with_cells("ex3_partial_loading", sneaky)
    nbformat.write(nb, path)
    report = grade_notebook(path, limits=Limits(cell_timeout=5, timeout=10))
    cell_number = sum(c.cell_type == "code" for c in nb.cells)
    assert report.status == Status.TIMEOUT
    assert report.problem == (
        f"stopped after 10 s in cell In [{cell_number}] (an endless loop that ignores interrupts?)"
    )
    assert report.score == 0


def test_without_bubblewrap_grading_runs_and_says_so_loudly(tmp_path):
    """The fallback: same limits, no isolation, and every row and the output say it."""
    student = tmp_path / "class" / "zoe"
    student.mkdir(parents=True)
    nbformat.write(with_cells("ex3_partial_loading"), student / "ex3_partial_loading.ipynb")
    out = tmp_path / "grades.csv"
    result = subprocess.run(
        [sys.executable, "-m", "teacher.grading", "--class", str(tmp_path / "class"),
         "--out", str(out), "--seed", "5"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "COURSE_SANDBOX": "off"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "WITHOUT a sandbox" in result.stderr
    rows = [line.split(",") for line in out.read_text().splitlines()]
    header, ex3 = rows[0], next(r for r in rows if "ex3_partial_loading" in r)
    record = dict(zip(header, ex3, strict=True))
    assert (record["status"], record["sandboxed"], record["score"]) == ("sandbox-off", "NO", "4")
    feedback = (tmp_path / "grades-feedback" / "zoe.txt").read_text()
    assert "graded WITHOUT a sandbox" in feedback


WARM_PROBE = """
import ctypes, json, os, pathlib, torch
seen = {"pid": os.getpid(), "jobs": os.listdir("/jobs"), "tmp": os.listdir("/tmp"),
        "torch_equal_patched": torch.equal is not torch.functional.equal
                               if hasattr(torch.functional, "equal") else "n/a",
        "marker_env": os.environ.get("LEFT_BY_EARLIER_JOB")}
libc = ctypes.CDLL(None, use_errno=True)
seen["umount_jobs"] = libc.umount2(b"/jobs", 2)
myself = os.readlink("/proc/self")  # this process as the zygote's /proc numbers it
for pid in sorted(p for p in os.listdir("/proc") if p.isdigit()):
    if pid != myself:
        for leaf in ("mem", "environ"):
            try:
                with open(f"/proc/{pid}/{leaf}", "rb") as handle:
                    handle.read(16)
                seen[f"read_{pid}_{leaf}"] = "READ"
            except OSError as exc:
                seen[f"read_{pid}_{leaf}"] = type(exc).__name__
try:
    seen["stdin"] = os.read(0, 100).decode()
except OSError as exc:
    seen["stdin"] = type(exc).__name__
pathlib.Path("/answers/probe.json").write_text(json.dumps(seen))
# Leave traces for the next job in the same zygote:
pathlib.Path("/tmp/left-behind").write_text("x")
os.environ["LEFT_BY_EARLIER_JOB"] = "yes"
torch.equal = lambda *a, **k: True
"""


@needs_bwrap
def test_warm_children_are_walled_off_from_the_zygote_and_each_other(tmp_path):
    """Two jobs in turn in one zygote: neither reaches the zygote, the other, or its traces."""
    from teacher.grading.sandbox import WarmSandbox

    warm = WarmSandbox(tmp_path, Limits())
    try:
        seen = []
        for _ in range(2):
            workdir = warm.new_workdir()
            run = run_sandboxed((WARM_PROBE,), "ex3_partial_loading", [], workdir, Limits(), warm)
            assert run.problem is None, run.output_tail
            seen.append(json.loads((run.answers_dir / "probe.json").read_text()))
        zygote = warm.process
    finally:
        warm.close()
    first, second = seen
    assert zygote is not None, "the warm sandbox was not used"
    for probe in seen:
        assert probe["pid"] == 1 and probe["jobs"] == []
        assert "left-behind" not in probe["tmp"]  # (a course cloned under /tmp is mounted there)
        assert probe["umount_jobs"] != 0, "the student could unmount the wall over other jobs"
        assert not [k for k, v in probe.items() if v == "READ"], probe
        assert probe["stdin"] == "", "the zygote's command pipe is readable"
    assert second["marker_env"] is None and second["torch_equal_patched"] in (False, "n/a")


# --- issue 20: JupyterLab's magics and output, what happened in a cell, limits on the tree -----

MAGICS = [
    "%matplotlib inline\nx = 1",
    "%matplotlib\ny = 2",
    "%matplotlib widget\nz = 3",
    "%autoreload 2\nw = 4",
    "import json, pathlib\npathlib.Path('/answers/probe.json').write_text(json.dumps([x, y, z, w]))",
]


@needs_bwrap
def test_magics_on_a_cells_first_line_behave_as_in_jupyterlab(tmp_path):
    """Item 11: %matplotlib (inline, bare, widget) and %autoreload without %load_ext."""
    run = run_sandboxed(tuple(MAGICS), "ex3_partial_loading", [], tmp_path, Limits(timeout=120))
    assert run.cell_errors == [], run.cell_errors
    assert json.loads((run.answers_dir / "probe.json").read_text()) == [1, 2, 3, 4]
    assert any("widget" in note and "inline" in note for note in run.notes), run.notes


MAGIC_RAISES = """
import pathlib, sys
sys.path.insert(0, ".")
pathlib.Path("gpu_magics.py").write_text(
    "def needs_a_gpu(line):\\n    raise NotImplementedError('this magic needs a GPU')\\n"
)
import gpu_magics
get_ipython().register_magic_function(gpu_magics.needs_a_gpu)
"""


@needs_bwrap
def test_a_magics_not_implemented_error_is_not_called_unfinished(tmp_path):
    cells = (MAGIC_RAISES, "%needs_a_gpu", "def stub():\n    raise NotImplementedError\nstub()")
    run = run_sandboxed(cells, "ex3_partial_loading", [], tmp_path, Limits(timeout=120))
    assert run.cell_errors[0] == "In [2]: NotImplementedError: this magic needs a GPU"
    assert run.cell_errors[1] == "In [3]: NotImplementedError: not implemented yet"


@needs_bwrap
def test_a_flood_of_output_is_truncated_and_the_notebook_graded(tmp_path):
    """Item 12: more than the output limit printed in a try-it cell: truncated, noted, graded."""
    path = tmp_path / "ex3_partial_loading.ipynb"
    nb = with_cells("ex3_partial_loading", "for _ in range(25):\n    print('x' * 2**20)")
    nbformat.write(nb, path)
    report = grade_notebook(path, limits=Limits(timeout=120))
    assert report.status == Status.OK and report.problem is None, report.summary()
    assert report.score == report.max_score, report.summary()
    assert any("printed 26214" in n and "kept" in n for n in report.notes), report.notes
    assert "printed 26214" in report.summary()


@needs_bwrap
def test_the_feedback_says_what_stopped_a_cell(tmp_path):
    """Item 13: MemoryError, SystemExit (sys.exit(0)), a cell stopped at its time limit."""
    cells = ("import sys\nsys.exit(0)", "hog = bytearray(20 * 2**30)", "while True:\n    pass")
    run = run_sandboxed(cells, "ex3_partial_loading", [], tmp_path, Limits(cell_timeout=3))
    text = "\n".join(run.notes)
    assert "In [1] raised SystemExit" in text, text
    assert "In [2] ran out of memory (MemoryError" in text, text
    assert "In [3] was stopped at its time limit (3 s)" in text, text


@needs_bwrap
def test_the_student_cannot_write_the_problem_column(tmp_path):
    """Item 10: progress.txt + os._exit(3) must not put the student's sentence in the CSV."""
    run = run_sandboxed((FORGED_PROBLEM,), "ex3_partial_loading", [], tmp_path)
    assert run.problem and "TEACHER" not in run.problem and "5/5" not in run.problem, run.problem


UID_PROBE = (
    "import pathlib\npathlib.Path('/answers/uid_map').write_text(open('/proc/self/uid_map').read())"
)

# busy_seconds=1: the fork bomb's 200 spinning children take both cores while the watchdog waits.
BOMB_LIMITS = Limits(timeout=60, cell_timeout=40, memory_mb=1200, disk_mb=150, busy_seconds=1)


@needs_bwrap
@pytest.mark.skipif(os.geteuid() != 0, reason="a host uid of its own needs a grader run as root")
def test_a_sandbox_never_runs_as_host_root(tmp_path):
    """Item 3: as root, RLIMIT_NPROC does not apply; each sandbox gets a host uid of its own."""
    run = run_sandboxed((UID_PROBE,), "ex3_partial_loading", [], tmp_path, BOMB_LIMITS)
    inside, host, _ = (run.answers_dir / "uid_map").read_text().split("\n")[0].split()
    assert inside == "65534" and int(host) >= 1_000_000_000, host


@needs_bwrap
@pytest.mark.parametrize(
    ("bomb", "verdict"),
    [
        (fork_bomb(30), "processes busy at once"),
        (MEMORY_BOMB, "MB of memory together"),
        (disk_bomb("/answers", goes_on=True), "MB into its answers folder"),
    ],
    ids=["fork", "memory", "disk-answers"],
)
def test_a_bomb_is_stopped_as_a_whole_tree(tmp_path, bomb, verdict):
    """Items 3 and 4: limits on the whole process tree, not per process."""
    run = run_sandboxed((bomb,), "ex3_partial_loading", [], tmp_path, BOMB_LIMITS)
    assert run.problem and verdict in run.problem, (run.problem, run.output_tail)
    assert run.returncode != 0


@needs_bwrap
def test_filling_the_home_folder_ends_in_no_space_left(tmp_path):
    """Item 4: the home folder is a size-limited filesystem: OSError, the notebook goes on."""
    bomb = disk_bomb(".", goes_on=True)
    run = run_sandboxed((bomb,), "ex3_partial_loading", [], tmp_path, BOMB_LIMITS)
    assert run.problem is None and "stopped after 1 OSError" in run.output_tail, run.output_tail
