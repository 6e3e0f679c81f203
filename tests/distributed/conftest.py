"""Fixtures shared by the distributed tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def elastic_baseline(tmp_path_factory):
    """One uninterrupted two-rank run of ``course_lib.distributed.elastic_job`` under torchrun
    (test_elastic_job.py's ``STEPS``: 12 steps, a step folder every 4): its workdir and result.
    Every torchrun run starts Python processes that import torch, so test_elastic_job.py (the
    reference that the restarted, two-node and resharded runs are compared with) and
    test_safe_dcp.py (step 8, converted and then refused) share it, in one xdist group
    (``elastic-baseline``); tests copy what they change."""
    from test_elastic_job import JOB, STEPS

    from course_lib.distributed import run_torchrun

    workdir = tmp_path_factory.mktemp("uninterrupted")
    result = run_torchrun(JOB, ["--workdir", str(workdir), *STEPS], timeout=150)
    return workdir, result
