"""``./course release OUT``: the copy of the course a teacher hands to students.

It holds what a learner needs (the notebooks, the exercises, ``course_lib``, the README and the
set-up files) and nothing a learner must not see: no ``solutions/``, no ``teacher/`` (the hidden
checks and the grader), no notebook sources (the exercises' sources contain
their solutions), no tests. Only files git tracks or would add are copied (never ignored ones: no venv, no scratch).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from teacher.grading.paths import REPO_ROOT

__all__ = ["build_release", "is_released"]

RELEASED = ("README.md", "course", "pyproject.toml", "environment.yml", "conftest.py",
            ".gitignore", "notebooks/", "exercises/", "course_lib/", "tests/nbval_sanitize.cfg")  # fmt: skip


def is_released(name: str) -> bool:
    """Whether a repository path (POSIX, relative) goes into the student release."""
    return any(name == item or (item.endswith("/") and name.startswith(item)) for item in RELEASED)


def build_release(out: str | Path, root: Path = REPO_ROOT) -> list[str]:
    """Copy the released files of ``root`` into the new folder ``out``; return their names."""
    target = Path(out)
    if target.exists():
        raise FileExistsError(f"{target} exists: name a new folder for the release")
    tracked = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=root,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    copied = sorted(name for name in tracked if name and is_released(name))
    for name in copied:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, target / name)
    return copied


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="./course release", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="a new folder for the student copy")
    args = parser.parse_args(argv)
    copied = build_release(args.out)
    print(f"released {len(copied)} files to {args.out} (no solutions, hidden checks or grader)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
