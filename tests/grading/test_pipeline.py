"""The grading package as a declared pipeline: one module per step, one test file per module."""

from __future__ import annotations

from pathlib import Path

import teacher.grading as grading

PACKAGE = Path(grading.__file__).parent
TESTS = Path(__file__).parent
STEPS = ["collect", "sandbox", "judge", "report"]


def test_the_front_file_names_the_steps_in_reading_order():
    doc = grading.__doc__
    positions = [doc.index(f"``{step}``") for step in STEPS]
    assert positions == sorted(positions)
    assert set(grading.__all__) <= set(dir(grading))


def test_every_step_has_its_module_and_its_test_file():
    for step in STEPS:
        assert (PACKAGE / f"{step}.py").is_file(), step
    tested = {p.stem.removeprefix("test_") for p in TESTS.glob("test_*.py")}
    assert set(STEPS) <= tested, f"steps without a test file: {set(STEPS) - tested}"
