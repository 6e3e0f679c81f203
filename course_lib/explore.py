"""Looking inside a model's ``state_dict``: a table of entries, and an interactive layer explorer."""

from __future__ import annotations

import base64
import io
from typing import Any

from torch import nn

__all__ = [
    "layer_explorer",
    "layer_summary",
    "plot_layer_histogram",
    "state_dict_rows",
]


def state_dict_rows(model: nn.Module) -> list[dict[str, Any]]:
    """One row per ``state_dict`` entry: name, parameter or buffer, shape, element count, dtype.

    Taught in notebooks/01b_big_models.ipynb.
    """
    parameter_names = {name for name, _ in model.named_parameters()}
    return [
        {
            "name": name,
            "kind": "parameter" if name in parameter_names else "buffer",
            "shape": tuple(tensor.shape),
            "numel": tensor.numel(),
            "dtype": str(tensor.dtype).removeprefix("torch."),
        }
        for name, tensor in model.state_dict().items()
    ]


def layer_summary(model: nn.Module, name: str) -> str:
    """A few lines about one ``state_dict`` entry: shape, count, and value statistics.

    Taught in notebooks/01b_big_models.ipynb.
    """
    tensor = model.state_dict()[name]
    values = tensor.detach().float().cpu()
    lines = [f"{name}: shape {tuple(tensor.shape)}, {tensor.numel()} values, {tensor.dtype}"]
    if values.numel() > 1 and values.is_floating_point():
        lines.append(
            f"  mean {values.mean().item():+.4f}  std {values.std().item():.4f}  "
            f"min {values.min().item():+.4f}  max {values.max().item():+.4f}"
        )
    return "\n".join(lines)


def plot_layer_histogram(model: nn.Module, name: str, ax: Any = None) -> Any:
    """Draw a histogram of one entry's values on ``ax`` (a new figure when None); return the axes.

    Taught in notebooks/01b_big_models.ipynb.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3))
    values = model.state_dict()[name].detach().float().cpu().flatten().numpy()
    ax.hist(values, bins=30, color="tab:blue", alpha=0.8)
    ax.set_title(f"{name}  {tuple(model.state_dict()[name].shape)}")
    ax.set_xlabel("value")
    ax.set_ylabel("count")
    return ax


def layer_explorer(model: nn.Module) -> Any:
    """An ipywidgets panel: pick a ``state_dict`` entry, see its shape, count and a histogram.

    Taught in notebooks/01_state_dict.ipynb.
    """
    import ipywidgets as widgets

    names = list(model.state_dict())
    picker = widgets.Dropdown(options=names, value=names[0], description="entry")
    output = widgets.Output()

    def redraw(change: Any = None) -> None:
        # The outputs are set on the widget itself, in one assignment, from a figure that pyplot
        # never sees: a redraw runs in a widget callback, outside any cell, where capturing
        # plt.show() (pyplot's global figure list, the cell's message id) could lose the picture
        # to a cell that is plotting or closing figures at the same time.
        output.outputs = (
            {
                "output_type": "stream",
                "name": "stdout",
                "text": layer_summary(model, picker.value) + "\n",
            },
            _png_output(model, picker.value),
        )

    picker.observe(redraw, names="value")
    redraw()
    return widgets.VBox([picker, output])


def _png_output(model: nn.Module, name: str) -> dict[str, Any]:
    """One entry's histogram as a notebook display output (a PNG), drawn off pyplot."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 3))
    plot_layer_histogram(model, name, ax=figure.add_subplot())
    figure.tight_layout()
    png = io.BytesIO()
    figure.savefig(png, format="png")
    return {
        "output_type": "display_data",
        "data": {
            "image/png": base64.b64encode(png.getvalue()).decode("ascii"),
            "text/plain": f"<histogram of {name}>",
        },
        "metadata": {},
    }
