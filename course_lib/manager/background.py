"""Saving in the background (``async_save=True``): a CPU snapshot, one writer thread.

For maintainers.

The training loop only waits for a copy of the state in CPU memory; a thread writes the copy
while training goes on. One save is in flight at a time, and a failure in the thread is kept
and raised by the next call that waits for it (the next ``save``, ``wait`` or ``load``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

import torch

__all__ = ["BackgroundWriter", "snapshot_to_cpu"]


def snapshot_to_cpu(obj: Any, staging: dict[tuple, torch.Tensor] | None = None) -> Any:
    """A copy of ``obj`` whose tensors are detached CPU copies (dicts, lists, tuples recursed).

    What an asynchronous save writes: the training loop may change its own tensors (the next
    optimizer step) while the background thread is still writing the copy. With ``staging``
    (a dict the caller keeps between saves) the copies go into the buffers of the previous
    snapshot: the first touch of freshly allocated memory (page faults) often costs more than
    the copy itself. Buffers for CUDA tensors are pinned, for fast device-to-host copies.
    """
    used: set[tuple] = set()

    def copy(value: Any, key: tuple) -> Any:
        if isinstance(value, torch.Tensor):
            source = value.detach()
            if staging is None:
                return source.to("cpu", copy=True)
            used.add(key)
            buffer = staging.get(key)
            if buffer is None or buffer.shape != source.shape or buffer.dtype != source.dtype:
                pin = source.is_cuda and torch.cuda.is_available()
                buffer = torch.empty(source.shape, dtype=source.dtype, pin_memory=pin)
                staging[key] = buffer
            buffer.copy_(source)
            return buffer
        if isinstance(value, Mapping):
            return {k: copy(v, (*key, k)) for k, v in value.items()}
        if isinstance(value, list):
            return [copy(v, (*key, i)) for i, v in enumerate(value)]
        if isinstance(value, tuple):
            return tuple(copy(v, (*key, i)) for i, v in enumerate(value))
        return value

    result = copy(obj, ())
    if staging is not None:
        for key in [k for k in staging if k not in used]:
            del staging[key]
    return result


class BackgroundWriter:
    """Runs one write at a time in a thread; ``wait()`` joins it and raises its error, once.

    ``staging`` holds the CPU buffers of the last snapshot, reused by the next one (one
    state's worth of memory, kept between saves).
    """

    def __init__(self) -> None:
        self.staging: dict[tuple, torch.Tensor] = {}
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def start(self, write: Callable[[Any], None], state: Any, *, name: str) -> None:
        """Snapshot ``state`` to CPU (into ``staging``), then ``write(snapshot)`` in a thread.

        Returns once the snapshot is taken. Call ``wait()`` first: one write at a time.
        """
        snapshot = snapshot_to_cpu(state, self.staging)

        def run() -> None:
            try:
                write(snapshot)
            except BaseException as exc:  # raised by the next wait()
                self._error = exc

        self._thread = threading.Thread(target=run, name=name)
        self._thread.start()

    def join(self) -> None:
        """Block until the write in flight (if any) has finished; raise nothing."""
        if self._thread is not None:
            self._thread.join()

    def wait(self) -> None:
        """Block until the write in flight (if any) has finished; raise its error if it failed."""
        thread = self._thread
        if thread is not None:
            thread.join()
            self._thread = None
        error, self._error = self._error, None
        if error is not None:
            error.add_note("course_lib: raised by an earlier asynchronous save.")
            raise error
