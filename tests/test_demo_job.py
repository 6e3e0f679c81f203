"""``demo_job.train_one_epoch``: one epoch of training and validation of the demo job."""

from __future__ import annotations

import math

import torch

from course_lib import demo_job


def test_one_epoch_trains_steps_the_scheduler_and_validates():
    job = demo_job.make_demo_job()
    before = [p.detach().clone() for p in job["model"].parameters()]
    val_loss = demo_job.train_one_epoch(job)
    assert isinstance(val_loss, float) and math.isfinite(val_loss) and val_loss > 0
    assert job["scheduler"].last_epoch == 1
    assert not job["model"].training, "validation runs in eval mode"
    after = list(job["model"].parameters())
    assert not any(torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_the_same_job_gives_the_same_bits():
    # make_demo_job re-seeds the global RNGs, which the epoch then draws from (shuffle, dropout)
    first = demo_job.make_demo_job()
    first_loss = demo_job.train_one_epoch(first)
    second = demo_job.make_demo_job()
    assert demo_job.train_one_epoch(second) == first_loss
    pairs = zip(first["model"].parameters(), second["model"].parameters(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
