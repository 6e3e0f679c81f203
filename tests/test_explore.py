"""course_lib.explore: the state_dict table and the layer explorer, without a browser.

The explorer's redraw runs in a widget callback, outside any cell: what it shows must reach the
widget whatever pyplot's figure list or backend holds at that moment (tests/test_browser.py picks
an entry in a real JupyterLab).
"""

from __future__ import annotations

import base64

import matplotlib
import matplotlib.pyplot as plt
from torch import nn

from course_lib.explore import layer_explorer, layer_summary, state_dict_rows


def _bn_model() -> nn.Module:
    return nn.Sequential(nn.Linear(10, 20), nn.BatchNorm1d(20), nn.ReLU(), nn.Linear(20, 5))


def _shown(panel) -> tuple[str, list[bytes]]:
    """The text and the PNG images the explorer's output area holds."""
    output = panel.children[1]
    text = "".join(o.get("text", "") for o in output.outputs if o["output_type"] == "stream")
    images = [
        base64.b64decode(o["data"]["image/png"])
        for o in output.outputs
        if o["output_type"] == "display_data" and "image/png" in o["data"]
    ]
    return text, images


def test_picking_an_entry_shows_its_summary_and_one_histogram():
    matplotlib.use("agg")  # a backend whose plt.show() draws nothing
    panel = layer_explorer(_bn_model())
    text, images = _shown(panel)
    assert text.startswith("0.weight: shape (20, 10)"), text
    assert len(images) == 1 and images[0].startswith(b"\x89PNG"), panel.children[1].outputs

    panel.children[0].value = "1.running_var"
    text, images = _shown(panel)
    assert text.startswith("1.running_var: shape (20,), 20 values"), text
    assert len(images) == 1 and images[0].startswith(b"\x89PNG")


def test_the_explorer_leaves_pyplots_figures_alone():
    """A redraw while another figure is open (a cell still plotting) neither shows nor closes it."""
    theirs = plt.figure()
    before = plt.get_fignums()
    panel = layer_explorer(_bn_model())
    panel.children[0].value = "3.bias"
    assert plt.get_fignums() == before and plt.fignum_exists(theirs.number)
    plt.close(theirs)


def test_rows_and_summary_name_buffers_and_parameters():
    model = _bn_model()
    rows = {r["name"]: r for r in state_dict_rows(model)}
    assert rows["1.running_var"]["kind"] == "buffer" and rows["0.weight"]["kind"] == "parameter"
    assert layer_summary(model, "1.num_batches_tracked").startswith("1.num_batches_tracked")
