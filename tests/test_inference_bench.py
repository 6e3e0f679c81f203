"""course_lib.inference_bench: equal threads for every backend, one-off costs apart, honest takeaway.

The real backends are built once (a tiny CNN keeps torch.compile's compilation to seconds); the
takeaway's reading of numbers is checked on results built by hand, for each outcome it can state.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from course_lib import inference_bench
from course_lib.inference_bench import Backend, InferenceBenchmark, run_benchmark


def _tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten()
    ).eval()


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    model = _tiny_cnn()
    folder = tmp_path_factory.mktemp("bench")
    backends = inference_bench.make_backends(model, torch.randn(2, 3, 8, 8), folder, threads=1)
    result = run_benchmark(backends, (3, 8, 8), (1, 4), threads=1, rounds=1, repeats=3)
    return backends, result


def test_every_default_backend_agrees_with_eager(measured):
    _, result = measured
    assert list(result.latency_ms) == list(inference_bench.DEFAULT_BACKENDS)
    for name, diff in result.max_abs_diff.items():
        assert diff < 1e-5, f"{name} differs from eager by {diff}"
    assert all(set(row) == {1, 4} for row in result.latency_ms.values())


def test_compilation_is_reported_apart_from_steady_latency(measured):
    _, result = measured
    # torch.compile compiles at its first call with each batch size: that call is many times the
    # steady median, and it is what compile_seconds adds up.
    for batch in (1, 4):
        first_ms = result.first_call_s["torch.compile"][batch] * 1e3
        assert first_ms > 10 * result.latency_ms["torch.compile"][batch]
    assert result.compile_seconds() >= sum(result.first_call_s["torch.compile"].values())


def test_onnxruntime_session_gets_the_same_thread_count(measured):
    backends, _ = measured
    session = backends["onnxruntime"].fn.__self__.session  # the OnnxModel's session
    assert session.get_session_options().intra_op_num_threads == 1


def test_every_backend_is_timed_with_the_requested_threads():
    # Before, the benchmark left PyTorch at its default (2 here) unless --threads was given.
    seen: list[int] = []

    def spy(x):
        seen.append(torch.get_num_threads())
        return x

    before = torch.get_num_threads()
    backends = {
        "eager": Backend("eager", spy, False, 0.0),
        "other": Backend("other", spy, False, 0.0),
    }
    threads = 1 if before != 1 else 2
    run_benchmark(backends, (2,), (1, 3), threads=threads, rounds=1, repeats=2)
    assert seen and set(seen) == {threads}
    assert torch.get_num_threads() == before  # restored afterwards


def _result(latency, first=None, setup=None) -> InferenceBenchmark:
    batches = (1, 64)
    first = first or {name: dict.fromkeys(batches, 0.0) for name in latency}
    setup = setup or dict.fromkeys(latency, 0.0)
    return InferenceBenchmark(1, (3, 32, 32), batches, latency, setup, first)


def test_takeaway_names_the_winner_of_each_batch():
    result = _result(
        {
            "eager": {1: 0.30, 64: 12.0},
            "onnxruntime": {1: 0.05, 64: 3.0},
            "torch.compile": {1: 0.35, 64: 2.0},
        },
        first={
            "eager": {1: 0.0, 64: 0.0},
            "onnxruntime": {1: 0.0, 64: 0.0},
            "torch.compile": {1: 8.0, 64: 2.0},
        },
        setup={"eager": 0.0, "onnxruntime": 1.0, "torch.compile": 0.5},
    )
    said = result.takeaway()
    assert said[0] == "batch 1: onnxruntime was fastest here, 0.050 ms, 6.0x eager."
    assert said[1] == "batch 64: torch.compile was fastest here, 2.000 ms, 6.0x eager."
    # 10.5 s of compiling saves 10 ms a call at batch 64: 1,050 calls to pay back
    assert "spent 10.5 s compiling" in said[2] and "about 1,050 calls" in said[2]
    assert "batch 64" in result.table().splitlines()[0]


def test_takeaway_says_so_when_eager_wins_and_compiling_never_pays():
    result = _result(
        {"eager": {1: 0.10, 64: 2.0}, "torch.compile": {1: 0.20, 64: 2.5}},
    )
    said = result.takeaway()
    assert said[0] == "batch 1: eager PyTorch was fastest here (0.100 ms)."
    assert "never pays back" in said[2]


def test_unknown_backend_and_missing_eager_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown backends \\['TensorRT'\\]"):
        inference_bench.make_backends(
            _tiny_cnn(), torch.randn(2, 3, 8, 8), tmp_path, threads=1, names=["TensorRT"]
        )
    with pytest.raises(ValueError, match="include the 'eager' backend"):
        run_benchmark({}, (2,), (1,), threads=1)


def test_eager_hotspots_share_the_whole_time():
    shares = inference_bench.eager_hotspots(_tiny_cnn(), torch.randn(4, 3, 8, 8), threads=1, top=10)
    names = [name for name, _ in shares]
    assert set(names) == {"Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d", "Flatten"}
    assert sum(share for _, share in shares) == pytest.approx(1.0)
    assert [s for _, s in shares] == sorted((s for _, s in shares), reverse=True)


def test_benchmark_script_prints_threads_table_and_conclusion(capsys):
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_inference.py"
    spec = importlib.util.spec_from_file_location("bench_inference", script)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    argv = ["--sizes", "8", "--batches", "1", "2", "--backends", "onnxruntime"]
    assert bench.main([*argv, "--rounds", "1", "--repeats", "2", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "every backend runs with 1 thread(s)" in out
    assert "eager " in out and "onnxruntime " in out  # eager is always the baseline
    assert "batch 1: " in out and "batch 2: " in out and "fastest here" in out
    assert "where eager spends its time at batch 2:" in out
