"""Inference latency of the course's deployment paths, each against eager PyTorch in the same run.

For SmallCNN at the course's 3x32x32 input and at the chapter's 3x224x224, at each batch size:
eager PyTorch, a TorchScript trace (deprecated), the torch.export module, torch.compile (Inductor),
an AOTInductor package and onnxruntime (course_lib.inference_bench). Every backend runs with the
same number of CPU threads (printed; default 1, the steady choice on a shared 2-core machine: with
PyTorch's default two threads under load, eager starved and onnxruntime looked 310x faster at
batch 1 instead of about 5x). Steady medians are reported apart from one-off costs: setup (export,
trace, ahead-of-time compile) and the first call at each batch size (where torch.compile compiles).
No timed assertions: the ratios are for a person to read; the conclusion printed reads them.

Usage: python benchmarks/bench_inference.py [--sizes 32 224] [--batches 1 64] [--threads 1]
                                            [--backends eager onnxruntime ...]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

import onnxruntime as ort
import torch

from course_lib import inference_bench
from course_lib.models import SmallCNN


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 224])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for every backend")
    parser.add_argument(
        "--backends", nargs="+", default=list(inference_bench.ALL_BACKENDS), metavar="NAME"
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument("--repeats", type=int, default=15, help="timed repeats per round")
    parser.add_argument("--max-seconds", type=float, default=1.0, help="cap per measurement")
    args = parser.parse_args(argv)
    if "eager" not in args.backends:
        args.backends.insert(0, "eager")

    print(
        f"torch {torch.__version__}, onnxruntime {ort.__version__}, Python "
        f"{platform.python_version()}, {os.cpu_count()} CPUs; CPU only; every backend runs "
        f"with {args.threads} thread(s); median of {args.rounds} interleaved rounds of up to "
        f"{args.repeats} repeats"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            torch.manual_seed(0)
            model = SmallCNN().eval()
            example = torch.randn(2, 3, size, size)
            backends = inference_bench.make_backends(
                model, example, Path(tmp), threads=args.threads, names=args.backends
            )
            result = inference_bench.run_benchmark(
                backends,
                (3, size, size),
                args.batches,
                threads=args.threads,
                rounds=args.rounds,
                repeats=args.repeats,
                max_seconds=args.max_seconds,
            )
            print(f"\nSmallCNN, input 3x{size}x{size}, {result.threads} thread(s) each")
            print("  (setup: export/trace/compile before the first call; 1st calls: the first")
            print("   call at each batch size, where torch.compile compiles)")
            for line in result.table().splitlines():
                print("  " + line)
            worst = max(result.max_abs_diff.items(), key=lambda item: item[1])
            print(f"  largest difference from eager: {worst[1]:.1e} ({worst[0]})")
            for sentence in result.takeaway():
                print("  " + sentence)
            x = torch.randn(max(args.batches), 3, size, size)
            hot = inference_bench.eager_hotspots(model, x, threads=args.threads)
            shares = ", ".join(f"{name} {share:.0%}" for name, share in hot)
            print(f"  where eager spends its time at batch {max(args.batches)}: {shares}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
