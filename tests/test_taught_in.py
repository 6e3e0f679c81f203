""" "Taught in notebooks/X.ipynb" in docstrings, checked in both directions against nbsrc.

- every public name that a notebook (or exercise) imports from course_lib names, in its
  docstring, that notebook or another one that imports it;
- every notebook a public name's docstring names mentions that name in its source.

A name that no notebook uses names none: its docstring says what uses it instead ("Used by
``epoch_bar``; not taught in a notebook."). When a notebook is rewritten or material moves
(e.g. from a core NN_* notebook into its deeper NNb_* one), these fail and print the pairs that
disagree: move the docstring's "Taught in" along.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
from collections import defaultdict
from pathlib import Path

import course_lib

ROOT = Path(__file__).resolve().parent.parent
NBSRC = ROOT / "nbsrc"
TAUGHT_IN = re.compile(r"\b((?:notebooks|exercises)/\w+)\.ipynb")


def _source_of(notebook: str) -> Path:
    """``notebooks/NN_x`` -> ``nbsrc/notebooks/NN_x.py``."""
    return NBSRC / f"{notebook}.py"


def public_names() -> dict[str, object]:
    """``{"module.name": object}`` for every function and class in a course_lib ``__all__``."""
    found = {}
    for info in pkgutil.walk_packages(course_lib.__path__, "course_lib."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name, None)
            if inspect.isfunction(obj) or inspect.isclass(obj):
                if getattr(obj, "__module__", None) == info.name:  # where it is defined
                    found[f"{info.name}.{name}"] = obj
    return found


def imports_by_notebook() -> dict[str, set[str]]:
    """``{"module.name": {"notebooks/NN_x", ...}}`` for each ``from course_lib.X import name``."""
    found: dict[str, set[str]] = defaultdict(set)
    for source in sorted(NBSRC.rglob("*.py")):
        notebook = f"{source.parent.name}/{source.stem}"
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("course_lib"):
                for alias in node.names:
                    obj = getattr(importlib.import_module(node.module), alias.name, None)
                    home = getattr(obj, "__module__", node.module)
                    found[f"{home}.{alias.name}"].add(notebook)
    return found


def named_notebooks(obj: object) -> set[str]:
    return set(TAUGHT_IN.findall(inspect.getdoc(obj) or ""))


def test_the_checks_see_the_course():
    assert len(public_names()) > 100
    assert len(imports_by_notebook()) > 40


def test_an_imported_name_names_a_notebook_that_imports_it():
    names = public_names()
    wrong = []
    for qualified, notebooks in sorted(imports_by_notebook().items()):
        obj = names.get(qualified)
        if obj is None:
            continue  # a constant, a module, or re-exported from elsewhere
        if not named_notebooks(obj) & notebooks:
            named = sorted(named_notebooks(obj)) or ["no notebook"]
            wrong.append(f"{qualified}: imported by {sorted(notebooks)}, names {named}")
    assert not wrong, f"{len(wrong)} names:\n" + "\n".join(wrong)


def test_a_named_notebook_mentions_the_name():
    wrong = []
    for qualified, obj in sorted(public_names().items()):
        name = qualified.rsplit(".", 1)[1]
        for notebook in sorted(named_notebooks(obj)):
            source = _source_of(notebook)
            if not source.exists() or not re.search(rf"\b{name}\b", source.read_text()):
                wrong.append(f"{qualified}: names {notebook}, whose source never mentions it")
    assert not wrong, f"{len(wrong)} names:\n" + "\n".join(wrong)
