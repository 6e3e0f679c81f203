"""The chapter's own code, taken from the notebook sources in nbsrc (never copied into tests).

A notebook shows the chapter's original functions and classes as written, in a cell, before
replacing them with course_lib's. Tests that compare the two load those definitions from the
percent-format source: the notebook's imports run first, then each named top-level ``def`` or
``class`` is executed from the cell that holds it, in one namespace, so that the chapter's
functions find each other as they do in the notebook. Nothing else of the notebook runs.
"""

from __future__ import annotations

import ast
import types
from pathlib import Path

__all__ = ["NBSRC", "cells", "chapter_definitions"]

NBSRC = Path(__file__).resolve().parent.parent / "nbsrc"


def cells(source: Path) -> list[str]:
    """The code cells of a percent-format source (``# %%`` starts a cell; markdown ones skipped)."""
    return [text for _, text in _cells_at(source)]


def _cells_at(source: Path) -> list[tuple[int, str]]:
    """Each code cell with the file's line number of its first line."""
    found: list[tuple[int, list[str]]] = []
    current: list[str] | None = None
    for number, line in enumerate(source.read_text().splitlines(), start=1):
        if line.startswith("# %%"):
            current = None if "[markdown]" in line else []
            if current is not None:
                found.append((number + 1, current))
        elif current is not None:
            current.append(line)
    return [(start, "\n".join(lines)) for start, lines in found]


def _parsed(source: Path) -> list[ast.Module]:
    """The cells' trees, numbered as lines of the file: tracebacks and ``inspect.getsource``
    (which TorchScript reads) find the chapter's code where it is."""
    trees = []
    for start, text in _cells_at(source):
        tree = ast.parse(text)
        ast.increment_lineno(tree, start - 1)
        trees.append(tree)
    return trees


def chapter_definitions(notebook: str, *names: str) -> types.SimpleNamespace:
    """``names`` as the notebook ``nbsrc/notebooks/<notebook>.py`` defines them, executed.

    Raises ``LookupError`` naming the notebook if one of them is defined in none of its cells
    (the notebook was rewritten: the test must follow it).
    """
    source = NBSRC / "notebooks" / f"{notebook}.py"
    trees = _parsed(source)
    imports = [
        node
        for tree in trees
        for node in tree.body
        if isinstance(node, ast.Import | ast.ImportFrom)
    ]
    namespace: dict[str, object] = {"__name__": f"chapter_{notebook}"}
    exec(compile(ast.Module(body=imports, type_ignores=[]), str(source), "exec"), namespace)
    for name in names:
        definition = next(
            (
                node
                for tree in trees
                for node in tree.body
                if isinstance(node, ast.FunctionDef | ast.ClassDef) and node.name == name
            ),
            None,
        )
        if definition is None:
            raise LookupError(f"{source}: no cell defines {name!r} any more")
        module = ast.Module(body=[definition], type_ignores=[])
        exec(compile(module, str(source), "exec"), namespace)
    return types.SimpleNamespace(**{name: namespace[name] for name in names})
