"""Inference latency of one model through each deployment path, measured fairly, read honestly.

The paths: eager PyTorch, a TorchScript trace (deprecated, shown for the chapter), the module of a
``torch.export`` program, ``torch.compile`` (Inductor), an AOTInductor package (optional: its
compilation takes tens of seconds) and onnxruntime. Fair means: every backend runs with the same
number of CPU threads (PyTorch's intra-op pool and onnxruntime's session both get ``threads``),
the backends are measured in interleaved rounds so a burst of load from another program hits all
of them, and one-off costs (exporting, compiling, the first call) are reported apart from the
steady latency. ``InferenceBenchmark.takeaway`` states what the measured numbers say, and no
more: which backend was fastest at which batch size, by how much, and what compiling cost.

Taught in notebooks/07b_onnx_latency.ipynb, section "How fast is each format?"; the full comparison is
benchmarks/bench_inference.py.
"""

from __future__ import annotations

import contextlib
import statistics
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from course_lib import export
from course_lib.export import onnx_export
from course_lib.timing import measure_latency

__all__ = [
    "ALL_BACKENDS",
    "DEFAULT_BACKENDS",
    "Backend",
    "InferenceBenchmark",
    "eager_hotspots",
    "make_backends",
    "plot_latency",
    "run_benchmark",
    "same_threads",
]

DEFAULT_BACKENDS = ("eager", "TorchScript trace", "torch.export", "torch.compile", "onnxruntime")
ALL_BACKENDS = (*DEFAULT_BACKENDS, "AOTInductor")


@dataclass(frozen=True)
class Backend:
    """One way to run the model: a callable on one input, and what preparing it cost."""

    name: str
    fn: Callable[[Any], object]
    takes_numpy: bool  # onnxruntime is called with the NumPy view of the input
    setup_s: float  # export / trace / compile-ahead time, before the first call


@contextlib.contextmanager
def same_threads(threads: int) -> Iterator[int]:
    """Run PyTorch's CPU operators with ``threads`` threads inside the block (restored after).

    onnxruntime sessions made by ``make_backends`` get the same number, so no backend is measured
    with more cores than another. On a busy 2-core machine one thread each is the steady choice:
    two threads per backend fight the other programs for the cores and the slowest thread sets
    the pace of every operator.

    Used by ``make_backends``, ``eager_hotspots`` and ``run_benchmark`` (their ``threads``);
    not taught in a notebook.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(before)


def _timed(build: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    value = build()
    return value, time.perf_counter() - start


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Exporters and compilers warn about their own internals; a notebook should not show that."""
    with warnings.catch_warnings(), export.quiet_loggers("torch._inductor", "torch._dynamo"):
        warnings.simplefilter("ignore")
        yield


def make_backends(
    model: nn.Module,
    example: torch.Tensor,
    folder: str | Path,
    *,
    threads: int,
    names: Sequence[str] = DEFAULT_BACKENDS,
) -> dict[str, Backend]:
    """Build each named backend for ``model`` (on the CPU, eval mode) from one example input.

    Files (the ONNX file, the AOTInductor package) go to ``folder``. ``torch.compile`` is asked for
    ``dynamic=False``: one kernel specialised per batch size, compiled at the first call with that
    size (``run_benchmark`` reports that call apart). Unknown names raise ``ValueError``.

    Taught in notebooks/07b_onnx_latency.ipynb, section "How fast is each format?".
    """
    unknown = sorted(set(names) - set(ALL_BACKENDS))
    if unknown:
        raise ValueError(f"unknown backends {unknown}; choose from {list(ALL_BACKENDS)}")
    folder = Path(folder)
    model = model.eval()
    backends: dict[str, Backend] = {}
    with same_threads(threads), _quiet():
        for name in names:
            takes_numpy = False
            if name == "eager":
                fn, seconds = model, 0.0
            elif name == "TorchScript trace":
                fn, seconds = _timed(lambda: export.trace_model(model, example))
            elif name == "torch.export":
                fn, seconds = _timed(lambda: export.export_program(model, example).module())
            elif name == "torch.compile":
                torch._dynamo.reset()  # compile from scratch: an earlier cell's graphs don't count
                fn, seconds = _timed(lambda: torch.compile(model, dynamic=False))
            elif name == "AOTInductor":
                fn, seconds = _timed(lambda: _aoti(model, example, folder / "model_aoti.pt2"))
            else:  # onnxruntime
                onnx_path = folder / "model_bench.onnx"
                onnx_file, seconds = _timed(
                    lambda: onnx_export.export_onnx(model, example, onnx_path)  # noqa: B023
                )
                runner = onnx_export.OnnxModel(onnx_file.path, intra_op_threads=threads)
                fn, takes_numpy = runner.run_numpy, True
            backends[name] = Backend(name, fn, takes_numpy, seconds)
    return backends


def _aoti(model: nn.Module, example: torch.Tensor, path: Path) -> Callable[[Any], object]:
    """torch.export with a dynamic batch, compiled ahead of time into a package, loaded back."""
    program = export.export_program(model, example)
    package = torch._inductor.aoti_compile_and_package(program, package_path=str(path))
    return export.load_aoti_package(package, trusted=True)  # compiled here, a moment ago


@dataclass(frozen=True)
class InferenceBenchmark:
    """Median milliseconds per call, by backend and batch size, and the one-off costs."""

    threads: int
    input_shape: tuple[int, ...]  # one sample's shape, without the batch
    batches: tuple[int, ...]
    latency_ms: dict[str, dict[int, float]]
    setup_s: dict[str, float]
    first_call_s: dict[str, dict[int, float]]  # includes torch.compile's compilation
    max_abs_diff: dict[str, float] = field(default_factory=dict)  # against eager, all batches

    def speedup(self, name: str, batch: int) -> float:
        """How many times faster than eager ``name`` ran at ``batch`` (below 1: slower)."""
        return self.latency_ms["eager"][batch] / self.latency_ms[name][batch]

    def fastest(self, batch: int) -> str:
        """The backend with the lowest median latency at ``batch``."""
        return min(self.latency_ms, key=lambda name: self.latency_ms[name][batch])

    def table(self) -> str:
        """One row per backend: median ms and the ratio to eager at each batch, one-off costs."""
        head = f"{'backend':18s}" + "".join(
            f"{f'batch {b}':>13s}{'vs eager':>9s}" for b in self.batches
        )
        lines = [head + f"{'setup':>9s}{'1st calls':>10s}"]
        for name, row in self.latency_ms.items():
            cells = "".join(f"{row[b]:10.3f} ms{self.speedup(name, b):8.1f}x" for b in self.batches)
            first = sum(self.first_call_s[name].values())
            lines.append(f"{name:18s}{cells}{self.setup_s[name]:8.1f} s{first:9.2f} s")
        return "\n".join(lines)

    def takeaway(self) -> list[str]:
        """Sentences that read this run's numbers: the winner per batch, and compile costs."""
        said = []
        for batch in self.batches:
            best = self.fastest(batch)
            ms = self.latency_ms[best][batch]
            if best == "eager":
                said.append(f"batch {batch}: eager PyTorch was fastest here ({ms:.3f} ms).")
            else:
                said.append(
                    f"batch {batch}: {best} was fastest here, {ms:.3f} ms, "
                    f"{self.speedup(best, batch):.1f}x eager."
                )
        if "torch.compile" in self.latency_ms:
            said.append(self._compile_payback())
        return said

    def compile_seconds(self, name: str = "torch.compile") -> float:
        """What ``name`` cost before its steady state: setup plus every batch size's first call."""
        return self.setup_s[name] + sum(self.first_call_s[name].values())

    def _compile_payback(self) -> str:
        """How many calls the compilation takes to pay for itself at the largest batch."""
        batch = max(self.batches)
        compile_s = self.compile_seconds()
        saved_ms = self.latency_ms["eager"][batch] - self.latency_ms["torch.compile"][batch]
        if saved_ms <= 0:
            return (
                f"torch.compile spent {compile_s:.1f} s compiling and was not faster than eager "
                f"at batch {batch}: here it never pays back."
            )
        calls = compile_s * 1e3 / saved_ms
        return (
            f"torch.compile spent {compile_s:.1f} s compiling ({len(self.batches)} batch sizes); "
            f"saving {saved_ms:.3f} ms a call at batch {batch}, it pays back after about "
            f"{calls:,.0f} calls."
        )


def eager_hotspots(
    model: nn.Module, x: torch.Tensor, *, threads: int, top: int = 3
) -> list[tuple[str, float]]:
    """The layer types eager PyTorch spends most time in, with their share (0-1) of the total.

    Each leaf module is timed on the input it receives in a real forward pass, and the times are
    summed by class (``Conv2d``, ``MaxPool2d``...). Eager runs every layer as its own pass over
    memory; a compiler that fuses them (BatchNorm into the convolution, ReLU into either) saves
    most where these shares are large. (``torch.profiler`` would say the same, but prints log
    lines of its own.)

    Taught in notebooks/07b_onnx_latency.ipynb, section "How fast is each format?".
    """
    inputs: dict[nn.Module, tuple[Any, ...]] = {}
    leaves = [m for m in model.modules() if not list(m.children())]

    def record(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        inputs.setdefault(module, args)  # returns None: a hook's return value replaces the output

    hooks = [m.register_forward_hook(record) for m in leaves]
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    by_type: dict[str, float] = {}
    with same_threads(threads), torch.inference_mode():
        for module, args in inputs.items():
            seconds = measure_latency(module, *args, warmup=1, repeats=5, max_seconds=0.2).median_s
            name = type(module).__name__
            by_type[name] = by_type.get(name, 0.0) + seconds
    total = sum(by_type.values()) or 1.0
    ranked = sorted(by_type.items(), key=lambda item: item[1], reverse=True)
    return [(name, seconds / total) for name, seconds in ranked[:top]]


def run_benchmark(
    backends: dict[str, Backend],
    input_shape: Sequence[int],
    batches: Sequence[int],
    *,
    threads: int,
    rounds: int = 3,
    repeats: int = 15,
    max_seconds: float = 0.5,
    seed: int = 0,
) -> InferenceBenchmark:
    """Median latency of every backend at every batch size, with ``threads`` threads each.

    For each batch: the first call of every backend is timed on its own (compilation for
    ``torch.compile``), then ``rounds`` interleaved rounds of ``measure_latency``; the median of the
    rounds is kept. Each backend's output is compared with eager's (largest absolute difference).

    Taught in notebooks/07b_onnx_latency.ipynb, section "How fast is each format?".
    """
    if "eager" not in backends:
        raise ValueError("the benchmark compares against eager: include the 'eager' backend")
    generator = torch.Generator().manual_seed(seed)
    latency: dict[str, dict[int, float]] = {name: {} for name in backends}
    first: dict[str, dict[int, float]] = {name: {} for name in backends}
    diffs: dict[str, float] = dict.fromkeys(backends, 0.0)
    with same_threads(threads), _quiet(), torch.inference_mode():
        for batch in batches:
            x = torch.randn(batch, *input_shape, generator=generator)
            calls = {
                name: (b.fn, x.numpy() if b.takes_numpy else x) for name, b in backends.items()
            }
            want = backends["eager"].fn(x)
            for name, (fn, arg) in calls.items():
                out, first[name][batch] = _timed(lambda fn=fn, arg=arg: fn(arg))
                got = torch.as_tensor(out[0] if isinstance(out, (list, tuple)) else out)
                diffs[name] = max(diffs[name], (got - want).abs().max().item())
            rounds_ms: dict[str, list[float]] = {name: [] for name in calls}
            for _ in range(rounds):
                for name, (fn, arg) in calls.items():
                    timing = measure_latency(
                        fn, arg, warmup=2, repeats=repeats, max_seconds=max_seconds
                    )
                    rounds_ms[name].append(timing.median_ms)
            for name, values in rounds_ms.items():
                latency[name][batch] = statistics.median(values)
    return InferenceBenchmark(
        threads=threads,
        input_shape=tuple(input_shape),
        batches=tuple(batches),
        latency_ms=latency,
        setup_s={name: b.setup_s for name, b in backends.items()},
        first_call_s=first,
        max_abs_diff=diffs,
    )


def plot_latency(result: InferenceBenchmark, title: str = "") -> Any:  # a matplotlib Figure
    """One bar chart per batch size: median latency by backend, each bar labelled with its speed-up.

    Taught in notebooks/07b_onnx_latency.ipynb, section "How fast is each format?".
    """
    import matplotlib.pyplot as plt

    names = list(result.latency_ms)
    fig, axes = plt.subplots(1, len(result.batches), figsize=(5 * len(result.batches), 3.6))
    axes = [axes] if len(result.batches) == 1 else list(axes)
    colors = ["#888888", "#4c72b0", "#55a868", "#8172b2", "#c44e52", "#dd8452"]
    for ax, batch in zip(axes, result.batches, strict=True):
        values = [result.latency_ms[name][batch] for name in names]
        bars = ax.bar(names, values, color=colors[: len(names)])
        ax.bar_label(bars, labels=[f"{result.speedup(n, batch):.1f}x" for n in names], fontsize=8)
        shape = "×".join(str(d) for d in result.input_shape)
        ax.set_title(f"{title}{shape}, batch {batch}, {result.threads} thread(s)")
        ax.set_ylabel("median latency (ms)")
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    fig.tight_layout()
    return fig
