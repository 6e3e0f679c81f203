"""course_lib.plots draws what it is given (no display needed)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

from course_lib.plots import plot_resume_curves, plot_save_costs  # noqa: E402


def test_resume_curves_start_the_unrestored_run_at_the_kill():
    straight = {"epoch": list(range(6)), "val_loss": [1.0, 0.5, 0.4, 0.3, 0.2, 0.1]}
    no_rng = {"epoch": list(range(6)), "val_loss": [1.0, 0.5, 0.4, 0.35, 0.25, 0.15]}
    fig = plot_resume_curves(straight, straight, no_rng, kill_after=4)
    lines = fig.axes[0].get_lines()
    assert [list(line.get_xdata()) for line in lines[:3]] == [
        list(range(6)),
        list(range(6)),
        [3, 4, 5],
    ]
    assert lines[3].get_xdata()[0] == 3.5  # the kill, between epochs 3 and 4


def test_save_costs_one_panel_per_state():
    ms = {
        "a": {"torch.save": 1.0, "torch.save + fsync": 2.0, "safe_save": 3.0},
        "b": {"torch.save": 1.0},
    }
    fig = plot_save_costs(ms)
    assert [ax.get_title() for ax in fig.axes] == ["a", "b"]
    assert [p.get_height() for p in fig.axes[0].patches] == [1.0, 2.0, 3.0]
