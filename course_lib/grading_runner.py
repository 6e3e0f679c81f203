"""The process that runs one student notebook for ``course_lib.grading`` (not for direct use).

Usage: python -m course_lib.grading_runner CELLS_JSON CHECKS_PY RESULT_JSON PROGRESS_FILE [STEP_SECONDS]

Runs each code cell in a fresh ``__main__`` module, recording errors cell by cell (as JupyterLab's
"Run All" with errors allowed would), then runs the hidden checks against the resulting namespace
and writes a JSON result. Cell output goes to this process's stdout, which the grader captures.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import sys
import traceback
import types
from pathlib import Path


def _strip_magics(source: str) -> str:
    """IPython lines (``%time``, ``!pip``) are not Python: comment them out."""
    return "\n".join(
        f"# (not run by the grader) {line}" if line.lstrip().startswith(("%", "!")) else line
        for line in source.splitlines()
    )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, NotImplementedError):
        return "NotImplementedError: not implemented yet"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


class StepTimeout(BaseException):
    """Raised inside a cell or check that runs past its time (BaseException: harder to swallow)."""


def _on_alarm(signum: int, frame: object) -> None:
    raise StepTimeout


def _run_step(seconds: int, step: object, *args: object) -> None:
    """Run ``step(*args)`` with a time limit, so one endless cell does not cost the whole grade."""
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(seconds)
    try:
        step(*args)  # type: ignore[operator]
    finally:
        signal.alarm(0)


def main(argv: list[str]) -> int:
    cells_path, checks_path, result_path, progress_path = map(Path, argv[:4])
    step_seconds = int(argv[4]) if len(argv) > 4 else 60
    cells: list[str] = json.loads(cells_path.read_text())
    module = types.ModuleType("__main__")
    module.__dict__["__builtins__"] = __builtins__
    sys.modules["__main__"] = module
    namespace = module.__dict__
    cell_errors: list[str] = []
    progress = progress_path.open("a", buffering=1)
    for index, source in enumerate(cells, start=1):
        progress.write(f"cell {index}\n")
        print(f"----- cell {index} -----", flush=True)
        try:
            code = compile(_strip_magics(source), f"<cell {index}>", "exec")
            _run_step(step_seconds, exec, code, namespace)
        except StepTimeout:
            cell_errors.append(f"cell {index}: still running after {step_seconds} s (stopped)")
        except BaseException as exc:  # noqa: BLE001 - a student's cell may raise anything
            cell_errors.append(f"cell {index}: {_describe(exc)}")
            traceback.print_exc(limit=-3)
    progress.write("checks\n")
    results = []
    try:
        spec = importlib.util.spec_from_file_location("_exercise_checks", checks_path)
        assert spec is not None and spec.loader is not None
        checks = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(checks)
        planned = list(checks.CHECKS)
    except BaseException as exc:  # noqa: BLE001 - e.g. the notebook broke an import the checks need
        traceback.print_exc(limit=-3)
        cell_errors.append(f"the checks could not start after the notebook ran: {_describe(exc)}")
        planned = []
    for check, points in planned:
        progress.write(f"check {check.__name__}\n")
        try:
            _run_step(step_seconds, check, namespace, Path.cwd())
            results.append(
                {"name": check.__name__, "points": points, "max_points": points, "message": "ok"}
            )
        except StepTimeout:
            results.append(
                {
                    "name": check.__name__,
                    "points": 0,
                    "max_points": points,
                    "message": f"still running after {step_seconds} s (stopped)",
                }
            )
            continue
        except BaseException as exc:  # noqa: BLE001
            message = (
                str(exc).strip()
                if isinstance(exc, AssertionError) and str(exc).strip()
                else _describe(exc)
            )
            results.append(
                {"name": check.__name__, "points": 0, "max_points": points, "message": message}
            )
    temp = result_path.with_suffix(".tmp")
    temp.write_text(json.dumps({"checks": results, "cell_errors": cell_errors}))
    os.replace(temp, result_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
