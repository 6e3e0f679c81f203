"""timing: inference latency as the median of many repeats after a warm-up."""

from __future__ import annotations

import pytest


def test_measure_latency_counts_calls_and_returns_medians():
    from course_lib.timing import measure_latency

    calls = []
    latency = measure_latency(calls.append, 1, warmup=2, repeats=5, number=3)
    assert len(calls) == 2 + 5 * 3
    assert latency.repeats == 5 and latency.number == 3
    assert 0 < latency.q1_s <= latency.median_s <= latency.q3_s
    assert "median of 5 x 3 calls" in str(latency)


def test_measure_latency_caps_repeats_for_slow_calls():
    import time

    from course_lib.timing import measure_latency

    latency = measure_latency(time.sleep, 0.02, warmup=0, repeats=100, max_seconds=0.05)
    assert latency.repeats == 5  # at least 5, not 100
    with pytest.raises(ValueError, match="repeats"):
        measure_latency(time.sleep, 0, repeats=0)
