"""Inference latency of the course's export paths, each against eager PyTorch measured in the same run.

For SmallCNN at the course's 3x32x32 input and at the chapter's 3x224x224, at each batch size:
eager PyTorch, TorchScript (frozen trace), torch.export, onnxruntime with the course's session
settings (course_lib.onnx_export.make_session), and onnxruntime with graph optimisations turned
off (to show what the settings are worth). Prints medians (course_lib.timing) and each backend's
time as a ratio of eager's. No timed assertions: the ratios are for a person to read.

Usage: python benchmarks/bench_inference.py [--sizes 32 224] [--batches 1 64] [--threads N]
On a busy machine, --threads 1 gives steadier figures (both PyTorch and onnxruntime use it).
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import onnxruntime as ort
import torch

from course_lib import export, onnx_export
from course_lib.models import SmallCNN
from course_lib.timing import measure_latency


def unoptimised_session(path: Path) -> ort.InferenceSession:
    """The same file with onnxruntime's graph optimisations off: the baseline for the settings."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = torch.get_num_threads()
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def warm_up(fn: Callable[..., object], arg: object, seconds: float) -> None:
    """Call ``fn(arg)`` for about ``seconds`` (and at least 3 times): caches, pools, JIT kernels."""
    end = time.perf_counter() + seconds
    for count in itertools.count():
        fn(arg)
        if count >= 2 and time.perf_counter() > end:
            return


def backends_for(size: int, folder: Path) -> dict[str, object]:
    """Callables taking one CPU tensor (or its NumPy view for onnxruntime) per backend."""
    torch.manual_seed(0)
    model = SmallCNN().eval()
    example = torch.randn(2, 3, size, size)
    onnx_path = onnx_export.export_onnx(model, example, folder / f"cnn{size}.onnx").path
    runner = onnx_export.OnnxModel(onnx_path)
    plain = unoptimised_session(onnx_path)
    name = plain.get_inputs()[0].name
    return {
        "eager": model,
        "TorchScript (frozen trace)": export.trace_model(model, example, freeze=True),
        "torch.export": export.export_program(model, example).module(),
        "onnxruntime": ("numpy", runner.run_numpy),
        "onnxruntime, no graph opt": ("numpy", lambda x: plain.run(None, {name: x})),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 224])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--repeats", type=int, default=15, help="timed repeats per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per measurement")
    parser.add_argument(
        "--max-seconds", type=float, default=1.0, help="cap on the time per measurement"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch and onnxruntime threads (default: torch's)"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", DeprecationWarning)

    print(
        f"torch {torch.__version__}, onnxruntime {ort.__version__}, Python "
        f"{platform.python_version()}, {os.cpu_count()} CPUs, torch threads "
        f"{torch.get_num_threads()}; CPU only; median of {args.rounds} interleaved rounds of up "
        f"to {args.repeats} repeats"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            backends = backends_for(size, Path(tmp))
            print(f"\nSmallCNN, input 3x{size}x{size}")
            header = f"  {'backend':28s}" + "".join(
                f"{f'batch {b} (ms)':>16s}{'/ eager':>9s}" for b in args.batches
            )
            print(header)
            rows: dict[str, list[float]] = {name: [] for name in backends}
            for batch in args.batches:
                x = torch.randn(batch, 3, size, size)
                calls = {
                    name: (b[1], x.numpy()) if isinstance(b, tuple) else (b, x)
                    for name, b in backends.items()
                }
                # Interleaved rounds: each backend is measured in every round, so a burst of
                # load from another program hits all of them rather than one; median of rounds.
                rounds: dict[str, list[float]] = {name: [] for name in calls}
                with torch.inference_mode():
                    for fn, arg in calls.values():
                        warm_up(fn, arg, seconds=0.3)
                    for _ in range(args.rounds):
                        for name, (fn, arg) in calls.items():
                            latency = measure_latency(
                                fn,
                                arg,
                                warmup=args.warmup,
                                repeats=args.repeats,
                                max_seconds=args.max_seconds,
                            )
                            rounds[name].append(latency.median_s * 1e3)
                for name, values in rounds.items():
                    rows[name].append(statistics.median(values))
            for name, values in rows.items():
                cells = "".join(
                    f"{value:16.3f}{value / rows['eager'][i]:8.2f}x"
                    for i, value in enumerate(values)
                )
                print(f"  {name:28s}{cells}")
            speedups = ", ".join(
                f"batch {b}: {rows['eager'][i] / rows['onnxruntime'][i]:.1f}x"
                for i, b in enumerate(args.batches)
            )
            print(f"  onnxruntime speed-up over eager: {speedups}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
