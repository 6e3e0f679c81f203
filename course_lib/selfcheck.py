"""``./course check NOTEBOOK``: run an exercise notebook top to bottom and report its self-check.

This is the learner's own check, and it works in the copy of the course handed to students: it
runs every cell in a fresh kernel (as JupyterLab's "Restart Kernel and Run All" does), lists each
cell that failed as JupyterLab numbers it, and says whether the self-check cell passed. In the
teacher's full course, ``./course check`` then grades the notebook with the hidden checks too
(``python -m teacher.grading``); in a student copy it says that those are the teacher's.
Taught in ``notebooks/00_introduction.ipynb``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["SelfCheck", "run_self_check"]

SELF_CHECK_MARK = "self-check passed"


@dataclass
class SelfCheck:
    """The outcome of running one notebook: its cell errors and whether its self-check passed."""

    notebook: Path
    passed: bool
    cell_errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        verdict = "self-check passed" if self.passed else "self-check NOT passed"
        lines = [f"{self.notebook}: {verdict}"]
        lines += [f"  cell error: {error}" for error in self.cell_errors]
        return "\n".join(lines)


def run_self_check(notebook: str | Path, *, cell_timeout: int = 300) -> SelfCheck:
    """Execute a copy of ``notebook`` in its own folder (the file itself is not changed)."""
    import nbformat
    from nbclient import NotebookClient

    path = Path(notebook)
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=cell_timeout,
        allow_errors=True,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.resolve().parent)}},
    )
    client.execute()
    errors, passed = [], False
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                message = f"{output.get('ename')}: {output.get('evalue')}".splitlines()[0]
                errors.append(f"In [{cell.get('execution_count')}]: {message}"[:300])
            elif SELF_CHECK_MARK in output.get("text", ""):
                passed = True
    return SelfCheck(path, passed and not errors, errors)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="./course check", description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path, help="exercise notebooks to check")
    args = parser.parse_args(argv)
    ok = True
    for notebook in args.notebooks:
        result = run_self_check(notebook)
        print(result.summary())
        ok &= result.passed
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
