"""Suite-wide pytest hooks: print how long each notebook took, and fail notebooks that ran no cell.

On a GPU machine ``./course test`` runs the suite twice (see the ``course`` script): once with
``COURSE_DEVICE=cpu``, comparing the notebooks' outputs with the committed (CPU) ones, and once with
``COURSE_DEVICE=cuda COURSE_CUDA_RUN=1 --nbval-lax``, where only the notebooks, the solutions and
the tests that exercise a CUDA path (marker ``cuda``, or listed in ``CUDA_TESTS``) are kept.
``COURSE_PROGRESS_LOG=FILE`` appends a line per notebook and per test as it starts and ends
(tools/gpu_check.sh: a run cut off at its time limit still says which notebook hung).

``./course test`` runs the suite on every core (pytest-xdist, ``--dist loadgroup``): each test file,
and each notebook, is one group that runs on one worker (a notebook's cells share a kernel; a
file's module fixtures are built once); the tests listed in ``SPREAD`` are groups of their own,
since each runs a whole notebook or job by itself. ``./course test --fast`` leaves out the tests
marked ``slow`` (torchrun jobs, class grading runs, the browser).

The collapsed solutions of a chapter notebook's inline exercises (```python blocks inside
``<details>`` in its nbsrc source) run as extra nbval items, "Inline solution N", after the
notebook's last cell and in the same kernel, as a learner runs them after the notebook: a
solution that no longer works fails there, and no notebook runs twice (``_with_inline_solutions``).
A notebook's kernel that dies before it answers is reported with what it wrote to stderr
(``_kernel_start_naming_its_stderr``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

#: Tests whose CUDA path the CUDA run of ./course test must exercise (node id prefixes), besides
#: those marked ``@pytest.mark.cuda``: the RNG restore after map_location, DataParallel moving a
#: module to cuda:0, the default map_location, the backend choice. (The notebooks' inline
#: solutions run with their notebooks.)
CUDA_TESTS = (
    "tests/test_device.py",
    "tests/test_safe_load.py",
    "tests/test_checkpoint.py::test_cpu_rng_restored_whatever_map_location_did",
    "tests/test_checkpoint.py::test_rng",
    "tests/test_state_dict.py::test_one_helper",
    "tests/distributed/test_elastic_job.py::test_backend_choice",
    "tests/distributed/test_elastic_job.py::test_two_nodes",
)


#: Test files whose tests are independent and heavy (each re-runs a notebook or a job): spread one
#: test per worker instead of keeping the file on one.
SPREAD = ("tests/distributed/test_launcher_orphans.py",)

#: Notebooks whose inline solutions do not run after them: 01b and 02b's are self-contained and
#: run in tests/test_big_models.py; 05b's start torchrun jobs for about a minute.
INLINE_SOLUTIONS_NOT_RUN = ("01b_big_models", "02b_safe_formats", "05b_torchrun_elastic")


def _cuda_run() -> bool:
    return os.environ.get("COURSE_CUDA_RUN") == "1"


def _with_inline_solutions(collect):  # noqa: ANN001, ANN202 - wraps nbval's IPyNbFile.collect
    """nbval's items for a notebook, then one per inline solution of ``notebooks/NN_x.ipynb``
    (read from ``nbsrc/notebooks/NN_x.py`` beside it): unrun reference cells, so nbval runs them
    in the notebook's kernel, compares no output, and fails the item if the solution raises."""
    import nbformat
    from nbval.plugin import IPyNbCell

    def collect_with_solutions(self):  # noqa: ANN001, ANN202
        items = list(collect(self))
        yield from items
        notebook = Path(str(self.fspath))
        source = notebook.parent.parent / "nbsrc" / "notebooks" / f"{notebook.stem}.py"
        if notebook.parent.name != "notebooks" or notebook.stem in INLINE_SOLUTIONS_NOT_RUN:
            return
        if not source.is_file():
            return
        sys.path.insert(0, str(Path(__file__).parent / "tools"))
        import build_notebooks

        solutions = build_notebooks.inline_solutions(
            build_notebooks.parse_source(source.read_text())
        )
        for index, code in enumerate(solutions):
            yield IPyNbCell.from_parent(
                self,
                name=f"Inline solution {index}",
                cell_num=len(items) + index,
                cell=nbformat.v4.new_code_cell(code),
                options=defaultdict(bool, check=False),
            )

    return collect_with_solutions


def _kernel_start_naming_its_stderr(start):  # noqa: ANN001, ANN202 - wraps nbval.kernel's
    """nbval's ``start_new_kernel``, with the kernel's own stderr kept in a file (nbval sends it to
    /dev/null): when the kernel dies before it answers, nbval says only "Kernel died before
    replying to kernel_info" (seen once, every kernel of 01b in a row, cause unknown); the error
    then ends with what the kernel wrote."""
    import tempfile

    def start_new_kernel(startup_timeout=60, kernel_name="python", **kwargs):  # noqa: ANN001, ANN202
        devnull = kwargs.pop("stderr", None)  # nbval's own choice: the kernel's stderr thrown away
        if devnull is not None:
            devnull.close()
        with tempfile.TemporaryFile() as log:
            try:
                return start(startup_timeout, kernel_name, stderr=log, **kwargs)
            except RuntimeError as error:
                log.seek(0)
                words = log.read()[-3000:].decode("utf-8", "replace").strip() or "(nothing)"
                raise RuntimeError(f"{error}; the kernel's stderr:\n{words}") from error

    start_new_kernel.naming_its_stderr = True
    return start_new_kernel


def pytest_configure(config: pytest.Config) -> None:
    if config.pluginmanager.hasplugin("nbval"):
        import nbval.kernel
        from nbval.plugin import IPyNbFile

        if not getattr(IPyNbFile.collect, "with_inline_solutions", False):
            IPyNbFile.collect = _with_inline_solutions(IPyNbFile.collect)
            IPyNbFile.collect.with_inline_solutions = True
        if not getattr(nbval.kernel.start_new_kernel, "naming_its_stderr", False):
            nbval.kernel.start_new_kernel = _kernel_start_naming_its_stderr(
                nbval.kernel.start_new_kernel
            )
    config.addinivalue_line(
        "markers", "cuda: exercises a CUDA path; kept in the CUDA run of ./course test"
    )
    config.addinivalue_line(
        "markers", "slow: takes tens of seconds (left out by ./course test --fast)"
    )


def pytest_report_header(config: pytest.Config) -> str | None:
    device = os.environ.get("COURSE_DEVICE") or "default (CUDA if present)"
    if _cuda_run():
        return (
            f"course: CUDA run, COURSE_DEVICE={device}: notebooks and solutions (errors only, "
            "--nbval-lax) and the CUDA tests"
        )
    return f"course: COURSE_DEVICE={device}"


def _group_for_xdist(items: list[pytest.Item]) -> None:
    """One xdist group per file (a notebook's cells must share its kernel), or per test in SPREAD."""
    for item in items:
        path = item.nodeid.split("::")[0]
        if item.get_closest_marker("xdist_group") is None:
            group = item.nodeid if path.startswith(SPREAD) else path
            item.add_marker(pytest.mark.xdist_group(name=group))


@pytest.hookimpl(tryfirst=True)  # before xdist's own, which reads the groups on the workers
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    _group_for_xdist(items)
    if not _cuda_run():
        return
    keep, drop = [], []
    for item in items:
        path = item.nodeid.split("::")[0]
        wanted = (
            path.endswith(".ipynb")
            or item.get_closest_marker("cuda") is not None
            or item.nodeid.startswith(CUDA_TESTS)
        )
        (keep if wanted else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def _progress(event: str, nodeid: str, **extra: object) -> None:
    """One JSON line to COURSE_PROGRESS_LOG (appended whole, also from xdist workers)."""
    target = os.environ.get("COURSE_PROGRESS_LOG")
    if not target:
        return
    line = json.dumps({"t": round(time.time(), 2), "event": event, "id": nodeid, **extra})
    fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


_notebook_seconds: dict[str, float] = defaultdict(float)
_notebook_cells_run: dict[str, int] = defaultdict(int)
_notebook_cells_failed: dict[str, int] = defaultdict(int)
_notebooks_started: dict[str, float] = {}
_test_outcomes: dict[str, tuple[str, str]] = {}  # nodeid: (outcome, phase), the worst phase's
_failed_cells: set[str] = set()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):  # noqa: ANN201
    """Progress lines (where the test runs: in the xdist worker): a notebook when its first cell
    starts and after its last one, a test when it starts (its outcome: pytest_runtest_logreport)."""
    path = item.nodeid.split("::")[0]
    notebook = path.endswith(".ipynb")
    if notebook and path not in _notebooks_started:
        _notebooks_started[path] = time.monotonic()
        _progress("notebook-start", path)
    if not notebook:
        _progress("start", item.nodeid)
    started = time.monotonic()
    yield
    seconds = round(time.monotonic() - started, 2)
    if notebook and item.nodeid in _failed_cells:
        _progress("cell-failed", item.nodeid, seconds=seconds)
    if not notebook:
        outcome, phase = _test_outcomes.pop(item.nodeid, ("passed", "call"))
        _progress(outcome, item.nodeid, when=phase, seconds=seconds)
    if notebook and (nextitem is None or nextitem.nodeid.split("::")[0] != path):
        _progress(
            "notebook-end",
            path,
            cells_passed=_notebook_cells_run[path],
            cells_failed=_notebook_cells_failed[path],
            seconds=round(time.monotonic() - _notebooks_started[path], 1),
        )


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    path = report.nodeid.split("::")[0]
    if path.endswith(".ipynb"):
        _notebook_seconds[path] += report.duration
        if report.when == "call" and report.passed:
            _notebook_cells_run[path] += 1
        if report.failed:
            _notebook_cells_failed[path] += 1
            _failed_cells.add(report.nodeid)
    elif report.when == "call" or report.outcome != "passed":
        _test_outcomes[report.nodeid] = (report.outcome, report.when)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _notebook_seconds:
        return
    terminalreporter.section("time per notebook (nbval, all cells)")
    for path, seconds in sorted(_notebook_seconds.items()):
        terminalreporter.write_line(
            f"{seconds:6.1f} s  {_notebook_cells_run[path]:3d} cells passed  {path}"
        )
