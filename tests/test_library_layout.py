"""course_lib's layout: what each module makes public, and library and course pointing at each other.

- every module says what is public (``__all__``), and every name it lists exists;
- every name a notebook or exercise imports from course_lib has a docstring that names the
  notebook (or exercise) that teaches it, as d2l's "Defined in" does;
- a package's ``__init__`` gives the reading order of all of its modules;
- the tests of each subpackage mirror it: ``tests/<package>/test_<module>.py`` for each module
  with public names, or an entry in ``TESTED_ELSEWHERE`` that says where and why.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest

import course_lib

ROOT = Path(__file__).resolve().parent.parent
MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(course_lib.__path__, "course_lib.")
    if not m.name.endswith("__main__")
)
SOURCES = sorted((ROOT / "nbsrc").rglob("*.py"))


@pytest.mark.parametrize("name", MODULES)
def test_every_module_says_what_is_public(name):
    module = importlib.import_module(name)
    assert hasattr(module, "__all__"), f"{name} has no __all__: list what is public"
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ lists names it does not define: {missing}"


def imported_by_the_course() -> dict[tuple[str, str], str]:
    """``{(module, name): source}`` for each ``from course_lib.X import name`` in nbsrc."""
    found: dict[tuple[str, str], str] = {}
    for source in SOURCES:
        tree = ast.parse(source.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("course_lib"):
                for alias in node.names:
                    found.setdefault((node.module, alias.name), source.stem)
    return found


def test_the_course_imports_names_from_course_lib():
    assert len(imported_by_the_course()) > 40


@pytest.mark.parametrize("module, name", sorted(imported_by_the_course()), ids=lambda v: str(v))
def test_what_a_notebook_calls_names_the_notebook_that_teaches_it(module, name):
    parent = importlib.import_module(module)
    # As ``from module import name`` does: a submodule not imported yet is imported.
    if not hasattr(parent, name):
        importlib.import_module(f"{module}.{name}")
    obj = getattr(parent, name)
    if isinstance(obj, type(course_lib)) or not (inspect.isfunction(obj) or inspect.isclass(obj)):
        return  # a module or a constant: nothing to document
    doc = inspect.getdoc(obj) or ""
    assert re.search(r"\b(notebooks|exercises)/\w+\.ipynb", doc), (
        f"{module}.{name} is used by nbsrc/{imported_by_the_course()[(module, name)]}.py; its "
        "docstring should say 'Taught in notebooks/<notebook>.ipynb, step N.'"
    )


@pytest.mark.parametrize(
    "package",
    [
        "course_lib",
        "course_lib.manager",
        "teacher.grading",
        "course_lib.export",
        "course_lib.distributed",
    ],
)
def test_a_package_gives_the_reading_order_of_all_its_modules(package):
    module = importlib.import_module(package)
    folder = Path(module.__file__).parent
    parts = {p.stem for p in folder.glob("*.py")} - {"__init__", "__main__"}
    parts |= {p.parent.name for p in folder.glob("*/__init__.py")}  # subpackages
    named = set(re.findall(r"``(\w+)``", module.__doc__ or ""))
    assert parts <= named, f"{package}'s docstring does not place {sorted(parts - named)}"


SUBPACKAGES = sorted(m.name for m in pkgutil.iter_modules(course_lib.__path__) if m.ispkg)

#: Modules whose tests are not in a file named after them: where they are (under tests/), and why.
#: Keep it short: a module that gets a test file of its own must leave this map (checked below).
TESTED_ELSEWHERE = {
    # The manager's internals, tested through CheckpointManager by the faults that exercise them.
    "manager.background": ("manager/test_api.py", "manager/test_faults.py"),  # async saves
    "manager.commit": ("manager/test_faults.py",),  # a save killed or out of disk at each step
    "manager.errors": ("manager/test_faults.py",),  # raised by the faults that cause them
    "manager.loading": ("manager/test_faults.py",),  # damaged files: a warning and a fallback
    "manager.lock": ("manager/test_readers.py",),  # a stopped lock holder: an error, not a hang
    # Raised, and checked, by the modules that raise them (shapes in test_program.py, a full disk
    # in test_writing.py, input counts and traces in test_export_robustness.py); the error
    # family's rules in test_errors.py.
    "export.errors": (
        "export/test_program.py",
        "export/test_writing.py",
        "export/test_export_robustness.py",
        "test_errors.py",
    ),
    # No process of a run is left, whether it failed, timed out or its parent was killed.
    "distributed._reaper": ("distributed/test_launcher_orphans.py",),
    # Its torchrun run loads the checkpoint of test_elastic_job.py's uninterrupted run (a module
    # fixture: a torchrun run of its own), so it runs there.
    "distributed.reshard_job": ("distributed/test_elastic_job.py",),
}


def _modules_with_public_names(package: str) -> list[str]:
    module = importlib.import_module(f"course_lib.{package}")
    names = [m.name for m in pkgutil.iter_modules(module.__path__) if not m.ispkg]
    public = [
        n
        for n in names
        if getattr(importlib.import_module(f"{module.__name__}.{n}"), "__all__", [])
    ]
    return sorted(public)


def test_every_subpackage_is_found():
    assert {"manager", "export", "distributed"} <= set(SUBPACKAGES)


@pytest.mark.parametrize("package", SUBPACKAGES)
def test_the_tests_of_a_subpackage_mirror_its_modules(package):
    """course_lib/<package>/ has tests/<package>/, and each of its modules with public names has
    tests/<package>/test_<module>.py, or is in TESTED_ELSEWHERE (whose files must exist)."""
    folder = ROOT / "tests" / package
    assert folder.is_dir(), f"course_lib/{package}/ has no tests/{package}/ mirroring it"
    tests = {p.name for p in folder.glob("test_*.py")}
    untested = []
    for name in _modules_with_public_names(package):
        key, own = f"{package}.{name}", f"test_{name}.py"
        if key in TESTED_ELSEWHERE:
            assert own not in tests, (
                f"{key} has tests/{package}/{own}: remove it from TESTED_ELSEWHERE"
            )
            gone = [f for f in TESTED_ELSEWHERE[key] if not (ROOT / "tests" / f).is_file()]
            assert not gone, f"TESTED_ELSEWHERE[{key!r}] names files that do not exist: {gone}"
        elif own not in tests:
            untested.append(f"course_lib/{package}/{name}.py (tests/{package}/{own})")
    assert not untested, f"modules without a test file named after them: {untested}"


def test_every_exception_is_a_module_of_a_subpackage():
    known = {f"{p}.{m}" for p in SUBPACKAGES for m in _modules_with_public_names(p)}
    stale = sorted(set(TESTED_ELSEWHERE) - known)
    assert not stale, (
        f"TESTED_ELSEWHERE lists modules that do not exist (or have no public names): {stale}"
    )
