"""ONNX export on today's exporter, and verification against the PyTorch model with onnxruntime.

``export_onnx`` uses the dynamo-based exporter (``torch.onnx.export(..., dynamo=True)``, opset 18
or newer), makes the batch dimension dynamic, and writes ONE self-contained file (the exporter's
default would put the weights in a silent ``model.onnx.data`` sidecar that is easy to forget when
copying the model), atomically (a failed write keeps the previous file). The exporter's console
chatter is captured, not printed, and its failures become short errors in the course's style
(``UnsupportedOperatorError``, ``OnnxExportError``). The deprecated TorchScript-based exporter is
used only when asked for (``legacy=True``).

``verify_onnx`` runs ``onnx.checker`` (full check) and onnxruntime on the CPU at several batch
sizes, and compares every output with the PyTorch model in eval mode; a mismatch raises with the
figures. ``OnnxModel`` runs a file with session settings that keep onnxruntime fast.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import io
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils import _pytree as pytree

from course_lib.errors import CourseError
from course_lib.export import (
    EXPORT_LOGGERS,
    ExportError,
    InputCountError,
    Inputs,
    as_tuple,
    batch_dynamic_shapes,
    batched_inputs,
    check_input_shapes,
    exporting_in_eval_mode,
    positional_specs,
    quiet_loggers,
    widen_size_one_dims,
    write_atomically,
)

__all__ = [
    "DEFAULT_BATCH_SIZES",
    "MIN_OPSET",
    "MissingDependencyError",
    "OnnxExportError",
    "OnnxFile",
    "OnnxMismatchError",
    "OnnxModel",
    "OutputCheck",
    "UnsupportedOperatorError",
    "VerificationReport",
    "export_onnx",
    "make_session",
    "onnx_input_shapes",
    "summarize_log",
    "verify_onnx",
]

MIN_OPSET = 18
DEFAULT_BATCH_SIZES = (1, 2, 13)


class MissingDependencyError(CourseError, ImportError):
    """A package the ONNX path needs is not installed; the message says what to install."""


class UnsupportedOperatorError(ExportError):
    """The ONNX exporter cannot translate an operator the model uses (or the way it is used)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        model_name: str,
        operator: str,
        node: str | None,
        reason: str | None = None,
    ) -> None:
        self.operator = operator
        self.node = node
        self.reason = reason
        where = f" (graph node {node!r})" if node else ""
        why = f": {reason.rstrip('.')}" if reason else ""
        super().__init__(
            path,
            f"export_onnx({model_name}): the ONNX exporter cannot translate the operator "
            f"{operator}{where}{why}.",
            "rewrite that part of forward() with operations ONNX supports, or pass a "
            "translation written with onnxscript (torch.onnx.export(..., "
            "custom_translation_table={torch.ops...: fn})); or deploy this model with "
            "torch.export (.pt2) instead, which supports every PyTorch operator.",
        )


class OnnxExportError(ExportError):
    """The ONNX exporter failed for another reason; the exporter's own report is kept on it.

    ``exporter_error`` holds the original exception (its long text, with the exporter's steps).
    """


class OnnxMismatchError(CourseError, AssertionError):
    """onnxruntime's outputs differ from the PyTorch model's beyond the tolerances."""

    def __init__(self, report: VerificationReport) -> None:
        self.report = report
        super().__init__(
            report.path,
            "onnxruntime differs from the PyTorch model (eval mode) beyond "
            f"atol={report.atol:g}, rtol={report.rtol:g}:\n{report.table()}",
            "export again from the model as it is now (after model.eval()); a file "
            "exported before the weights changed, or in training mode, gives other answers.",
        )


def _require(module: str, purpose: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            module,
            f"{purpose} needs this package, which cannot be imported ({exc}).",
            f"pip install {module}",
        ) from exc


@dataclass(frozen=True)
class OnnxFile:
    """What ``export_onnx`` wrote: one file, its opset, its size, and the exporter's captured log."""

    path: Path
    opset: int
    num_bytes: int
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    input_shapes: dict[str, tuple[int | str | None, ...]]
    exporter: str
    log: str

    def __str__(self) -> str:
        shapes = ", ".join(f"{n}{list(s)}" for n, s in self.input_shapes.items())
        return (
            f"{self.path}: ONNX opset {self.opset}, {self.num_bytes / 1024:.1f} KiB in one file "
            f"({self.exporter} exporter); inputs {shapes}; outputs {list(self.output_names)}"
        )


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[io.StringIO]:
    """Capture what the exporter prints, warns and logs (progress lines, timestamps, PIDs)."""
    captured = io.StringIO()
    with (
        quiet_loggers("torch.onnx", "onnxscript", *EXPORT_LOGGERS),
        warnings.catch_warnings(record=True) as caught,
        contextlib.redirect_stdout(captured),
        contextlib.redirect_stderr(captured),
    ):
        warnings.simplefilter("always")
        yield captured
    for w in caught:
        captured.write(f"{w.category.__name__}: {w.message}\n")


def summarize_log(text: str, caught: Sequence[warnings.WarningMessage] = ()) -> list[str]:
    """The lines of an exporter's console output worth reading, each once.

    Drops the ``[torch.onnx]`` progress lines and traceback frames (file paths, source lines),
    keeps messages and exception lines, and appends each warning as ``Category: first sentence``.

    Taught in notebooks/07b_onnx_latency.ipynb.
    """
    kept: list[str] = []
    progress = 0
    for line in text.splitlines():
        if line.startswith("[torch.onnx]"):
            progress += 1
        elif line.strip() and not line.startswith((" ", "\t", "Traceback", "^", "~")):
            kept.append(line.strip())
    for w in caught:
        first = str(w.message).strip().split(". ")[0].rstrip(".")
        kept.append(f"{w.category.__name__}: {first}.")
    if progress:
        kept.insert(0, f"({progress} progress lines of the form '[torch.onnx] ...')")
    return list(dict.fromkeys(kept))


def onnx_input_shapes(model_proto: Any) -> dict[str, tuple[int | str | None, ...]]:
    """Each graph input's shape: an int for a fixed size, the symbol's name for a dynamic one.

    Taught in notebooks/07b_onnx_latency.ipynb.
    """
    shapes = {}
    for value in model_proto.graph.input:
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims
        )
    return shapes


def _describe(path: Path, exporter: str, log: str) -> OnnxFile:
    onnx = _require("onnx", "reading an ONNX file")
    proto = onnx.load(str(path), load_external_data=False)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    return OnnxFile(
        path=path,
        opset=opset,
        num_bytes=path.stat().st_size,
        input_names=tuple(i.name for i in proto.graph.input),
        output_names=tuple(o.name for o in proto.graph.output),
        input_shapes=onnx_input_shapes(proto),
        exporter=exporter,
        log=log,
    )


_OP_PATTERN = re.compile(r"OpOverload\(op='(?P<op>[\w.]+)', overload='(?P<overload>\w+)'\)")
_TARGET_PATTERN = re.compile(r"target=torch\.ops\.(?P<op>\w+\.\w+)\.(?P<overload>\w+)")
_NODE_PATTERN = re.compile(r"translating node %(?P<node>\w+)")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_SUMMARY_LINE = re.compile(r"^<class '(?P<cls>[\w.]+)'>: (?P<message>.+)$", re.MULTILINE)


def _plain(text: str) -> str:
    """The exporter's text without terminal colour codes."""
    return _ANSI.sub("", text)


def _root_cause(text: str) -> str | None:
    """The first line of the exporter's "Exception summary" (the innermost error), if any."""
    match = _SUMMARY_LINE.search(text)
    if match is None:
        return None
    cls = match["cls"].rsplit(".", 1)[-1]
    message = match["message"].split(" (unhinted")[0].strip()  # the rest repeats the expression
    return message if cls == "NotImplementedError" else f"{cls}: {message}"


def _unsupported_operator(exc: BaseException) -> tuple[str, str | None, str | None] | None:
    """The operator (``aten::median.dim``), graph node and reason named in an exporter error."""
    text = _plain(str(exc))
    match = _OP_PATTERN.search(text) or _TARGET_PATTERN.search(text)
    if match is None:
        return None
    namespace, _, name = match["op"].partition(".")
    overload = "" if match["overload"] == "default" else f".{match['overload']}"
    node = _NODE_PATTERN.search(text)
    reason = _root_cause(text)
    if reason is not None and ("OpOverload(" in reason or "GraphConstructionError" in reason):
        reason = None  # only restates the operator
    return f"{namespace}::{name}{overload}", node["node"] if node else None, reason


def _export_failure(path: Path, model: nn.Module, exc: BaseException) -> ExportError:
    """The house-style error for an exporter failure: short, no colour codes, with the fix."""
    found = _unsupported_operator(exc)
    name = type(model).__name__
    if found is not None:
        error: ExportError = UnsupportedOperatorError(path, name, *found)
    else:
        text = _plain(str(exc))
        cause = _root_cause(text)
        first = next((line.strip() for line in text.splitlines() if line.strip()), "")
        problem = cause or first
        if len(problem) > 400:
            problem = problem[:400] + " ..."
        if "data-dependent" in text or "GuardOnDataDependent" in text:
            fix = (
                "forward() branches on tensor values (a Python if on the data): write the branch "
                "with torch.cond, or compute the condition outside the model."
            )
        else:
            fix = (
                "export with torch.export.export(model, args, dynamic_shapes=...) first (its error "
                "names the line of forward() at fault); the exporter's full report is on this "
                "error's .exporter_error."
            )
        error = OnnxExportError(
            path, f"export_onnx({name}): the ONNX exporter failed: {problem}", fix
        )
    error.exporter_error = exc
    return error


def _legacy_dynamic_axes(
    names: Sequence[str], specs: Sequence[Any]
) -> dict[str, dict[int, str]] | None:
    """``dynamic_axes`` for the legacy exporter from per-input ``dynamic_shapes`` specs."""
    axes = {}
    for name, spec in zip(names, specs, strict=False):
        items = spec.items() if isinstance(spec, dict) else enumerate(spec or ())
        dims = {d: getattr(v, "__name__", None) or f"dim{d}" for d, v in items if v is not None}
        if dims:
            axes[name] = dims
    return axes or None


def export_onnx(
    model: nn.Module,
    example_inputs: Inputs,
    path: str | os.PathLike[str],
    *,
    dynamic_batch: bool = True,
    opset_version: int | None = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    external_data: bool = False,
    legacy: bool = False,
    dynamic_shapes: Any = None,
) -> OnnxFile:
    """Export ``model`` to ONE ONNX file at ``path`` with a dynamic batch dimension.

    Current exporter (``dynamo=True``): opset ``opset_version`` (default: the exporter's, 18 or
    newer; older opsets raise ``ValueError``), graph optimisation and constant folding on.
    ``dynamic_shapes`` (torch.export's format, e.g. ``{"x": {0: Dim("batch"), 1: Dim("seq")}}``
    to make a sequence length dynamic too) replaces the default, which makes dimension 0 of the
    inputs that carry the batch dynamic (see ``export.batched_inputs``: an input of shape ``(1,)``
    beside a batch of 1 is taken as a setting, not a batch). A dynamic dimension of size 1 in the
    example is repeated to 2 (size-1 dimensions cannot be dynamic). ``legacy=True`` uses the
    deprecated TorchScript-based exporter (``dynamo=False``, ``dynamic_axes``), for old runtimes
    only. A model with any module in training mode is exported in eval mode, with a warning.
    The file is written atomically (a failed export keeps the previous file, ``ExportWriteError``);
    an exporter failure raises ``UnsupportedOperatorError`` or ``OnnxExportError``, short and
    without colour codes. The exporter's output is captured into ``OnnxFile.log``.
    Taught in notebooks/07_onnx.ipynb.
    """
    path = Path(path)
    args = as_tuple(example_inputs)
    if opset_version is not None and opset_version < MIN_OPSET and not legacy:
        raise ValueError(
            f"export_onnx({path}): opset_version={opset_version} is older than the dynamo "
            f"exporter supports (>= {MIN_OPSET}). Use the default, or legacy=True for a runtime "
            "that cannot read newer opsets."
        )
    if not legacy:
        _require("onnxscript", "ONNX export with the current (dynamo) exporter")
    _require("onnx", "ONNX export")
    exporter = "legacy TorchScript-based" if legacy else "dynamo"
    if dynamic_shapes is None and dynamic_batch:
        dynamic_shapes = batch_dynamic_shapes(model, args)
    with exporting_in_eval_mode(model, "ONNX export"), _quiet_exporter() as log:
        try:
            if legacy:
                names = list(input_names or [f"input_{i}" for i in range(len(args))])
                specs = positional_specs(model, args, dynamic_shapes)

                def write(temp: Path) -> None:
                    torch.onnx.export(
                        model,
                        args,
                        str(temp),
                        dynamo=False,
                        opset_version=opset_version or 17,
                        input_names=names,
                        output_names=list(output_names) if output_names else None,
                        dynamic_axes=_legacy_dynamic_axes(names, specs),
                        verbose=False,
                    )
            else:
                program = torch.onnx.export(
                    model,
                    widen_size_one_dims(model, args, dynamic_shapes),
                    dynamo=True,
                    opset_version=opset_version,
                    input_names=list(input_names) if input_names else None,
                    output_names=list(output_names) if output_names else None,
                    dynamic_shapes=dynamic_shapes,
                    optimize=True,
                    verbose=False,
                )
                _drop_stack_traces(program.model)

                def write(temp: Path) -> None:
                    program.save(str(temp), external_data=external_data)

            write_atomically(path, write, "ONNX file")
        except torch.onnx.OnnxExporterError as exc:
            raise _export_failure(path, model, exc) from None
    sidecar = path.with_name(path.name + ".data")
    if not external_data and sidecar.exists():
        sidecar.unlink()  # a stale sidecar from an earlier export would only mislead
    return _describe(path, exporter, log.getvalue())


def _drop_stack_traces(model: Any) -> None:
    """Remove the exporter's per-node Python stack traces from an ``onnx_ir.Model``.

    They hold absolute paths of the exporting machine (its home folder, its virtualenv): a file
    meant for deployment should not carry them, and without them the same model exports to the
    same bytes wherever it is exported.
    """
    from onnx_ir import traversal

    for node in traversal.RecursiveGraphIterator(model.graph):
        node.metadata_props.pop("pkg.torch.onnx.stack_trace", None)


def make_session(
    path: str | os.PathLike[str], *, intra_op_threads: int | None = None
) -> Any:  # onnxruntime.InferenceSession
    """An onnxruntime CPU session with settings that keep it fast.

    All graph optimisations on (operator fusion, constant folding); ``intra_op_threads`` defaults
    to ``torch.get_num_threads()``, so onnxruntime and PyTorch are compared on equal terms.
    """
    ort = _require("onnxruntime", "running an ONNX file")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = intra_op_threads or torch.get_num_threads()
    options.log_severity_level = 3  # errors only: warnings would land in notebook output
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxModel:
    """An ONNX file run by onnxruntime, called like a PyTorch model (tensors in, tensors out).

    Checks input shapes first, so a file exported with a fixed batch says so, rather than
    onnxruntime's ``INVALID_ARGUMENT : Got invalid dimensions``.

    Taught in notebooks/07b_onnx_latency.ipynb.
    """

    def __init__(self, path: str | os.PathLike[str], *, intra_op_threads: int | None = None):
        self.path = Path(path)
        self.session = make_session(self.path, intra_op_threads=intra_op_threads)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.fixed_shapes = {
            i.name: tuple(d if isinstance(d, int) else None for d in i.shape)
            for i in self.session.get_inputs()
        }

    def run_numpy(self, *inputs: np.ndarray) -> list[np.ndarray]:
        """Run on NumPy arrays (the cheapest call, used for timing)."""
        if len(inputs) != len(self.input_names):
            raise InputCountError(self.path, self.input_names, len(inputs))
        check_input_shapes(str(self.path), self.fixed_shapes, inputs)
        return self.session.run(None, dict(zip(self.input_names, inputs, strict=True)))

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        arrays = [x.detach().cpu().numpy() for x in inputs]
        outputs = tuple(torch.from_numpy(o) for o in self.run_numpy(*arrays))
        return outputs[0] if len(outputs) == 1 else outputs


@dataclass(frozen=True)
class OutputCheck:
    """One output at one batch size: the worst absolute and relative error against PyTorch."""

    batch: int
    output: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    ok: bool


@dataclass(frozen=True)
class VerificationReport:
    """``verify_onnx``'s result: every output at every batch size, and the tolerances used.

    An element passes when ``|onnx - torch| <= atol + rtol * |torch|`` (``numpy.allclose``).
    ``max_rel`` is taken over elements with ``|torch| > atol`` (relative error near 0 means nothing).
    """

    path: Path
    checks: tuple[OutputCheck, ...]
    atol: float
    rtol: float

    @property
    def passed(self) -> bool:
        return all(c.ok for c in self.checks)

    def table(self) -> str:
        """A fixed-width table, one row per batch size and output."""
        lines = [f"  {'batch':>5}  {'output':<10} {'shape':<18} {'max_abs':<16} {'max_rel':<16} ok"]
        for c in self.checks:
            lines.append(
                f"  {c.batch:>5}  {c.output:<10} {str(c.shape):<18} "
                f"{f'max_abs={c.max_abs:.1e}':<16} {f'max_rel={c.max_rel:.1e}':<16} "
                f"{'yes' if c.ok else 'NO'}"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        verdict = "PASSED" if self.passed else "FAILED"
        return (
            f"{self.path}: {verdict} (onnx.checker full check; onnxruntime CPU vs PyTorch eval, "
            f"atol={self.atol:g}, rtol={self.rtol:g})\n{self.table()}"
        )


def _batch_of(
    example: tuple[Any, ...], batch: int, seed: int, batched: Sequence[bool]
) -> tuple[Any, ...]:
    """Random inputs shaped like ``example``, with ``batch`` rows where ``batched`` says so.

    Floats are random normal; integers random within the example's range (token ids, classes);
    booleans (masks) are the example's rows, repeated and shuffled, so a padding mask stays one
    that the model can take (a row that masks everything gives NaN in any runtime).
    """
    gen = torch.Generator().manual_seed(seed)
    out = []
    for x, is_batched in zip(example, batched, strict=True):
        if not (isinstance(x, torch.Tensor) and x.dim() > 0 and is_batched):
            out.append(x)
            continue
        shape = (batch, *x.shape[1:])
        if x.is_floating_point():
            out.append(torch.randn(shape, generator=gen, dtype=x.dtype))
        elif x.dtype == torch.bool:
            rows = torch.randint(0, x.shape[0], (batch,), generator=gen)
            out.append(x[rows])
        else:
            low, high = int(x.min()), int(x.max()) + 1
            out.append(torch.randint(low, high, shape, generator=gen, dtype=x.dtype))
    return tuple(out)


def _inputs_to_vary(
    example: tuple[Any, ...], file_shapes: Sequence[tuple[int | None, ...]]
) -> list[bool]:
    """Which example inputs get ``batch`` rows: the file's dynamic dimension 0s, if it has any.

    A file exported with a fixed batch has none: then the inputs that carry the batch are guessed
    as ``export_onnx`` does, so the check meets the fixed batch and says so (``StaticShapeError``).
    """
    tensors = [i for i, x in enumerate(example) if isinstance(x, torch.Tensor)]
    dynamic = [bool(shape) and shape[0] is None for shape in file_shapes]
    flags = [False] * len(example)
    if any(dynamic):
        for i, is_dynamic in zip(tensors, dynamic, strict=False):
            flags[i] = is_dynamic
        return flags
    return batched_inputs(example)


def _compare(
    batch: int, name: str, got: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float
) -> OutputCheck:
    g, e = got.double(), expected.double()
    if g.shape != e.shape:
        return OutputCheck(batch, name, tuple(g.shape), float("inf"), float("inf"), False)
    both_nan = g.isnan() & e.isnan()  # the same NaN in both runtimes is agreement
    g, e = g.masked_fill(both_nan, 0), e.masked_fill(both_nan, 0)
    diff = (g - e).abs()
    significant = e.abs() > atol
    max_rel = float((diff[significant] / e.abs()[significant]).max()) if significant.any() else 0.0
    ok = bool((diff <= atol + rtol * e.abs()).all())
    max_abs = float(diff.max()) if diff.numel() else 0.0
    return OutputCheck(batch, name, tuple(g.shape), max_abs, max_rel, ok)


def verify_onnx(
    path: str | os.PathLike[str],
    model: nn.Module,
    example_inputs: Inputs,
    *,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    seed: int = 0,
    raise_on_mismatch: bool = True,
) -> VerificationReport:
    """Check ``path`` structurally and numerically against ``model``; raise on a mismatch.

    1. ``onnx.checker.check_model(full_check=True)`` (types and shapes, not only the structure);
    2. for each batch size, random inputs shaped like ``example_inputs`` through onnxruntime (CPU)
       and through a CPU copy of ``model`` in eval mode (the caller's model is not changed);
    3. per output, the worst absolute and relative error against ``atol`` / ``rtol``; a model that
       returns a dict or a nested tuple is compared leaf by leaf, in the order the exporter
       flattened them. Inputs whose dimension 0 the file declares dynamic get each batch size;
       the others (a setting of shape ``(1,)``) keep the example's value.
    The default batch sizes 1, 2 and 13 catch a batch fixed at export time and odd-size bugs.
    Raises ``OnnxMismatchError`` (with the report) if any output is out of tolerance, or
    ``StaticShapeError`` if the file was exported with a fixed batch.

    Taught in notebooks/07_onnx.ipynb, in depth in notebooks/07b_onnx_latency.ipynb; used in
    notebooks/01a_fast_path.ipynb.
    """
    path = Path(path)
    onnx = _require("onnx", "verifying an ONNX file")
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    runner = OnnxModel(path)
    reference = copy.deepcopy(model).cpu().eval()
    example = tuple(x.cpu() if isinstance(x, torch.Tensor) else x for x in as_tuple(example_inputs))
    vary = _inputs_to_vary(example, list(runner.fixed_shapes.values()))
    checks = []
    for i, batch in enumerate(batch_sizes):
        inputs = _batch_of(example, batch, seed + i, vary)
        got = runner(*[x for x in inputs if isinstance(x, torch.Tensor)])
        with torch.inference_mode():
            expected = reference(*inputs)
        # The exporter flattens outputs (a dict's values, a nested tuple's leaves) in this order.
        got = as_tuple(got)
        expected = tuple(x for x in pytree.tree_leaves(expected) if isinstance(x, torch.Tensor))
        if len(got) != len(expected):
            raise RuntimeError(
                f"{path}: the file has {len(got)} outputs, the model returns {len(expected)} "
                "tensors: is this the file exported from this model?"
            )
        for name, g, e in zip(runner.output_names, got, expected, strict=True):
            checks.append(_compare(batch, name, g, e, atol, rtol))
    report = VerificationReport(path, tuple(checks), atol, rtol)
    if raise_on_mismatch and not report.passed:
        raise OnnxMismatchError(report)
    return report
