"""Looking inside a model's ``state_dict``: a table of entries, and an interactive layer explorer."""

from __future__ import annotations

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
    import matplotlib.pyplot as plt

    names = list(model.state_dict())
    picker = widgets.Dropdown(options=names, value=names[0], description="entry")
    output = widgets.Output()

    def redraw(change: Any = None) -> None:
        with output:
            output.clear_output(wait=True)
            print(layer_summary(model, picker.value))
            plot_layer_histogram(model, picker.value)
            plt.show()

    picker.observe(redraw, names="value")
    redraw()
    return widgets.VBox([picker, output])
