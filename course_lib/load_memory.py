"""Peak memory of loading a checkpoint, each way measured in a fresh Python process.

What is measured: the process's peak resident set size (Linux ``VmHWM``) during the load, minus
its resident size just before it, after ``torch`` and the model's code were imported (the
baseline). The load ends with every weight read once, as a forward pass would, so a lazy
memory-mapped load is not flattered by pages it never touched. Resident memory counts the
process's own allocations *and* the pages of a memory-mapped file it has touched; the latter are
the kernel's page cache, shared and reclaimable, so ``file_backed`` reports how much of the end
state is such pages. Taught in ``notebooks/01b_big_models.ipynb``; the full comparison is
``benchmarks/bench_memory.py``.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "LOAD_METHODS",
    "LoadMemory",
    "measure_load",
    "measure_loads",
    "memory_rows",
    "memory_verdict",
]

# The ways of loading compared, in the order they are taught.
LOAD_METHODS = (
    "naive",
    "mmap",
    "meta + assign",
    "mmap + meta + assign",
    "safetensors + meta + assign",
)
# A load within this factor of the checkpoint holds one copy of the weights.
ONE_COPY = 1.2


@dataclass(frozen=True)
class LoadMemory:
    """One load measured in a fresh process (bytes and seconds).

    Returned by ``measure_load`` and ``measure_loads``; not taught in a notebook.
    """

    method: str
    checkpoint_bytes: int
    peak_above_baseline: int
    file_backed: int
    anonymous: int
    seconds: float
    exact_peak: bool  # False where the peak could not be reset after imports (not Linux)

    @property
    def ratio(self) -> float:
        """Peak resident memory above the baseline, in checkpoint sizes."""
        return self.peak_above_baseline / self.checkpoint_bytes


def measure_load(
    method: str,
    path: str | os.PathLike[str],
    factory: str = "course_lib.big_models:wide_mlp",
    factory_kwargs: dict | None = None,
    timeout: float = 300,
) -> LoadMemory:
    """Load ``path`` into ``factory(**factory_kwargs)`` by ``method`` in a fresh process.

    ``factory`` is ``"module:function"`` (importable by the child). ``method`` is one of
    ``LOAD_METHODS``; a ``safetensors`` method needs a ``.safetensors`` path, the others a
    ``torch.save`` file of the model's ``state_dict``. Used by ``measure_loads``;
    not taught in a notebook.
    """
    if method not in LOAD_METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(LOAD_METHODS)}")
    spec = {"method": method, "path": str(Path(path).resolve()), "factory": factory}
    spec["kwargs"] = factory_kwargs or {}
    done = subprocess.run(
        [sys.executable, "-m", "course_lib.load_memory", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"the {method!r} load failed in its process: {last}")
    return LoadMemory(**json.loads(done.stdout.strip().splitlines()[-1]))


def measure_loads(
    torch_file: str | os.PathLike[str],
    safetensors_file: str | os.PathLike[str],
    methods: tuple[str, ...] = LOAD_METHODS,
    factory: str = "course_lib.big_models:wide_mlp",
    factory_kwargs: dict | None = None,
    workers: int | None = None,
) -> list[LoadMemory]:
    """``measure_load`` for each method (its file chosen by format), ``workers`` processes at once.

    Each process measures only itself, so running them side by side changes no figure; it
    only saves time (mostly Python and ``torch`` starting). ``workers`` defaults to the CPU count.
    Taught in ``notebooks/01b_big_models.ipynb``, "Measuring it".
    """
    from concurrent.futures import ThreadPoolExecutor

    def one(method: str) -> LoadMemory:
        path = safetensors_file if "safetensors" in method else torch_file
        return measure_load(method, path, factory, factory_kwargs)

    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        return list(pool.map(one, methods))


def memory_rows(results: list[LoadMemory]) -> list[dict[str, str]]:
    """Rows for ``display.show_table``: MB and ratios to the checkpoint size.

    Taught in ``notebooks/01b_big_models.ipynb``, "Measuring it".
    """
    mb = 1e6
    return [
        {
            "load": r.method,
            "checkpoint MB": f"{r.checkpoint_bytes / mb:.0f}",
            "peak above baseline MB": f"{r.peak_above_baseline / mb:.0f}",
            "x checkpoint": f"{r.ratio:.2f}",
            "of which file pages MB": f"{r.file_backed / mb:.0f}",
        }
        for r in results
    ]


def memory_verdict(results: list[LoadMemory]) -> list[str]:
    """One stable line per load: one copy (<= 1.2x the checkpoint) or more, rounded to copies.

    Stable from run to run, so a notebook can compare it. Taught in
    ``notebooks/01b_big_models.ipynb``, "Measuring it".
    """
    lines = []
    for r in results:
        copies = max(1, round(r.ratio))
        verdict = f"one copy (<= {ONE_COPY}x)" if r.ratio <= ONE_COPY else f"about {copies} copies"
        lines.append(f"{r.method:<28} {verdict}")
    return lines


# ----------------------------------------------------------------------------------------------
# The child process
# ----------------------------------------------------------------------------------------------


def _status() -> dict[str, int]:
    """``VmHWM``, ``VmRSS``, ``RssAnon``, ``RssFile`` of this process in bytes ({} if no /proc)."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return {}
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
            fields[key] = int(value.split()[0]) * 1024
    return fields


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux >= 4.0); False if impossible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _max_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _load(method: str, path: str, factory: Callable[[], Any]) -> Any:
    """The load itself: the raw PyTorch calls for the first three, the course helper after.

    Every way checks sparse tensors' indices as they load (a sparse tensor with an index out of
    range loads silently otherwise, and ``to_dense()`` then crashes the process).
    """
    import torch

    from course_lib.big_models import build_on_meta, load_big_model

    with torch.sparse.check_sparse_tensor_invariants():
        if method == "naive":
            model = factory()
            model.load_state_dict(torch.load(path, weights_only=True))
        elif method == "mmap":
            model = factory()
            model.load_state_dict(torch.load(path, weights_only=True, mmap=True))
        elif method == "meta + assign":
            model = build_on_meta(factory)
            model.load_state_dict(torch.load(path, weights_only=True), assign=True)
        else:  # "mmap + meta + assign" and "safetensors + meta + assign"
            model = load_big_model(factory, path)
    return model


def _child(spec: dict) -> dict:
    import gc

    import safetensors.torch  # noqa: F401  (imported before the baseline, like torch)
    import torch

    import course_lib.big_models  # noqa: F401

    torch.set_num_threads(1)
    module, _, name = spec["factory"].partition(":")
    build = getattr(importlib.import_module(module), name)

    def factory():
        return build(**spec["kwargs"])

    gc.collect()
    exact = _reset_peak()
    before = _status()
    baseline = before.get("VmRSS", _max_rss_bytes())
    start = time.perf_counter()
    model = _load(spec["method"], spec["path"], factory)
    with torch.no_grad():  # read every weight once, as a forward pass would
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.sum()
    seconds = time.perf_counter() - start
    after = _status()
    peak = after.get("VmHWM", _max_rss_bytes())
    return asdict(
        LoadMemory(
            method=spec["method"],
            checkpoint_bytes=Path(spec["path"]).stat().st_size,
            peak_above_baseline=max(0, peak - baseline),
            file_backed=max(0, after.get("RssFile", 0) - before.get("RssFile", 0)),
            anonymous=max(0, after.get("RssAnon", 0) - before.get("RssAnon", 0)),
            seconds=seconds,
            exact_peak=exact and "VmHWM" in after,
        )
    )


if __name__ == "__main__":
    print(json.dumps(_child(json.loads(sys.argv[1]))))
