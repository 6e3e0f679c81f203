"""Peak memory of loading a checkpoint, five ways, each in a fresh process, as ratios to its size.

A model of about ``--size-mb`` MB (default 400; ``Linear(2048, 2048)`` layers) is saved with
``torch.save`` and with ``safetensors``. Each way of loading it runs ``--repeats`` times in a fresh
Python process (``course_lib.load_memory``), one process at a time:

- ``naive``: build the model, ``torch.load``, ``load_state_dict`` (the chapter's recipe);
- ``mmap``: the same with ``torch.load(mmap=True)``;
- ``meta + assign``: build on ``meta``, ``torch.load``, ``load_state_dict(assign=True)``;
- ``mmap + meta + assign`` and ``safetensors + meta + assign``: ``course_lib.big_models.load_big_model``.

What is measured: peak resident memory during the load (Linux ``VmHWM``, reset after the imports)
minus the process's resident memory after ``import torch`` and the model's code, divided by the
checkpoint's size; the load ends by reading every weight once. Resident memory includes touched
pages of a memory-mapped file (page cache: shared and reclaimable), shown apart as "file pages".
Load times are given as ratios to the naive load's, measured in the same run.

The course's target: ``mmap + meta + assign`` at most 1.2x the checkpoint (the naive load is
about 2x). The script exits 1 if a run misses it.

Usage: python benchmarks/bench_memory.py [--size-mb 400] [--repeats 3] [--dir DIR]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from course_lib.big_models import wide_mlp  # noqa: E402
from course_lib.load_memory import LOAD_METHODS, ONE_COPY, LoadMemory, measure_load  # noqa: E402

WIDTH = 2048  # one Linear(2048, 2048) layer is 16.8 MB of float32


def _median_of(runs: list[LoadMemory]) -> dict[str, float]:
    return {
        "ratio": statistics.median(r.ratio for r in runs),
        "worst": max(r.ratio for r in runs),
        "file": statistics.median(r.file_backed / r.checkpoint_bytes for r in runs),
        "seconds": statistics.median(r.seconds for r in runs),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to write (default: a temp dir)"
    )
    args = parser.parse_args()
    if not Path("/proc/self/clear_refs").exists():
        print("note: no /proc/self/clear_refs (not Linux): peaks include the imports' peak")

    depth = max(1, round(args.size_mb * 1e6 / (4 * WIDTH * (WIDTH + 1))))
    kwargs = {"width": WIDTH, "depth": depth}
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        torch_file, st_file = Path(folder) / "big.pth", Path(folder) / "big.safetensors"
        model = wide_mlp(**kwargs)
        torch.save(model.state_dict(), torch_file)
        from safetensors.torch import save_file

        save_file(model.state_dict(), st_file)
        del model
        size = torch_file.stat().st_size
        print(f"checkpoint: {depth} x Linear({WIDTH}, {WIDTH}), {size / 1e6:.0f} MB")
        print(
            f"torch {torch.__version__}, {args.repeats} fresh processes per load, one at a time\n"
        )

        summary: dict[str, dict[str, float]] = {}
        for method in LOAD_METHODS:
            path = st_file if "safetensors" in method else torch_file
            runs = [measure_load(method, path, factory_kwargs=kwargs) for _ in range(args.repeats)]
            summary[method] = _median_of(runs)

    naive_time = summary["naive"]["seconds"]
    header = f"{'load':<28} {'peak / checkpoint':>17} {'worst':>6} {'file pages':>10} {'time / naive':>12}"
    print(header)
    print("-" * len(header))
    for method, row in summary.items():
        print(
            f"{method:<28} {row['ratio']:>16.2f}x {row['worst']:>5.2f}x {row['file']:>9.2f}x "
            f"{row['seconds'] / naive_time:>11.2f}x"
        )
    lean = summary["mmap + meta + assign"]
    met = lean["worst"] <= ONE_COPY
    print(
        f"\ntarget: mmap + meta + assign <= {ONE_COPY}x the checkpoint: worst of "
        f"{args.repeats} runs {lean['worst']:.2f}x -> {'met' if met else 'MISSED'} "
        f"(naive: {summary['naive']['ratio']:.2f}x)"
    )
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
