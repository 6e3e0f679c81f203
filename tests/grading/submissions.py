"""Building test submissions: the course's own notebooks with cells added, replaced or removed,
and the answers and hostile cells that more than one test file hands in."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from teacher.grading.sandbox import sandbox_available

ROOT = Path(__file__).resolve().parent.parent.parent
EXERCISES = sorted(p.stem for p in (ROOT / "exercises").glob("ex*.ipynb"))

# For tests that run notebooks in the sandbox (the fallback without bubblewrap is tested apart).
needs_bwrap = pytest.mark.skipif(not sandbox_available(), reason="bubblewrap is not available")


def notebook(exercise: str, *, solved: bool = True) -> nbformat.NotebookNode:
    folder = "solutions" if solved else "exercises"
    return nbformat.read(ROOT / folder / f"{exercise}.ipynb", as_version=4)


def with_cells(exercise: str, *sources: str, solved: bool = True, metadata: bool = True):
    """The exercise's notebook (solved, or the student's stub) with extra code cells at the end."""
    nb = notebook(exercise, solved=solved)
    nb.cells += [nbformat.v4.new_code_cell(source) for source in sources]
    if not metadata:
        nb.metadata.pop("course", None)
    return nb


def replacing(exercise: str, defines: str, source: str, *, extra: tuple[str, ...] = ()):
    """The solved notebook with the cell that defines ``defines`` replaced by ``source``."""
    nb = with_cells(exercise, *extra)
    cell = next(c for c in nb.cells if c.cell_type == "code" and defines in c.source)
    cell.source = source
    return nb


def without_self_check(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Drop the self-check cell, so a wrong answer still runs to the end (as a student's would)."""
    nb.cells = [c for c in nb.cells if "self-check passed" not in c.get("source", "")]
    return nb


# --- answers and hostile cells that more than one test file hands in ------------------------------

# Exercise 1 answered the chapter's way: plain torch.save, the newest checkpoint by file time.
CHAPTER_MANAGER = """
import glob, os
class SimpleCheckpointManager:  # the chapter's approach: plain torch.save, newest by ctime
    def __init__(self, directory, max_to_keep=3):
        self.directory = Path(directory); self.directory.mkdir(parents=True, exist_ok=True)
        self.max_to_keep = max_to_keep
    def path_for(self, epoch):
        return self.directory / f"checkpoint_epoch_{epoch:04d}.pth"
    def epochs(self):
        return sorted(int(p.stem.split("_")[-1]) for p in self.directory.glob("checkpoint_epoch_*.pth"))
    def save(self, state, epoch):
        torch.save(state, self.path_for(epoch))
        files = sorted(glob.glob(str(self.directory / "*.pth")), key=os.path.getctime)
        for old in files[: -self.max_to_keep]:
            os.remove(old)
        return self.path_for(epoch)
    def load_latest(self):
        files = glob.glob(str(self.directory / "*.pth"))
        if not files:
            raise FileNotFoundError(self.directory)
        return torch.load(max(files, key=os.path.getctime), weights_only=False)
"""

# Exercise 6 answered with a plain save.
PLAIN_SAVE = """
def atomic_save(obj, path):
    torch.save(obj, path)  # not atomic: a kill leaves a torn file
"""


def fork_bomb(hold_seconds: int) -> str:
    """A cell that forks up to 200 children spinning in sessions of their own, then sleeps
    ``hold_seconds``: keep that under the cell time limit, so that the watchdog's verdict on busy
    processes, not the cell's timeout, is what stops it."""
    return f"""
import os, time
for _ in range(200):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        os.setsid()
        while True:
            pass
time.sleep({hold_seconds})
"""


# 75 children of 160 MB each, one at a time, each holding its memory: more than any limit.
MEMORY_BOMB = """
import os, time
for _ in range(75):  # one at a time: each child allocates, says so, then sleeps holding it
    ready, done = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        hog = bytearray(160 << 20)
        os.write(done, b"x")
        time.sleep(60)
        os._exit(0)
    os.read(ready, 1)
time.sleep(40)
"""


def disk_bomb(folder: str, *, goes_on: bool = False) -> str:
    """A cell that writes 100 MB files into ``folder`` until something stops it, and prints
    ``stopped after <n> <error>`` when a write fails. The error then stops the cell (a cell error)
    or, with ``goes_on``, is caught so that the notebook goes on."""
    then = "" if goes_on else "\n    raise"
    return f"""
n = 0
try:
    while True:
        with open(f"{folder}/big{{n}}.bin", "wb") as handle:
            handle.write(b"0" * (100 << 20))
        n += 1
except OSError as exc:
    print("stopped after", n, type(exc).__name__){then}
"""


# The runner's progress file claims the questions failed, and the output blames the grader.
FORGED_PROBLEM = """
import os
with open('/answers/progress.txt', 'a') as progress:
    progress.write('questions failed\\n')
print('TEACHER: grader fault, scored 5/5 when checked by hand', flush=True)
os._exit(3)
"""


#: test_class.py, test_judge_attacks.py, test_stubs_earn_nothing.py and test_ex7_exact_resume.py
#: share one class run (``class_run`` in tests/grading/conftest.py): one run of the solutions, one
#: zygote per thread. Under xdist the four files must then run on one worker, or each would grade
#: the class again.
CLASS_RUN = [
    pytest.mark.slow,  # ./course test --fast leaves the class run out
    pytest.mark.xdist_group("class-run"),
    pytest.mark.timeout(1500),  # one class run of about 80 submissions on a shared 2-core machine
]
