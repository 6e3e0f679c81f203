"""A whole class graded in one run: honest, wrong, broken and hostile submissions side by side.

What a teacher must be able to trust: the solutions get full marks, untouched exercises nothing,
wrong answers the partial score their mistakes deserve, and no submission, whatever it does,
gains points, changes another's grade, touches the course's files, leaks the hidden checks,
escapes its sandbox or stops the gradebook from being written.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
import socket
import subprocess
import tempfile
import threading
from pathlib import Path

import nbformat
import pytest
from submissions import (
    CHAPTER_MANAGER,
    CLASS_RUN,
    EXERCISES,
    FORGED_PROBLEM,
    MEMORY_BOMB,
    PLAIN_SAVE,
    ROOT,
    disk_bomb,
    fork_bomb,
    needs_bwrap,
    replacing,
    with_cells,
    without_self_check,
)

from teacher.grading import Limits, Status, grade_class

pytestmark = [needs_bwrap, *CLASS_RUN]  # on the worker grading the class run (conftest.py)

TOKEN = "e5c4pe7ok3n"

UNSORTED_REPORT = """
def load_matching_weights(model, state_dict):
    own = model.state_dict()
    fitting = {k: v for k, v in state_dict.items() if k in own and own[k].shape == v.shape}
    own.update(fitting)
    model.load_state_dict(own)
    return {"loaded": sorted(fitting, reverse=True),
            "skipped": sorted((k for k in state_dict if k not in fitting), reverse=True)}
"""

NAIVE_UNWRAP = """
def load_unwrapped(model, state_dict):
    model.load_state_dict({k.replace("module.", "").replace("_orig_mod.", ""): v
                           for k, v in state_dict.items()})
"""

# Forging: the stub, plus files that claim full marks wherever a result might be read.
FORGER = """
import json, pathlib
for folder in (pathlib.Path("/answers"), pathlib.Path.cwd()):
    for name in ("result.json", "q0.report.json", "q1.report.json", "q2.report.json"):
        try:
            (folder / name).write_text(json.dumps({"type": "dict", "score": 100, "checks": [],
                "loaded": {"type": "list", "items": []}, "skipped": {"type": "list", "items": []}}))
        except OSError as exc:
            print(exc)
print("ALL CHECKS PASSED: 4/4")
"""

# Replacing the runner's step functions through the frame stack: every question "succeeds".
FRAME_PATCHER = """
import sys
frame = sys._getframe()
while frame is not None:
    asker = frame.f_globals.get("Asker")
    if asker is not None:
        asker.run = lambda self, qid, fn, *a, **k: (True, {"loaded": [], "skipped": []})
        asker.call = lambda self, qid, name, *a, **k: (True, {"loaded": [], "skipped": []})
    frame = frame.f_back
"""

# Patching torch and builtins, and an answer whose lists equal anything.
PATCHER = """
import builtins, torch
class AlwaysEqual(list):
    def __eq__(self, other): return True
    def __ne__(self, other): return False
torch.equal = lambda *a, **k: True
builtins.isinstance = lambda *a, **k: True
def load_matching_weights(model, state_dict):
    return {"loaded": AlwaysEqual(), "skipped": AlwaysEqual()}
"""

REWRITER = """
import pathlib
targets = [pathlib.Path(p) for p in {targets!r}]
for target in targets:
    try:
        target.write_text("pass\\n")
        print("rewrote", target)
    except OSError as exc:
        print(type(exc).__name__)
"""

KILLER = """
import os, signal
for pid in (os.getppid(), 1):
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError as exc:
        print(type(exc).__name__)
"""

CORRUPTER = """
import pathlib
for name in ("progress.txt", "cell_errors.json", "q0.report.json"):
    with open(pathlib.Path("/answers") / name, "ab") as handle:
        handle.write(b"\\xff{not json")
"""

DELETER = """
import shutil, pathlib
shutil.rmtree(pathlib.Path.cwd().parent, ignore_errors=True)
shutil.rmtree("/answers", ignore_errors=True)
"""

LEAKER = """
import pathlib
for secret in {secrets!r}:
    print(pathlib.Path(secret).read_text())
"""

ESCAPER = """
import os, pathlib, socket, subprocess
for target in ("/tmp/{token}", pathlib.Path.home() / "{token}", "/root/{token}", "{repo}/{token}"):
    try:
        pathlib.Path(target).write_text("escaped")
    except OSError as exc:
        print(type(exc).__name__)
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=2).sendall(b"{token}")
except OSError as exc:
    print("network:", type(exc).__name__)
subprocess.Popen(["sleep", "987654"], start_new_session=True)
"""

JUPYTER_USER = """
def load_matching_weights(model, state_dict):
    own = model.state_dict()
    fitting = {k: v for k, v in state_dict.items()
               if k in own and not (own[k].shape
                                    != v.shape)}
    own.update(fitting)
    model.load_state_dict(own)
    display(sorted(fitting))
    get_ipython()
    return {"loaded": sorted(fitting), "skipped": sorted(k for k in state_dict if k not in fitting)}
%time sorted([3, 1, 2])
"""


# Writing into every inherited pipe: in a warm sandbox, the zygote's reply pipe if it were open.
PIPER = """
import os, stat
for fd in range(3, 256):
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            os.write(fd, b'{"exit": 0}\\n' * 5)
            print("wrote into pipe", fd)
    except OSError:
        pass
"""

# Planting a module where a later job's import would find it.
PLANTER = """
import sys
for folder in ["/", "/tmp", "/dev/shm", *sys.path]:
    try:
        with open(f"{folder}/course_extra_helper.py", "w") as handle:
            handle.write("import os\\nopen('/answers/progress.txt', 'a').write('HIJACKED')\\nos._exit(0)\\n")
        print("planted in", folder)
    except OSError:
        pass
"""

# An honest student whose notebook tries an optional import (what a planted module would hijack).
OPTIONAL_IMPORT = """
try:
    import course_extra_helper
except ImportError:
    pass
"""

DEEP_FOLDERS = """
import os
os.chdir("/answers")
for _ in range(3000):
    os.mkdir("d")
    os.chdir("d")
os.chdir("/submission")
"""

# The plain save, plus os.kill and time.sleep switched off so that the grader's kills miss.
KILL_DODGER = (
    PLAIN_SAVE
    + """
import os, time
os.kill = lambda *a, **k: None
time.sleep = lambda *a, **k: None
"""
)

# The solved manager that, for one question, swaps its answers folder for a link to the host.
LINKER = """
import os, shutil
_Solved = SimpleCheckpointManager
class SimpleCheckpointManager(_Solved):
    def __init__(self, directory, *args, **kwargs):
        if "/times/" in str(directory):
            shutil.rmtree("/answers/retention", ignore_errors=True)
            os.symlink("{host}", "/answers/retention")
        super().__init__(directory, *args, **kwargs)
"""


FORGED_PASS = 'raise RuntimeError("ok\\n  PASS test_names_and_retention (1/1)")'

MAGIC_USER = "%matplotlib inline\n%autoreload 2\nimport math"

# busy_seconds=1: the fork bomb's 200 spinning children take both cores while the watchdog waits.
CLASS_LIMITS = Limits(timeout=240, cell_timeout=60, memory_mb=2500, disk_mb=300, busy_seconds=1)


def _tree_digest(root: Path) -> str:
    """A digest of every file of the course that git knows or would add (not .venv, not .git)."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    digest = hashlib.sha256()
    for name in sorted(n for n in listed if n):
        path = root / name
        digest.update(name.encode())
        digest.update(path.read_bytes() if path.is_file() else b"<missing>")
    return digest.hexdigest()


class _Listener:
    """A loopback server on the grader's machine that a sandboxed notebook must not reach."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.5)
        self.port = self.server.getsockname()[1]
        self.connections = 0
        self._stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                connection, _ = self.server.accept()
            except TimeoutError:
                continue
            self.connections += 1
            connection.close()

    def close(self) -> None:
        self._stop = True
        self.thread.join()
        self.server.close()


def _grade_runs(folder: Path) -> set[str]:
    return {p.name for p in folder.glob("grade-run-*")}


def grade_the_class(tmp_path_factory) -> dict:
    """Hand in this file's class, test_judge_attacks.py's, test_stubs_earn_nothing.py's and
    test_ex7_exact_resume.py's, and grade them in one run (conftest.py's ``class_run``): the
    reports by (student, exercise), the gradebook, and what the run left behind."""
    from test_ex7_exact_resume import submit_ex7_answers
    from test_judge_attacks import submit_attacks
    from test_stubs_earn_nothing import submit_stubs

    root = tmp_path_factory.mktemp("class")
    paths: dict[str, Path] = {}

    def submit(student: str, nb, name: str = "ex3_partial_loading.ipynb") -> None:
        folder = root / student
        folder.mkdir(exist_ok=True)
        if isinstance(nb, str):
            (folder / name).write_text(nb)
        else:
            nbformat.write(nb, folder / name)
        paths[student] = folder / name

    def submit_exercise(student: str, nb, exercise: str) -> None:
        """The other files' students; the same notebook under the same name is handed in once
        (alice's solutions, dana's chapter manager, fay's plain save). Some names hand in
        different exercises here and there: zoe (ex3 here, ex2 and ex6 there) and leaker (ex3
        here, ex2 there), each graded and checked per exercise."""
        path = root / student / f"{exercise}.ipynb"
        if path.exists():
            assert nbformat.writes(nbformat.read(path, as_version=4)) == nbformat.writes(nb), path
            return
        submit(student, nb, f"{exercise}.ipynb")

    for exercise in EXERCISES:
        submit("alice", with_cells(exercise), f"{exercise}.ipynb")
        submit("bob", with_cells(exercise, solved=False), f"{exercise}.ipynb")
    ex1, ex5, ex6 = "ex1_checkpoint_manager", "ex5_unwrap_prefixes", "ex6_atomic_save"
    submit(
        "carl",
        without_self_check(replacing("ex3_partial_loading", "def load_matching", UNSORTED_REPORT)),
    )
    submit(
        "dana",
        without_self_check(replacing(ex1, "class SimpleCheckpointManager", CHAPTER_MANAGER)),
        f"{ex1}.ipynb",
    )
    submit(
        "eve",
        without_self_check(replacing(ex5, "def load_unwrapped", NAIVE_UNWRAP)),
        f"{ex5}.ipynb",
    )
    submit("fay", without_self_check(replacing(ex6, "def atomic_save", PLAIN_SAVE)), f"{ex6}.ipynb")

    listener = _Listener()
    hidden = [ROOT / "teacher" / "exercises" / "ex3_partial_loading" / "judge.py",
              ROOT / "course_lib" / "grading" / "judge.py", ROOT / "tests" / "grading" / "test_class.py",
              ROOT / "solutions" / "ex3_partial_loading.ipynb"]  # fmt: skip
    submit("forger", with_cells("ex3_partial_loading", FORGER, solved=False))
    submit("framer", with_cells("ex3_partial_loading", FRAME_PATCHER, solved=False))
    submit("patcher", with_cells("ex3_partial_loading", PATCHER, solved=False))
    submit("rewriter", with_cells("ex3_partial_loading", REWRITER.format(targets=[str(p) for p in hidden]
           + [str(ROOT / "course_lib" / "safe_io.py")])))  # fmt: skip
    submit("killer", with_cells("ex3_partial_loading", KILLER))
    submit("corrupter", with_cells("ex3_partial_loading", CORRUPTER))
    submit("deleter", with_cells("ex3_partial_loading", DELETER))
    submit(
        "leaker", with_cells("ex3_partial_loading", LEAKER.format(secrets=[str(p) for p in hidden]))
    )
    submit(
        "escaper",
        with_cells(
            "ex3_partial_loading", ESCAPER.format(token=TOKEN, port=listener.port, repo=ROOT)
        ),
    )
    submit("jupyter", replacing("ex3_partial_loading", "def load_matching", JUPYTER_USER))
    submit(
        "flooder", with_cells("ex3_partial_loading", "for _ in range(250):\n    print('x' * 2**20)")
    )
    submit("piper", with_cells("ex3_partial_loading", PIPER))
    submit("planter", with_cells("ex3_partial_loading", PLANTER))
    for honest in ("quinn", "zoe"):
        submit(honest, with_cells("ex3_partial_loading", OPTIONAL_IMPORT))
    submit("deep", with_cells("ex3_partial_loading", DEEP_FOLDERS))
    submit(
        "dodger", without_self_check(replacing(ex6, "def atomic_save", KILL_DODGER)), f"{ex6}.ipynb"
    )
    host = root.parent / "host-secret"
    (host / "checkpoints").mkdir(parents=True)
    (host / "checkpoints" / "teacher_private.pth").write_text("x")
    submit("linker", with_cells(ex1, LINKER.format(host=host)), f"{ex1}.ipynb")
    submit("twice", with_cells("ex3_partial_loading"))
    nbformat.write(with_cells("ex3_partial_loading", solved=False),
                   root / "twice" / "ex3_partial_loading-Copy1.ipynb")  # fmt: skip
    submit("broken meta", '{"cells": [], "metadata": []}')
    submit("nested", "[" * 100000 + "]" * 100000)
    submit("carol", '{"cells": [ {"cell_type": "code", "sour')
    submit("erin", with_cells("ex3_partial_loading", "import os\nos._exit(3)"))
    submit("frank", with_cells("ex3_partial_loading", "hog = bytearray(50 * 2**30)"))
    submit(
        "gina", with_cells("ex3_partial_loading", "open('big.bin', 'wb').write(b'0' * (300 << 20))")
    )
    submit("judy", with_cells("ex3_partial_loading"), "my homework.ipynb")
    # Issue 20: the bombs, between honest students ("aaron" before, alice, quinn, zoe after).
    submit("aaron", with_cells("ex2_onnx_export"), "ex2_onnx_export.ipynb")
    submit("bomb-fork", with_cells("ex2_onnx_export", fork_bomb(40)), "ex2_onnx_export.ipynb")
    submit("bomb-memory", with_cells("ex3_partial_loading", MEMORY_BOMB))
    submit("bomb-disk", with_cells("ex3_partial_loading", disk_bomb(".")))
    submit("bomb-answers", with_cells("ex3_partial_loading", disk_bomb("/answers")))
    submit("surrogate", with_cells("ex3_partial_loading", 'raise Exception("\\ud800")'))
    submit("forged-pass", with_cells("ex3_partial_loading", FORGED_PASS))
    submit("forged-problem", with_cells("ex3_partial_loading", FORGED_PROBLEM))
    magic = with_cells("ex3_partial_loading")
    first = next(c for c in magic.cells if c.cell_type == "code")
    first.source = MAGIC_USER + "\n" + first.source
    submit("magic", magic)
    bad_name = os.fsdecode(b"ex3_partial_loading\xff.ipynb")
    submit("undecodable", with_cells("ex3_partial_loading"), bad_name)
    submit("ken", with_cells("ex3_partial_loading", metadata=False), "untitled.ipynb")
    submit_attacks(submit_exercise)
    submit_stubs(submit_exercise)
    submit_ex7_answers(submit_exercise)

    # The run's scratch goes to a temporary folder of its own: under xdist another worker may be
    # grading at the same time, and its scratch in /tmp is not this run's to account for.
    scratch_parent, tempdir_before = tmp_path_factory.mktemp("grader-tmp"), tempfile.tempdir
    before, runs_before = _tree_digest(ROOT), _grade_runs(scratch_parent)
    out = root.parent / "grades.csv"
    out.write_text("previous grades\n")
    tempfile.tempdir = str(scratch_parent)
    try:
        reports = grade_class(root, out, seed=1234, jobs=2, progress=False, limits=CLASS_LIMITS)
    finally:
        tempfile.tempdir = tempdir_before
        listener.close()
    table = subprocess.run(["ps", "-eo", "stat,args"], capture_output=True, text=True).stdout
    # Zombies are not running; a container's init that does not reap them is not the grader's doing.
    processes = "\n".join(line for line in table.splitlines() if not line.lstrip().startswith("Z"))
    return {
        "root": root,
        "out": out,
        "reports": {(r.student, r.exercise): r for r in reports},
        "paths": paths,
        "tree_unchanged": _tree_digest(ROOT) == before,
        "new_grade_runs": _grade_runs(scratch_parent) - runs_before,
        "processes": processes,
        "listener": listener,
    }


@pytest.fixture(scope="module")
def graded(class_run):
    return class_run


def _report(graded, student: str, exercise: str = "ex3_partial_loading"):
    return graded["reports"][(student, exercise)]


@pytest.mark.parametrize("exercise", EXERCISES)
def test_solutions_get_full_marks(graded, exercise):
    report = _report(graded, "alice", exercise)
    assert report.status == Status.OK and report.problem is None, report.summary()
    assert not report.cell_errors and report.score == report.max_score > 0, report.summary()


@pytest.mark.parametrize("exercise", EXERCISES)
def test_untouched_exercises_fail_every_check(graded, exercise):
    report = _report(graded, "bob", exercise)
    assert report.checks and all(c.points == 0 for c in report.checks), report.summary()
    assert any("not implemented yet" in e for e in report.cell_errors), report.summary()


@pytest.mark.parametrize(
    ("student", "exercise", "failed"),
    [
        ("carl", "ex3_partial_loading", {"test_report_lists_are_sorted"}),
        (
            "dana",
            "ex1_checkpoint_manager",
            {
                "test_latest_by_epoch_not_file_time",
                "test_failed_save_loses_nothing",
                "test_refuses_code_in_checkpoints",
            },
        ),
        ("eve", "ex5_unwrap_prefixes", {"test_keeps_names_that_merely_contain_the_words"}),
        (
            "fay",
            "ex6_atomic_save",
            {
                "test_survives_being_killed_mid_save",
                "test_failed_save_keeps_the_old_file_and_no_temp",
            },
        ),
    ],
)
def test_wrong_answers_lose_exactly_the_points_of_their_mistakes(graded, student, exercise, failed):
    report = _report(graded, student, exercise)
    assert {c.name for c in report.checks if not c.passed} == failed, report.summary()
    assert 0 < report.score < report.max_score


@pytest.mark.parametrize("student", ["forger", "framer", "patcher"])
def test_forged_answers_and_patched_checks_gain_nothing(graded, student):
    report = _report(graded, student)
    assert report.score == 0, report.summary()


@pytest.mark.parametrize(
    "student", ["rewriter", "killer", "corrupter", "deleter", "escaper", "leaker"]
)
def test_hostile_notebooks_leave_the_rest_of_the_class_graded_as_before(graded, student):
    """Each of these ran alongside the class: bob still has nothing, alice everything."""
    report = _report(graded, student)
    assert report.status in (Status.OK, Status.CRASHED), report.summary()
    assert _report(graded, "bob").score == 0
    assert all(
        _report(graded, "alice", e).score == _report(graded, "alice", e).max_score
        for e in EXERCISES
    )


def test_the_course_files_are_unchanged(graded):
    assert graded["tree_unchanged"]
    assert not (ROOT / TOKEN).exists()


def test_hidden_checks_do_not_leak_into_the_gradebook_or_feedback(graded):
    judge_source = (ROOT / "teacher" / "exercises" / "ex3_partial_loading" / "judge.py").read_text()
    secret_lines = [line for line in judge_source.splitlines() if len(line.strip()) > 30]
    feedback = graded["out"].with_name("grades-feedback")
    texts = [graded["out"].read_text()] + [p.read_text() for p in feedback.glob("*.txt")]
    for text in texts:
        assert "def test_" not in text
        assert not [line for line in secret_lines if line.strip() in text]
    leaker = _report(graded, "leaker")
    assert any("FileNotFoundError" in e for e in leaker.cell_errors), leaker.summary()


def test_nothing_escapes_the_sandbox(graded):
    assert not Path("/tmp", TOKEN).exists()
    assert not (Path.home() / TOKEN).exists()
    assert graded["listener"].connections == 0
    assert "sleep 987654" not in graded["processes"]
    # A sandbox whose grading run is over (its scratch folder gone) must not be running.
    runs = [
        re.search(r"(\S*/grade-run-[^/\s]+)", line) for line in graded["processes"].splitlines()
    ]
    assert not [m.group(1) for m in runs if m and not Path(m.group(1)).exists()]
    assert not graded["new_grade_runs"], "the grading run left its scratch folder behind"


@pytest.mark.parametrize("student", ["quinn", "zoe"])
def test_nothing_one_job_leaves_reaches_a_later_job(graded, student):
    """piper wrote into every pipe it had, planter planted modules: later honest jobs do not care."""
    report = _report(graded, student)
    assert report.status == Status.OK and report.score == 4, report.summary()
    assert "HIJACKED" not in (report.problem or "")


def test_a_deep_folder_tree_does_not_stop_the_run(graded):
    assert _report(graded, "deep").score == 4
    assert not graded["new_grade_runs"]


def test_switching_off_the_graders_kills_gains_nothing(graded):
    report = _report(graded, "dodger", "ex6_atomic_save")
    failed = {c.name for c in report.checks if not c.passed}
    assert "test_survives_being_killed_mid_save" in failed, report.summary()


def test_a_link_in_the_answers_is_not_followed_to_the_host(graded):
    report = _report(graded, "linker", "ex1_checkpoint_manager")
    assert "teacher_private" not in report.summary()
    # The listing judged is the one the grader's witness took before the swap: the link is never
    # read, and the solved manager keeps its point.
    assert report.checks[0].passed, report.summary()


def test_one_row_per_exercise_when_a_student_hands_in_copies(graded):
    rows = [r for r in csv.DictReader(graded["out"].open()) if r["student"] == "twice"]
    ex3 = [r for r in rows if r["exercise"] == "ex3_partial_loading"]
    assert len(ex3) == 1 and ex3[0]["score"] == "4", ex3
    assert "ex3_partial_loading-Copy1.ipynb" in ex3[0]["note"]


@pytest.mark.parametrize("student", ["broken meta", "nested"])
def test_hand_edited_notebooks_are_unreadable_not_fatal(graded, student):
    report = _report(graded, student)
    assert report.max_score == 4 and report.score == 0, report.summary()
    assert report.status in (Status.UNREADABLE, Status.OK), report.summary()  # no cells: runs
    feedback = graded["out"].with_name("grades-feedback")
    assert len(list(feedback.glob("broken_meta-*.txt"))) == 1


def test_jupyter_features_work_as_in_jupyterlab(graded):
    report = _report(graded, "jupyter")
    assert report.score == report.max_score and not report.cell_errors, report.summary()


@pytest.mark.parametrize(
    ("student", "status", "problem", "cell_error", "full_marks"),
    [
        ("flooder", Status.OK, None, None, True),  # issue 20, item 12: truncated, graded
        ("carol", Status.UNREADABLE, "not a readable notebook", None, False),
        ("erin", Status.CRASHED, "exited with code 3 in cell In [", None, False),
        ("frank", Status.OK, None, "MemoryError", True),
        ("gina", Status.OK, None, "File too large", True),
        ("ken", Status.UNREADABLE, "cannot tell which exercise", None, False),
    ],
)
def test_broken_notebooks_get_a_precise_status_and_message(
    graded, student, status, problem, cell_error, full_marks
):
    exercise = None if student == "ken" else "ex3_partial_loading"
    report = _report(graded, student, exercise)
    assert report.status == status, report.summary()
    if problem:
        assert report.problem and problem in report.problem, report.summary()
    if cell_error:
        assert any(cell_error in e for e in report.cell_errors), report.summary()
    if exercise:
        assert (report.score == report.max_score) == full_marks, report.summary()
        assert report.max_score == 4, "an unreadable notebook still counts as 0 of its exercise"


def test_renamed_notebook_is_found_by_its_metadata(graded):
    report = _report(graded, "judy")
    assert report.score == report.max_score, report.summary()


def test_gradebook_has_a_row_per_student_and_exercise(graded):
    rows = list(csv.DictReader(graded["out"].open()))
    students = {p.parent.name for p in graded["paths"].values()}
    for student in students - {"ken"}:
        theirs = {r["exercise"]: r for r in rows if r["student"] == student}
        assert set(theirs) >= set(EXERCISES), student
    bob = next(
        r for r in rows if r["student"] == "carl" and r["exercise"] == "ex1_checkpoint_manager"
    )
    assert (bob["status"], bob["score"], bob["max_score"]) == ("missing", "0", "5")
    carol = next(
        r for r in rows if r["student"] == "carol" and r["exercise"] == "ex3_partial_loading"
    )
    assert (carol["status"], carol["score"], carol["max_score"]) == ("unreadable", "0", "4")
    assert {r["seed"] for r in rows} == {"1234"}
    assert {r["sandboxed"] for r in rows} == {"yes"}
    assert Path(str(graded["out"]) + ".backup").read_text() == "previous grades\n"


def test_feedback_keeps_the_whole_message(graded):
    feedback = graded["out"].with_name("grades-feedback") / "carl.txt"
    text = feedback.read_text()
    assert "FAIL test_report_lists_are_sorted (0/1)" in text
    assert "must be a sorted list, not list in that order" in text
    eve = (graded["out"].with_name("grades-feedback") / "eve.txt").read_text()
    assert "size mismatch" in eve or "Missing key" in eve or "Unexpected key" in eve, eve


@pytest.mark.parametrize(
    ("student", "exercise", "verdict"),
    [
        ("bomb-fork", "ex2_onnx_export", "processes busy at once"),
        ("bomb-memory", "ex3_partial_loading", "memory together"),
        ("bomb-answers", "ex3_partial_loading", "into its answers folder"),
    ],
)
def test_a_bomb_costs_only_its_own_submission(graded, student, exercise, verdict):
    """Items 3, 4: stopped as a whole tree; the honest students around it keep full marks."""
    report = _report(graded, student, exercise)
    assert report.status == Status.CRASHED and verdict in (report.problem or ""), report.summary()
    for honest, their_exercise in [("aaron", "ex2_onnx_export"), ("quinn", "ex3_partial_loading"),
                                   ("zoe", "ex3_partial_loading")]:  # fmt: skip
        other = _report(graded, honest, their_exercise)
        assert other.score == other.max_score, other.summary()
    alice = [_report(graded, "alice", e) for e in EXERCISES]
    assert all(r.score == r.max_score for r in alice), [r.summary() for r in alice]


def test_filling_the_home_folder_costs_an_oserror_not_the_run(graded):
    report = _report(graded, "bomb-disk")
    assert any("No space left" in e for e in report.cell_errors), report.summary()
    assert report.score == report.max_score, report.summary()


def test_text_the_student_shaped_reaches_no_verdict_and_no_csv_column(graded):
    """Items 5, 10: a lone surrogate, a non-UTF-8 file name, a forged PASS, a forged problem."""
    rows = list(csv.DictReader(graded["out"].open(encoding="utf-8")))
    assert not [r for r in rows if "TEACHER" in r["problem"] or "5/5" in r["problem"]]
    undecodable = [r for r in rows if r["student"] == "undecodable" and r["score"] != "0"]
    assert [(r["exercise"], r["score"]) for r in undecodable] == [("ex3_partial_loading", "4")]
    assert undecodable[0]["submission"].endswith("\\udcff.ipynb"), undecodable
    feedback = graded["out"].with_name("grades-feedback")
    assert "\\ud800" in (feedback / "surrogate.txt").read_text(encoding="utf-8")
    forged = (feedback / "forged-pass.txt").read_text()
    assert "      |   PASS test_names_and_retention (1/1)" in forged, forged
    assert not [line for line in forged.splitlines() if line.startswith("  PASS test_names")]


def test_magics_on_the_first_line_cost_nothing(graded):
    """Item 11: %matplotlib inline and %autoreload 2 without %load_ext, as in JupyterLab."""
    report = _report(graded, "magic")
    assert report.score == report.max_score and not report.cell_errors, report.summary()
