"""The process inside the sandbox: run a student's notebook, then answer the judge's questions.

Not imported by the grader: it is copied into each submission's job folder and run there as
``python run_notebook.py JOB_DIR ANSWERS_DIR`` (inside bubblewrap, ``/grader`` and ``/answers``).
JOB_DIR holds ``cells.json``, ``questions.json`` and the exercise's ``answer.py``.

Everything this process writes is untrusted: the student's code runs in it and can change any of
it. So it reports only *answers* (return values saved as JSON, safetensors or ONNX files) that the
judge, outside, loads safely and compares with the solution's answers to the same questions; the
cell errors and progress it reports are used for feedback, never for points.

The cells run in IPython's shell, as in JupyterLab: magics, ``display()``, ``get_ipython()`` and
the value of a cell's last expression behave as a learner expects.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any


class StepTimeout(BaseException):
    """Raised in a cell or question that runs past its time (BaseException: harder to swallow)."""


def _on_alarm(signum: int, frame: object) -> None:
    raise StepTimeout


def _describe(exc: BaseException, lines: int = 4) -> str:
    if isinstance(exc, NotImplementedError):
        return "NotImplementedError: not implemented yet"
    text = "\n".join(str(exc).strip().splitlines()[:lines])
    return f"{type(exc).__name__}: {text}"[:1000]


class Asker:
    """What an exercise's ``answer.py`` uses to ask the student's code and keep its answers."""

    def __init__(self, namespace: dict[str, Any], answers_dir: Path, step_seconds: int) -> None:
        self.namespace = namespace
        self.answers_dir = answers_dir
        self.step_seconds = step_seconds

    def folder(self, qid: str) -> Path:
        """A folder of the answers for question ``qid`` (the judge reads what is left in it)."""
        path = self.answers_dir / qid
        path.mkdir(parents=True, exist_ok=True)
        return path

    def function(self, name: str) -> Callable[..., Any] | None:
        found = self.namespace.get(name)
        return found if callable(found) else None

    def call(self, qid: str, name: str, *args: Any, **kwargs: Any) -> tuple[bool, Any]:
        """Call the notebook's ``name(*args)``; on failure record why as the answer to ``qid``."""
        fn = self.function(name)
        if fn is None:
            record = {
                "type": "NameError",
                "mro": ["NameError"],
                "message": f"{name} is not defined",
            }
            self.save_json(f"{qid}.raised", record)
            return False, None
        return self.run(qid, fn, *args, **kwargs)

    def run(self, qid: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[bool, Any]:
        """``fn(*args)`` with the step's time limit; on failure record why as the answer to ``qid``."""
        signal.signal(signal.SIGALRM, _on_alarm)
        signal.alarm(self.step_seconds)
        try:
            return True, fn(*args, **kwargs)
        except StepTimeout:
            message = f"{getattr(fn, '__name__', 'it')} was still running after {self.step_seconds} s (stopped)"
            self.save_json(f"{qid}.raised", {"type": "Timeout", "mro": [], "message": message})
        except BaseException as exc:  # noqa: BLE001 - the student's code may raise anything
            record = {
                "type": type(exc).__name__,
                "mro": [c.__name__ for c in type(exc).__mro__],
                "message": _describe(exc, lines=30),
            }
            self.save_json(f"{qid}.raised", record)
        finally:
            signal.alarm(0)
        return False, None

    def save_json(self, qid: str, value: Any) -> None:
        (self.answers_dir / f"{qid}.json").write_text(json.dumps(value, default=repr))

    def save_tensors(self, qid: str, tensors: dict[str, Any]) -> None:
        from safetensors.torch import save_file

        save_file(
            {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()},
            str(self.answers_dir / f"{qid}.safetensors"),
        )


def run_cells(cells: list[str], step_seconds: int, progress: Any) -> tuple[dict, list[str]]:
    """Run the cells one by one in IPython's shell, recording errors as "Run All" would show them."""
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance(colors="NoColor")
    shell.showtraceback_limit = 3
    errors: list[str] = []
    signal.signal(signal.SIGALRM, _on_alarm)
    for count, source in enumerate(cells, start=1):
        progress.write(f"cell In [{count}]\n")
        print(f"----- In [{count}] -----", flush=True)
        signal.alarm(step_seconds)
        try:
            result = shell.run_cell(source, store_history=True)
        except StepTimeout:  # landed outside the cell's own code
            result = None
        finally:
            signal.alarm(0)
        failure = None if result is None else (result.error_before_exec or result.error_in_exec)
        if result is None or isinstance(failure, StepTimeout):
            errors.append(f"In [{count}]: still running after {step_seconds} s (stopped)")
        elif failure is not None:
            errors.append(f"In [{count}]: {_describe(failure)}")
    sys.stdout.flush()
    return shell.user_ns, errors


def main(argv: list[str]) -> int:
    job_dir, answers_dir = Path(argv[0]), Path(argv[1])
    step_seconds = int(argv[2]) if len(argv) > 2 else 60
    cells = json.loads((job_dir / "cells.json").read_text())
    questions = json.loads((job_dir / "questions.json").read_text())
    progress = (answers_dir / "progress.txt").open("a", buffering=1)
    namespace, errors = run_cells(cells, step_seconds, progress)
    (answers_dir / "cell_errors.json").write_text(json.dumps(errors))
    progress.write("questions\n")
    print("----- the grader's questions -----", flush=True)
    try:
        spec = importlib.util.spec_from_file_location("_answer", job_dir / "answer.py")
        assert spec is not None and spec.loader is not None
        answer = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(answer)
        answer.answer(questions, Asker(namespace, answers_dir, step_seconds))
    except BaseException:  # noqa: BLE001 - e.g. the notebook broke something the questions need
        traceback.print_exc(limit=-3)
        progress.write("questions failed\n")
        return 3
    progress.write("done\n")
    return 0


if __name__ == "__main__":
    # os._exit: skip interpreter teardown, which a student's atexit hooks or threads could hang.
    sys.stdout.flush()
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
