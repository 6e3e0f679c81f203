"""Grading exercise notebooks: one submission for self-study feedback, or a whole class to a CSV.

Each submission runs in its own Python process, in an empty temporary folder, with limits on time
(per cell and in total), memory and file size, and with the GPU hidden. Cells run one by one with
errors recorded (like "Run All" that keeps going), then the exercise's hidden checks score the
functions the notebook defined. A broken or hostile notebook (unreadable JSON, an endless loop, a
memory bomb, a process exit, a flood of output) gets a precise message and a score; it never stops
the grading of the others, and the class's grade file is replaced only by a complete new one.

These limits protect a grading run from accidents, not from a determined attacker: student code
runs with the grader's user rights. Grade untrusted submissions inside a container or VM.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from course_lib.safe_io import atomic_write

REPO_ROOT = Path(__file__).resolve().parent.parent
CHECKS_DIR = REPO_ROOT / "tests" / "exercise_checks"
OUTPUT_LIMIT_BYTES = 20_000_000


@dataclass
class CheckResult:
    name: str
    points: float
    max_points: float
    message: str

    @property
    def passed(self) -> bool:
        return self.points == self.max_points


@dataclass
class GradeReport:
    """The grade of one notebook: per-check results, cell errors, or a notebook-level problem."""

    notebook: Path
    exercise: str | None
    max_score: float
    checks: list[CheckResult] = field(default_factory=list)
    cell_errors: list[str] = field(default_factory=list)
    problem: str | None = None
    seconds: float = 0.0
    output_tail: str = ""

    @property
    def score(self) -> float:
        return sum(c.points for c in self.checks)

    def summary(self) -> str:
        lines = [f"{self.notebook}: {self.score:g}/{self.max_score:g} points ({self.exercise})"]
        if self.problem:
            lines.append(f"  PROBLEM: {self.problem}")
        lines += [f"  cell error: {e}" for e in self.cell_errors]
        for check in self.checks:
            mark = "PASS" if check.passed else "FAIL"
            detail = "" if check.passed else f": {check.message}"
            lines.append(f"  {mark} {check.name} ({check.points:g}/{check.max_points:g}){detail}")
        return "\n".join(lines)


def _exercise_name(notebook: dict, path: Path) -> str | None:
    """The exercise a submission answers: its metadata (survives renaming), else its file name."""
    named = notebook.get("metadata", {}).get("course", {}).get("exercise")
    if isinstance(named, str) and (CHECKS_DIR / f"{named}.py").exists():
        return named
    for checks in sorted(CHECKS_DIR.glob("ex*.py")):
        if checks.stem in path.stem:
            return checks.stem
    return None


def _max_points(checks_file: Path) -> float:
    """Read ``MAX_POINTS`` without importing the checks (importing would pull in torch)."""
    for line in checks_file.read_text().splitlines():
        if line.startswith("MAX_POINTS"):
            return float(line.split("=", 1)[1])
    raise ValueError(f"{checks_file}: no MAX_POINTS line")


def _limits(memory_mb: int, file_mb: int) -> None:
    """Runs in the child before Python starts: memory, file size and core dump limits."""
    os.setsid()
    resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_mb << 20, file_mb << 20))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _read_notebook(path: Path) -> tuple[dict | None, str | None]:
    try:
        notebook = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return (
            None,
            f"not a readable notebook ({type(exc).__name__}: {exc}); re-download or re-save it in JupyterLab",
        )
    if not isinstance(notebook, dict) or not isinstance(notebook.get("cells"), list):
        return None, "not a Jupyter notebook (no list of cells); re-save it in JupyterLab"
    return notebook, None


def _code_cells(notebook: dict) -> list[str]:
    cells = []
    for cell in notebook["cells"]:
        if isinstance(cell, dict) and cell.get("cell_type") == "code":
            source = cell.get("source", "")
            cells.append("".join(source) if isinstance(source, list) else str(source))
    return cells


def grade_notebook(
    notebook: str | os.PathLike[str],
    *,
    timeout: float = 300,
    cell_timeout: int = 60,
    memory_mb: int = 6144,
    file_mb: int = 200,
) -> GradeReport:
    """Grade one exercise notebook against its hidden checks (``tests/exercise_checks/<name>.py``)."""
    path = Path(notebook)
    started = time.perf_counter()
    content, problem = _read_notebook(path)
    exercise = None if content is None else _exercise_name(content, path)
    if content is not None and exercise is None:
        problem = (
            "cannot tell which exercise this is (no course metadata, and the file name names no "
            f"exercise in {CHECKS_DIR.relative_to(REPO_ROOT)}); keep the exercise's file name"
        )
    if problem is not None or exercise is None:
        return GradeReport(path, exercise, 0.0, problem=problem)
    checks_file = CHECKS_DIR / f"{exercise}.py"
    report = GradeReport(path, exercise, _max_points(checks_file))

    with tempfile.TemporaryDirectory(prefix="grade-") as scratch:
        scratch_dir = Path(scratch)
        workdir = scratch_dir / "work"
        workdir.mkdir()
        cells_file, result_file = scratch_dir / "cells.json", scratch_dir / "result.json"
        progress_file, output_file = scratch_dir / "progress.txt", scratch_dir / "output.txt"
        cells_file.write_text(json.dumps(_code_cells(content)))
        progress_file.touch()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(workdir),
            "PYTHONPATH": str(REPO_ROOT),
            "CUDA_VISIBLE_DEVICES": "",
            "COURSE_DEVICE": "cpu",
            "MPLBACKEND": "Agg",
            "OMP_NUM_THREADS": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        command = [
            sys.executable, "-m", "course_lib.grading_runner",
            str(cells_file), str(checks_file), str(result_file), str(progress_file), str(cell_timeout),
        ]  # fmt: skip
        with output_file.open("wb") as output:
            process = subprocess.Popen(
                command,
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                preexec_fn=lambda: _limits(memory_mb, file_mb),  # noqa: PLW1509
            )
            try:
                returncode = process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                returncode = None
            finally:
                # Also ends whatever the notebook started in the background.
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                process.wait()
        report.seconds = time.perf_counter() - started
        report.output_tail = output_file.read_bytes()[-3000:].decode("utf-8", "replace")
        where = (progress_file.read_text().strip().splitlines() or ["start-up"])[-1]
        if result_file.exists():
            result = json.loads(result_file.read_text())
            report.checks = [CheckResult(**c) for c in result["checks"]]
            report.cell_errors = result["cell_errors"]
        elif returncode is None:
            report.problem = (
                f"stopped after {timeout:g} s in {where} (an endless loop that ignores interrupts?)"
            )
        elif returncode < 0:
            name = signal.Signals(-returncode).name
            why = {
                "SIGXFSZ": f": a file grew past {file_mb} MB",
                "SIGKILL": ": killed (memory?)",
            }.get(name, "")
            report.problem = f"the notebook's process died with {name} in {where}{why}"
        else:
            last_line = (report.output_tail.strip().splitlines() or [""])[-1][:200]
            report.problem = (
                f"the notebook's process exited with code {returncode} in {where}, before the "
                f"checks finished ({last_line or 'no message'}): a notebook must not call os._exit()"
            )
    return report


CSV_COLUMNS = [
    "submission",
    "exercise",
    "score",
    "max_score",
    "problem",
    "failed_checks",
    "cell_errors",
    "seconds",
]


def _csv_row(root: Path, report: GradeReport) -> dict[str, object]:
    try:
        name = str(report.notebook.relative_to(root))
    except ValueError:
        name = str(report.notebook)
    return {
        "submission": name,
        "exercise": report.exercise or "",
        "score": f"{report.score:g}",
        "max_score": f"{report.max_score:g}",
        "problem": report.problem or "",
        "failed_checks": "; ".join(f"{c.name}: {c.message}" for c in report.checks if not c.passed),
        "cell_errors": "; ".join(report.cell_errors),
        "seconds": f"{report.seconds:.1f}",
    }


def grade_class(
    submissions: str | os.PathLike[str],
    out_csv: str | os.PathLike[str],
    *,
    jobs: int = 2,
    progress: bool = True,
    **limits: float,
) -> list[GradeReport]:
    """Grade every ``*.ipynb`` under ``submissions`` (e.g. one folder per student) into ``out_csv``.

    The CSV is written atomically, and an existing one is kept as ``<name>.backup``, so a grading
    run that is interrupted or crashes never destroys the previous grades.
    """
    root = Path(submissions)
    notebooks = sorted(p for p in root.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
    if not notebooks:
        raise FileNotFoundError(f"{root}: no .ipynb files found to grade")
    from tqdm.auto import tqdm

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = pool.map(lambda nb: grade_notebook(nb, **limits), notebooks)
        reports = list(tqdm(futures, total=len(notebooks), desc="grading", disable=not progress))

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    writer.writerows(_csv_row(root, r) for r in reports)
    out = Path(out_csv)
    if out.exists():
        atomic_write(out.with_name(out.name + ".backup"), lambda temp: shutil.copyfile(out, temp))
    atomic_write(out, lambda temp: temp.write_text(buffer.getvalue()))
    return reports


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m course_lib.grading NOTEBOOK...`` or ``... --class FOLDER --out grades.csv``."""
    parser = argparse.ArgumentParser(
        prog="python -m course_lib.grading", description=__doc__.splitlines()[0]
    )
    parser.add_argument("notebooks", nargs="*", type=Path, help="exercise notebooks to check")
    parser.add_argument(
        "--class", dest="folder", type=Path, help="grade every notebook under FOLDER"
    )
    parser.add_argument("--out", type=Path, default=Path("grades.csv"), help="CSV for --class")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=300, help="seconds per notebook")
    args = parser.parse_args(argv)
    if args.folder:
        reports = grade_class(args.folder, args.out, jobs=args.jobs, timeout=args.timeout)
        print(f"graded {len(reports)} notebooks -> {args.out}")
        problems = [r for r in reports if r.problem]
        for report in problems:
            print(f"  {report.notebook}: {report.problem}")
        return 0
    if not args.notebooks:
        parser.error("name notebooks to check, or --class FOLDER")
    reports = [grade_notebook(nb, timeout=args.timeout) for nb in args.notebooks]
    for report in reports:
        print(report.summary())
    return 0 if all(r.score == r.max_score for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
