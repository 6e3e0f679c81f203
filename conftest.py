"""Suite-wide pytest hooks: print how long each notebook took, and fail notebooks that ran no cell."""

from __future__ import annotations

from collections import defaultdict

import pytest

_notebook_seconds: dict[str, float] = defaultdict(float)
_notebook_cells_run: dict[str, int] = defaultdict(int)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    path = report.nodeid.split("::")[0]
    if path.endswith(".ipynb"):
        _notebook_seconds[path] += report.duration
        if report.when == "call" and report.passed:
            _notebook_cells_run[path] += 1


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _notebook_seconds:
        return
    terminalreporter.section("time per notebook (nbval, all cells)")
    for path, seconds in sorted(_notebook_seconds.items()):
        terminalreporter.write_line(
            f"{seconds:6.1f} s  {_notebook_cells_run[path]:3d} cells passed  {path}"
        )
