"""Progress bars whose last state is what a saved notebook shows.

tqdm's notebook widget stores, as the text a saved notebook falls back to, the bar as it was when
it first appeared (``0%`` or, on a resumed run, ``42%``): a committed notebook then shows a run
that looks hung. In a Jupyter kernel, ``epoch_bar`` shows tqdm's text bar through one display
that each update replaces (``display_id``), so JupyterLab shows it live and the saved notebook
holds its final state; elsewhere (a terminal, a script) it is tqdm's usual text bar.
Taught in notebooks/03b_resume_in_depth.ipynb, step 3.
"""

from __future__ import annotations

import io
from typing import Any

from tqdm.std import tqdm

__all__ = ["epoch_bar", "in_kernel"]


def in_kernel() -> bool:
    """Whether this code runs in a Jupyter kernel (where output is displayed, not a terminal).

    Used by ``epoch_bar``; not taught in a notebook.
    """
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


class _DisplayedBar(tqdm):
    """tqdm's text bar, shown through one updatable display instead of a terminal's ``\\r``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._handle: Any = None
        # tqdm's own terminal writes (the final newline) go nowhere; the display shows the bar.
        kwargs["file"] = io.StringIO()
        super().__init__(*args, **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        from IPython.display import display

        text = self.__str__() if msg is None else msg
        if not text:  # tqdm clears a bar with an empty message; keep its last state instead
            return True
        bundle = {"text/plain": text}
        if self._handle is None:
            self._handle = display(bundle, raw=True, display_id=True)
        else:
            self._handle.update(bundle, raw=True)
        return True


def epoch_bar(total: int, *, initial: int = 0, desc: str = "epochs", unit: str = "epoch") -> tqdm:
    """A tqdm bar over ``total`` steps, starting at ``initial``; ``write()`` prints above it.

    Used by ``train_with_checkpoint`` (``progress=True``, also through
    ``demo_job.demo_training``); not taught in a notebook.
    """
    if in_kernel():
        return _DisplayedBar(total=total, initial=initial, desc=desc, unit=unit)
    return tqdm(total=total, initial=initial, desc=desc, unit=unit)
