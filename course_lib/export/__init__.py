"""Exporting a model as a self-contained program: TorchScript (deprecated) and ``torch.export``.

Both turn a model into a file that runs without the Python class that defined it. TorchScript is
the chapter's way (6.3.6); current PyTorch deprecates it in favour of ``torch.export``, which
writes ``.pt2`` programs with a dynamic batch dimension. ONNX (6.3.7), a file any runtime reads,
is ``onnx_export``, built on the same helpers.

Reading order:

1. ``torchscript``: ``trace_model``, ``script_model``, ``load_torchscript`` (the chapter's calls).
2. ``program``: ``export_program``, ``load_program``, ``exported_module`` (``torch.export``).
3. ``fresh_process``: ``run_in_fresh_process``, the proof that a file needs no model source.
   ``trust``: which files run code when loaded (TorchScript, a ``.pt2`` with pickles or native
   libraries, AOTInductor packages): the loaders refuse them unless ``trusted=True``.
4. ``onnx_export``: ``export_onnx``, ``verify_onnx`` (against onnxruntime), ``OnnxModel``
   (imported as ``from course_lib.export import onnx_export``).
5. For maintainers: ``modes`` (every export in eval mode, each flag and buffer restored),
   ``writing`` (atomic writes: a failed export keeps the previous file) and ``errors``.

Taught in notebooks/06_torchscript.ipynb and notebooks/07_onnx.ipynb.
"""

from course_lib.export.errors import (
    ExportError,
    ExportWriteError,
    InputCountError,
    StaticShapeError,
    TraceMismatchError,
    TraceMismatchWarning,
    TrainingModeWarning,
    write_error,
)
from course_lib.export.fresh_process import (
    FreshRun,
    artifact_kind,
    run_all_in_fresh_process,
    run_in_fresh_process,
)
from course_lib.export.modes import (
    EXPORT_LOGGERS,
    Inputs,
    as_tuple,
    exporting_in_eval_mode,
    ignore_jit_deprecation,
    quiet_loggers,
)
from course_lib.export.program import (
    ExportedModule,
    batch_dynamic_shapes,
    batched_inputs,
    check_input_shapes,
    export_program,
    exported_module,
    load_program,
    positional_specs,
    program_input_shapes,
    widen_size_one_dims,
)
from course_lib.export.torchscript import (
    load_torchscript,
    save_torchscript,
    script_model,
    trace_model,
)
from course_lib.export.trust import (
    UntrustedCodeError,
    check_pt2_trusted,
    check_torchscript_trusted,
    load_aoti_package,
    pt2_code_risks,
)
from course_lib.export.writing import (
    save_through_python,
    write_atomically,
)

__all__ = [
    "EXPORT_LOGGERS",
    "ExportError",
    "ExportWriteError",
    "ExportedModule",
    "FreshRun",
    "InputCountError",
    "Inputs",
    "StaticShapeError",
    "TraceMismatchError",
    "TraceMismatchWarning",
    "TrainingModeWarning",
    "UntrustedCodeError",
    "artifact_kind",
    "as_tuple",
    "batch_dynamic_shapes",
    "batched_inputs",
    "check_input_shapes",
    "check_pt2_trusted",
    "check_torchscript_trusted",
    "export_program",
    "exported_module",
    "exporting_in_eval_mode",
    "ignore_jit_deprecation",
    "load_aoti_package",
    "load_program",
    "load_torchscript",
    "positional_specs",
    "program_input_shapes",
    "pt2_code_risks",
    "quiet_loggers",
    "run_all_in_fresh_process",
    "run_in_fresh_process",
    "save_through_python",
    "save_torchscript",
    "script_model",
    "trace_model",
    "widen_size_one_dims",
    "write_atomically",
    "write_error",
]
