"""Build the course's notebooks from their sources in ``nbsrc/`` and execute them.

A source is a Python file in the "percent" format (as jupytext writes it):

    # %% [markdown]
    # # A heading
    # Some text.

    # %% tags=["raises-exception"]
    code()

``nbsrc/notebooks/X.py`` becomes ``notebooks/X.ipynb``. ``nbsrc/exercises/X.py`` becomes both
``solutions/X.ipynb`` (as written) and ``exercises/X.ipynb``, where every block between
``# BEGIN SOLUTION`` and ``# END SOLUTION`` is replaced by a stub for the student.

Usage: python tools/build_notebooks.py [--no-execute] [SOURCE ...]   (default: all sources)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
SOURCE_ROOT = ROOT / "nbsrc"
CELL_MARKER = re.compile(r"^# %%(?P<markdown> \[markdown\])?(?: tags=(?P<tags>\[.*\]))?\s*$")
SOLUTION_BLOCK = re.compile(
    r"^(?P<indent>[ \t]*)# BEGIN SOLUTION\n.*?^[ \t]*# END SOLUTION\n?", re.M | re.S
)
STUB = "{indent}# YOUR CODE HERE\n{indent}raise NotImplementedError\n"


def parse_source(text: str) -> list[tuple[str, str, list[str]]]:
    """Split a percent-format source into ``(cell_type, source, tags)`` triples."""
    cells: list[tuple[str, list[str], list[str]]] = []
    for line in text.splitlines():
        marker = CELL_MARKER.match(line)
        if marker:
            kind = "markdown" if marker["markdown"] else "code"
            tags = json.loads(marker["tags"]) if marker["tags"] else []
            cells.append((kind, [], tags))
        elif cells:
            cells[-1][1].append(line)
        elif line.strip() and not line.startswith("#"):
            raise ValueError(f"code before the first '# %%' marker: {line!r}")
    result = []
    for kind, lines, tags in cells:
        if kind == "markdown":
            lines = [re.sub(r"^# ?", "", line) for line in lines]
        body = "\n".join(lines).strip("\n")
        if body:
            result.append((kind, body, tags))
    return result


DETAILS = re.compile(r"<details>.*?</details>", re.S)
PYTHON_BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def inline_solutions(cells: list[tuple[str, str, list[str]]]) -> list[str]:
    """The code of every ```python block inside ``<details>`` in the markdown cells: the
    collapsed solutions of a notebook's inline exercises (the suite runs them after the notebook's
    own cells, in its nbval kernel: see conftest.py)."""
    return [
        code
        for kind, body, _ in cells
        if kind == "markdown"
        for details in DETAILS.findall(body)
        for code in PYTHON_BLOCK.findall(details)
    ]


def make_notebook(cells: list[tuple[str, str, list[str]]]) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.metadata["language_info"] = {"name": "python"}
    for index, (kind, body, tags) in enumerate(cells):
        cell = (
            nbformat.v4.new_markdown_cell(body)
            if kind == "markdown"
            else nbformat.v4.new_code_cell(body)
        )
        cell["id"] = f"cell-{index:03d}"
        if tags:
            cell.metadata["tags"] = tags
        nb.cells.append(cell)
    return nb


def strip_solutions(body: str) -> str:
    return SOLUTION_BLOCK.sub(lambda m: STUB.format(indent=m["indent"]), body)


def targets_for(source: Path) -> list[tuple[Path, list[tuple[str, str, list[str]]], bool]]:
    """The notebooks one source makes: ``(path, cells, execute?)``."""
    cells = parse_source(source.read_text())
    kind = source.parent.name
    name = source.with_suffix(".ipynb").name
    if kind == "notebooks":
        return [(ROOT / "notebooks" / name, cells, True)]
    if kind == "exercises":
        student = [(k, strip_solutions(b) if k == "code" else b, t) for k, b, t in cells]
        return [
            (ROOT / "solutions" / name, cells, True),
            (ROOT / "exercises" / name, student, False),
        ]
    raise ValueError(f"{source}: sources live in nbsrc/notebooks or nbsrc/exercises")


def execute(nb: nbformat.NotebookNode, where: Path) -> None:
    client = NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        record_timing=False,  # timestamps would make every rebuild a diff
        resources={"metadata": {"path": str(where)}},
    )
    client.execute()


# Rules of tests/nbval_sanitize.cfg that also rewrite the committed outputs: a learner must not
# see the absolute paths of the machine that built the notebooks, and nbval, which applies the
# same rules to a fresh run, still compares equal.
MACHINE_PATH_RULES = ("export_absolute_scratch_paths", "kernel_paths", "site_packages")


def _machine_path_rules() -> list[tuple[re.Pattern[str], str]]:
    import configparser

    config = configparser.ConfigParser(interpolation=None)
    config.read(ROOT / "tests" / "nbval_sanitize.cfg")
    return [
        (re.compile(config[name]["regex"]), config[name]["replace"]) for name in MACHINE_PATH_RULES
    ]


def strip_machine_paths(nb: nbformat.NotebookNode) -> None:
    """Replace the building machine's absolute paths in every output (text, tracebacks, data)."""
    rules = _machine_path_rules()

    def clean(value):
        if isinstance(value, str):
            for pattern, replacement in rules:
                value = pattern.sub(replacement, value)
            return value
        if isinstance(value, list):
            return [clean(v) for v in value]
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        return value

    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [nbformat.from_dict(clean(dict(o))) for o in cell.outputs]


def all_sources() -> list[Path]:
    return sorted(SOURCE_ROOT.glob("notebooks/*.py")) + sorted(SOURCE_ROOT.glob("exercises/*.py"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="*", type=Path)
    parser.add_argument("--no-execute", action="store_true", help="write the notebooks unrun")
    args = parser.parse_args(argv)
    for source in [s.resolve() for s in args.sources] or all_sources():
        for target, cells, run in targets_for(source):
            nb = make_notebook(cells)
            if source.parent.name == "exercises":
                # The grader finds the hidden checks by this name, even if a student renames the file.
                nb.metadata["course"] = {"exercise": source.stem}
            started = time.perf_counter()
            if run and not args.no_execute:
                execute(nb, target.parent)
                strip_machine_paths(nb)
            target.parent.mkdir(exist_ok=True)
            nbformat.write(nb, target)
            print(f"{target.relative_to(ROOT)}  ({time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
