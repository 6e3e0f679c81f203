"""course_lib's layout: what each module makes public, and library and course pointing at each other.

- every module says what is public (``__all__``), and every name it lists exists;
- every name a notebook or exercise imports from course_lib has a docstring that names the
  notebook (or exercise) that teaches it, as d2l's "Defined in" does;
- a package's ``__init__`` gives the reading order of all of its modules, and its tests mirror it.
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
    obj = getattr(importlib.import_module(module), name)
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


def test_the_manager_tests_mirror_the_package():
    tests = {p.stem for p in (ROOT / "tests" / "manager").glob("test_*.py")}
    assert {"test_api", "test_retention", "test_manifest", "test_reconcile", "test_faults"} <= tests
