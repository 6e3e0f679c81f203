"""What notebook 09b says about a flipped bit matches what its own cell does."""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import build_notebooks  # noqa: E402

SOURCE = ROOT / "nbsrc" / "notebooks" / "09b_durability_in_depth.py"


def test_the_flipped_bit_is_named_as_the_part_of_the_float_it_is(tmp_path):
    cells = build_notebooks.parse_source(SOURCE.read_text())
    flip = next(body for kind, body, _ in cells if kind == "code" and "^= 0x40" in body)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(flip, SOURCE.name, "exec"), {"torch": torch, "workdir": tmp_path})
    changed = torch.load(tmp_path / "flipped.pth", weights_only=True)["weights"][500]
    bits = torch.tensor(500.0).view(torch.int32) ^ changed.view(torch.int32)
    bit = int(bits).bit_length() - 1
    assert int(bits) == 1 << bit, "more than one bit changed"
    part = "mantissa" if bit < 23 else "exponent" if bit < 31 else "sign"
    # The prose and comments around the cell name the same part, never another one.
    text = "\n".join(body for _, body, _ in cells)
    around = text[text.index("^= 0x40") - 600 : text.index("^= 0x40") + 1200]
    wrong = {"mantissa", "exponent", "sign"} - {part}
    assert not [w for w in wrong if f"bit of its {w}" in around or f"bit of the {w}" in around]
    assert part in printed.getvalue() and f"{changed.item()}" in printed.getvalue()
