"""distributed.loss_curves reads elastic_job's loss log and draws one line per attempt (no display).

The log is written here as elastic_job writes it (one JSON line per step and attempt; a restart
repeats the steps after the checkpoint it resumed from). Real logs are read in
notebooks/05b_torchrun_elastic.ipynb and checked in test_elastic_job.py.
"""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")

from course_lib.distributed.loss_curves import (  # noqa: E402
    LossRecord,
    plot_elastic_losses,
    read_losses,
)


def _log(folder, records):
    (folder / "losses.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def test_read_losses_keeps_the_order_written_with_repeated_steps(tmp_path):
    records = [
        {"attempt": 0, "step": 1, "loss": 0.9},
        {"attempt": 0, "step": 2, "loss": 0.7},
        {"attempt": 1, "step": 2, "loss": 0.7},  # resumed from step 1: step 2 again
    ]
    assert read_losses(_log(tmp_path, records)) == [LossRecord(**r) for r in records]


def test_one_line_for_the_straight_run_and_one_per_attempt_of_the_interrupted_one():
    straight = [LossRecord(0, step, 1 / step) for step in range(1, 7)]
    interrupted = straight[:4] + [LossRecord(1, step, 1 / step) for step in range(3, 7)]
    fig = plot_elastic_losses(straight, interrupted)
    ax = fig.axes[0]
    assert [list(line.get_xdata()) for line in ax.get_lines()] == [
        [1, 2, 3, 4, 5, 6],
        [1, 2, 3, 4],
        [3, 4, 5, 6],
    ]
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert labels == ["uninterrupted", "first attempt (killed)", "after restart 1"]
