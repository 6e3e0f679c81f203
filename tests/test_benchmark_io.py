"""course_lib.benchmark_io: the conclusion 09 prints is read from the ratios of the run."""

from __future__ import annotations

import pytest
import torch

from course_lib.benchmark_io import SaveCosts, measure_save_costs


def _costs(fsync_ms: float, safe_ms: float) -> SaveCosts:
    return SaveCosts(
        {
            "32 MB state": {
                "torch.save": 30.0,
                "torch.save + fsync": fsync_ms,
                "safe_save": safe_ms,
            },
            "small MLP checkpoint": {
                "torch.save": 0.4,
                "torch.save + fsync": 0.5,
                "safe_save": 0.8,
            },
        }
    )


def test_fsync_that_returns_at_once_is_called_so():
    """The committed 09 showed fsync at 1.0x under prose that said fsync was most of the price."""
    text = _costs(fsync_ms=29.2, safe_ms=31.1).conclusion()
    assert "fsync cost 1.0x" in text and "returns from fsync at once" in text
    assert "most of the price" not in text


def test_fsync_that_waits_for_the_disk_is_most_of_the_price():
    text = _costs(fsync_ms=90.0, safe_ms=105.0).conclusion()
    assert "fsync is most of the price" in text and "3.0x" in text and "added 0.5x" in text
    assert "at once" not in text
    assert "small MLP checkpoint, safe_save took 0.8 ms (2.0x)" in text


def test_table_prints_each_ratio_to_plain_torch_save():
    table = _costs(fsync_ms=60.0, safe_ms=75.0).table().splitlines()
    assert table[0] == "32 MB state"
    assert table[2].split() == ["torch.save", "+", "fsync", "60.00", "ms", "(", "2.0x)"]


def test_a_real_measurement(tmp_path):
    costs = measure_save_costs({"tiny": {"w": torch.ones(10)}}, tmp_path, repeat=2)
    assert list(costs.ms["tiny"]) == ["torch.save", "torch.save + fsync", "safe_save"]
    assert all(ms > 0 for ms in costs.ms["tiny"].values())
    assert (tmp_path / "m.pth").exists()


def test_the_baseline_must_come_first(tmp_path):
    with pytest.raises(ValueError, match="baseline"):
        measure_save_costs({"tiny": {}}, tmp_path, methods={"other": torch.save})


def test_methods_take_turns_after_one_untimed_call_each(tmp_path):
    """A first call pays for imports and fresh pages, and a save that runs while the disk
    writes back an earlier one is slowed: so each method is called once untimed, then the
    methods take turns, round by round (09b once printed fsync at 0.4x plain torch.save)."""
    calls = []

    def recorder(name):
        return lambda obj, path: calls.append(name)

    methods = {"torch.save": recorder("plain"), "a": recorder("a"), "b": recorder("b")}
    measure_save_costs({"tiny": {}}, tmp_path, methods=methods, repeat=3)
    assert calls == ["plain", "a", "b"] * 4
