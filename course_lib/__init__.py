"""``course_lib``: the course's reference implementations, in the chapter's order.

Every public function names the notebook that teaches it ("Taught in notebooks/...").
Read the modules along the chapter; a folder is a package whose ``__init__`` gives its own order.

The chapter, section by section:

- 6.3.1 ``state_dict``: ``device`` (CPU, CUDA or MPS, and ``map_location``), ``explore`` (what a
  ``state_dict`` holds, table and layer explorer); deeper: ``big_models`` (loading at one copy of
  the weights) and ``load_memory`` (measuring that in a fresh process).
- 6.3.2 the whole model: ``safe_io`` (``safe_load``: weights only, clear errors for hostile or
  damaged files), ``tensor_state`` (a whole training state in one safetensors file, no pickle).
- 6.3.3 checkpoints: ``checkpoint`` (``save_checkpoint``, ``load_checkpoint``,
  ``train_with_checkpoint``), ``rng`` (every random number generator), ``demo_job`` (a job to kill
  and resume).
- 6.3.4 mismatched ``state_dict``: ``state_dict`` (``load_partial_state_dict`` with a report,
  ``rename_state_dict_keys``).
- 6.3.5 ``DataParallel`` and DDP: ``prefixes`` (``module.`` / ``_orig_mod.``), ``inspection``
  (a file or DCP folder looked at without its model), ``distributed`` (torchrun, sharded step
  checkpoints, elastic resume).
- 6.3.6 TorchScript and ``torch.export``: ``export`` (its own reading order), ``graph_view`` (a
  recorded graph as readable lines).
- 6.3.7 ONNX: ``export.onnx_export`` (export verified with onnxruntime), ``torch_free`` (running it where
  torch cannot be imported), ``inference_bench`` (latency of every backend).
- 6.3.8 a checkpoint manager: ``manager`` (its own reading order).
- 6.3.9 safe saving: ``safe_io`` again (``safe_save``, ``save_with_backup``), ``benchmark_io``
  (what a durable save costs).
- Every section: ``errors`` (``CourseError``: subject, problem, fix).

What the notebooks use around the chapter's code: ``notebook`` (the first cell of every
notebook), ``models`` and ``data`` (made in code, no downloads), ``display``, ``plots`` and
``progress`` (tables, figures, finished progress bars), ``interrupt`` (killing a process at a
chosen moment), ``timing`` (median latencies).

For learners checking an exercise: ``selfcheck`` (``./course check``). The grader and the hidden
checks are the teacher's, outside this package: ``teacher/``.
"""
