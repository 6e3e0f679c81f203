"""How long the course takes a learner: per notebook, and along the core path.

The estimate, in minutes, per notebook:

    words of prose / 200        reading English prose (markdown cells), about 200 words a minute
  + code lines x 0.25           reading a non-blank code line and its output (run cells)
  + cells x 0.3                 running a cell and looking at what it printed

Prose is the markdown cells' words outside code blocks; code lines are the non-blank lines of
code cells and of the collapsed inline solutions (``<details>``: the learner writes that code).
Exercises are measured on their solution notebook: the code a learner ends up with.

The **core path** is what a learner must do: every chapter section, and the exercises that grade
the central skills. Everything else (``01a`` and the ``b`` notebooks, the other exercises) is
marked deeper and linked from where it matters.

Usage: python tools/course_length.py        (prints the table; exits 1 when the core path is
                                              longer than CORE_LIMIT_MINUTES)
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORE_LIMIT_MINUTES = 180

# The core path, in the order a learner takes it.
CORE_NOTEBOOKS = [
    "00_introduction",
    "01_state_dict",
    "02_whole_model",
    "03_checkpoints",
    "04_mismatched_state_dict",
    "05_data_parallel",
    "06_torchscript",
    "07_onnx",
    "08_checkpoint_manager",
    "09_safe_saving",
    "10_summary",
]
CORE_EXERCISES = ["ex3_partial_loading", "ex7_exact_resume", "ex6_atomic_save"]

WORDS_PER_MINUTE = 200
MINUTES_PER_CODE_LINE = 0.25
MINUTES_PER_CELL = 0.3


@dataclass(frozen=True)
class Length:
    """One notebook's size and the minutes it takes a learner."""

    name: str
    words: int
    code_lines: int
    cells: int

    @property
    def minutes(self) -> float:
        return (
            self.words / WORDS_PER_MINUTE
            + self.code_lines * MINUTES_PER_CODE_LINE
            + self.cells * MINUTES_PER_CELL
        )


def _prose_words(markdown: str) -> int:
    text = re.sub(r"<details>.*?</details>", "", markdown, flags=re.S)  # solutions are code
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = re.sub(r"<[^>]+>", " ", text)
    return len(re.findall(r"[A-Za-z0-9_'’.-]+", text))


def _code_lines(code: str) -> int:
    return sum(1 for line in code.splitlines() if line.strip())


def measure_notebook(path: Path) -> Length:
    """The size of one notebook, read from its ``.ipynb``."""
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    words = code = 0
    for cell in cells:
        source = "".join(cell["source"])
        if cell["cell_type"] == "markdown":
            words += _prose_words(source)
            # A collapsed solution in markdown is code the learner reads when stuck.
            for block in re.findall(r"```python\n(.*?)```", source, flags=re.S):
                code += _code_lines(block)
        elif cell["cell_type"] == "code":
            code += _code_lines(source)
    return Length(path.stem, words, code, len(cells))


def measure_course(root: Path = ROOT) -> tuple[list[Length], list[Length]]:
    """Every notebook and exercise, and the core path's part of them."""
    everything = [measure_notebook(p) for p in sorted((root / "notebooks").glob("*.ipynb"))]
    everything += [measure_notebook(p) for p in sorted((root / "solutions").glob("*.ipynb"))]
    by_name = {length.name: length for length in everything}
    core = [by_name[name] for name in CORE_NOTEBOOKS + CORE_EXERCISES if name in by_name]
    return everything, core


def main() -> int:
    everything, core = measure_course()
    core_names = {length.name for length in core}
    print(f"{'notebook':28s} {'words':>6s} {'code':>5s} {'cells':>5s} {'min':>6s}  path")
    for length in everything:
        path = "core" if length.name in core_names else "deeper"
        print(
            f"{length.name:28s} {length.words:6d} {length.code_lines:5d} {length.cells:5d} "
            f"{length.minutes:6.1f}  {path}"
        )
    total = sum(length.minutes for length in everything)
    core_total = sum(length.minutes for length in core)
    missing = [n for n in CORE_NOTEBOOKS + CORE_EXERCISES if n not in core_names]
    print(f"\nwhole course: {total:.0f} min; core path: {core_total:.0f} min "
          f"(limit {CORE_LIMIT_MINUTES})")  # fmt: skip
    if missing:
        print(f"core path incomplete, missing: {', '.join(missing)}")
    return 0 if core_total <= CORE_LIMIT_MINUTES and not missing else 1


if __name__ == "__main__":
    sys.exit(main())
