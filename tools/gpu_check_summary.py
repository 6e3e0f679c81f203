"""Summary of a tools/gpu_check.sh run from what it wrote so far (also after a cut-off run).

Usage: python tools/gpu_check_summary.py OUT [NOTEBOOK-OR-FOLDER...] (what the notebook run was
given: the notebooks that never started are named too). Reads OUT/notebooks.progress.jsonl and
OUT/tests.progress.jsonl (conftest.py's COURSE_PROGRESS_LOG lines): each notebook with its time,
cells passed and failed, or "HUNG or cut off" when it started and never ended; each failed test,
and each test that started and never ended. Exit status 0 only when nothing failed, hung or took
over 60 s.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def events(out, name):
    path = out / f"{name}.progress.jsonl"
    return (
        [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []
    )


def exit_of(out, name):
    path = out / f"{name}.exit"
    return path.read_text().strip() if path.exists() else "?"


def _expected(selection: list[str]) -> set[str]:
    found = set()
    for item in selection:
        path = Path(item)
        found |= {str(p) for p in sorted(path.rglob("*.ipynb"))} if path.is_dir() else {item}
    return {p for p in found if ".ipynb_checkpoints" not in p}


def _run_problems(out: Path, name: str) -> int:
    code = exit_of(out, name)
    if code in ("124", "137"):
        print(f"  CUT OFF at its time limit (exit {code})")
        return 1
    if code not in ("0", "5"):
        print(f"  pytest exit {code}: see {name}.log")
        return 1
    return 0


def summarize(out: Path, selection: list[str] | None = None) -> int:
    """Print the summary; 0 when nothing failed, hung or was slow, and each run ended by itself."""
    print(
        f"notebooks and solutions on CUDA (--nbval-lax), pytest exit {exit_of(out, 'notebooks')}:"
    )
    started, ended = {}, {}
    for e in events(out, "notebooks"):
        if e["event"] == "notebook-start":
            started[e["id"]] = e["t"]
        elif e["event"] == "notebook-end":
            ended[e["id"]] = e
    bad = 0
    for path in sorted(started):
        if path in ended:
            e = ended[path]
            verdict = "ok" if e["cells_failed"] == 0 else f"FAILED ({e['cells_failed']} cells)"
            slow = "  SLOW (> 60 s)" if e["seconds"] > 60 else ""
            bad += e["cells_failed"] > 0 or e["seconds"] > 60
            print(
                f"  {e['seconds']:6.1f} s  {e['cells_passed']:3d} cells passed  {verdict}{slow}  {path}"
            )
        else:
            bad += 1
            print(f"  HUNG or cut off: started, never finished  {path}")
    for e in events(out, "notebooks"):
        if e["event"] == "cell-failed":
            print(f"    failed: {e['id']}")
    never = sorted(_expected(selection or []) - set(started))
    for path in never:
        print(f"  never started  {path}")
    bad += len(never) + _run_problems(out, "notebooks")
    print(f"tests with COURSE_DEVICE=cuda, pytest exit {exit_of(out, 'tests')}:")
    outcome, begun = {}, {}
    for e in events(out, "tests"):
        if e["event"] == "start":
            begun[e["id"]] = e["t"]
        else:
            outcome[e["id"]] = e["event"]
    counts = {}
    for value in outcome.values():
        counts[value] = counts.get(value, 0) + 1
    print("  " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    for test, value in sorted(outcome.items()):
        if value == "failed":
            print(f"  FAILED {test}")
    for test in sorted(set(begun) - set(outcome)):
        print(f"  HUNG or cut off: {test}")
    bad += counts.get("failed", 0) + len(set(begun) - set(outcome)) + _run_problems(out, "tests")
    print("gpu_check:", "everything passed on CUDA" if bad == 0 else f"{bad} problem(s), see above")
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    raise SystemExit(summarize(Path(sys.argv[1]), sys.argv[2:]))
