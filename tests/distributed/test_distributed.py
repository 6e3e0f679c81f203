"""course_lib.distributed under real torchrun (gloo, CPU): elastic restarts, 2 nodes, resharding.

Each torchrun run starts fresh Python processes that import torch (about 8 s on 2 cores), so the
runs are shared where they can be: one uninterrupted run (module fixture) is the reference that the
killed-and-restarted run, the two-node run and the resharded loads are compared with, bit for bit.
The fault tests (a worker that raises, exits, hangs; a restart budget used up) are in
test_launcher_orphans.py, with the process-table checks.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from course_lib.distributed import (
    IncompleteStepError,
    check_step_folder,
    choose_backend,
    example_table,
    newest_complete_step,
    run_torchrun,
    save_step,
    step_folder,
    torchrun_command,
)
from course_lib.distributed.elastic_job import device_index_on_host, ranks_on_this_host
from course_lib.distributed.torchrun import host_layout_env
from course_lib.models import make_mlp
from course_lib.safe_io import safe_load

pytestmark = pytest.mark.slow  # ./course test --fast leaves it out

JOB = "course_lib.distributed.elastic_job"
STEPS = ["--steps", "12", "--save-every", "4"]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return safe_load(path, map_location="cpu")


def _bitwise_equal(a: Path, b: Path) -> bool:
    first, second = _weights(a), _weights(b)
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def _losses(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "losses.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    result = run_torchrun(JOB, ["--workdir", str(workdir), *STEPS], timeout=150)
    return workdir, result


@pytest.mark.timeout(200)
def test_an_uninterrupted_run_saves_complete_steps_and_its_weights(baseline):
    workdir, result = baseline
    assert result.job_lines() == [
        "[job] 2 workers (gloo) started from scratch",
        "[job] saved step 4",
        "[job] saved step 8",
        "[job] saved step 12",
        "[job] finished step 12; rank 0 wrote final.pth",
    ]
    folders = sorted(p.name for p in (workdir / "checkpoints").iterdir())
    assert folders == ["step_000004", "step_000008", "step_000012"]  # nothing left .incomplete
    for name in folders:
        check_step_folder(workdir / "checkpoints" / name)
        files = sorted(p.name for p in (workdir / "checkpoints" / name).iterdir())
        assert files == [".metadata", "__0_0.distcp", "__1_0.distcp"]  # one shard per rank
    assert [r["step"] for r in _losses(workdir)] == list(range(1, 13))
    make_mlp().load_state_dict(_weights(workdir / "final.pth"))


@pytest.mark.timeout(240)
def test_a_killed_worker_is_restarted_and_the_result_is_bitwise_the_same(baseline, tmp_path):
    """Rank 1 truncates its own shard of step 8, then SIGKILLs itself at step 10: torchrun
    restarts both workers, which refuse step 8, resume from step 4 and end with the same bits."""
    reference, _ = baseline
    result = run_torchrun(
        JOB,
        ["--workdir", str(tmp_path), *STEPS, "--fault", "corrupt-kill:1:10"],
        max_restarts=3,  # the first restart may fail in gloo's connectFullMesh (platform facts)
        timeout=200,
    )
    lines = result.job_lines()
    assert lines[:3] == ["[job] 2 workers (gloo) started from scratch"] + [
        f"[job] saved step {s}" for s in (4, 8)
    ]
    assert "[job] refused step 8: rank 1's shard __1_0.distcp is truncated" in "\n".join(lines), (
        lines
    )
    assert "[job] 2 workers resumed from step 4" in lines
    assert lines[-1] == "[job] finished step 12; rank 0 wrote final.pth"
    assert _bitwise_equal(tmp_path / "final.pth", reference / "final.pth")
    # The loss of every step, recomputed after the restart, is the first run's to the last bit.
    records = _losses(tmp_path)
    resumed = [r for r in records if r["attempt"] > 0]
    assert resumed[0]["step"] == 5 and resumed[-1]["step"] == 12
    first_run = {r["step"]: r["loss"] for r in _losses(reference)}
    assert all(r["loss"] == first_run[r["step"]] for r in records)
    check_step_folder(tmp_path / "checkpoints" / "step_000008")  # saved again, complete


@pytest.mark.timeout(200)
def test_two_nodes_of_one_process_each_give_the_same_bits(baseline, tmp_path):
    reference, _ = baseline
    result = run_torchrun(
        JOB, ["--workdir", str(tmp_path), *STEPS], nnodes=2, nproc_per_node=1, timeout=150
    )
    assert all("--rdzv-backend=c10d" in c and "--nnodes=2" in c for c in result.commands)
    # Both nodes run on this machine: NCCL only if it has a GPU for each of the 2 ranks.
    assert f"[job] 2 workers ({choose_backend(2)}) started from scratch" in result.job_lines()
    assert _bitwise_equal(tmp_path / "final.pth", reference / "final.pth")


@pytest.mark.timeout(240)
@pytest.mark.parametrize("ranks, rows", [(1, [8]), (3, [3, 3, 2])])
def test_a_checkpoint_of_two_ranks_loads_on_one_and_on_three(baseline, tmp_path, ranks, rows):
    reference, _ = baseline
    report = tmp_path / "report.json"
    run_torchrun(
        "course_lib.distributed.reshard_job",
        [
            "--checkpoint",
            str(step_folder(reference / "checkpoints", 12)),
            "--expect",
            str(reference / "final.pth"),
            "--report",
            str(report),
        ],
        nproc_per_node=ranks,
        timeout=150,
    )
    loaded = json.loads(report.read_text())
    assert loaded["world_size"] == ranks
    assert [r["table_rows"] for r in loaded["ranks"]] == rows  # 2 row blocks read as `ranks`
    for r in loaded["ranks"]:
        assert r["model_equal"] and r["table_equal"] and r["optimizer_step"] == 12


@pytest.mark.timeout(200)
def test_a_checkpoint_converts_to_one_torch_save_file(baseline, tmp_path):
    reference, _ = baseline
    dcp_to_torch_save(step_folder(reference / "checkpoints", 12), tmp_path / "full.pth")
    full = safe_load(tmp_path / "full.pth", map_location="cpu")
    assert set(full) == {"model", "optim", "table", "rng"}
    assert set(full["rng"]) == {"rank0", "rank1"}  # each rank's own RNG state
    assert not torch.equal(full["rng"]["rank0"], full["rng"]["rank1"])
    expected = _weights(reference / "final.pth")
    assert full["model"].keys() == expected.keys()
    assert all(torch.equal(full["model"][k], expected[k]) for k in expected)
    assert torch.equal(full["table"], example_table())


# ---- step folders, in this process (no torchrun: dcp.save runs without a process group) ----


@pytest.fixture
def two_steps(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "torch.distributed is disabled..."
        for step in (1, 2):
            save_step({"w": torch.full((64,), float(step))}, tmp_path, step)
    return tmp_path


def test_a_step_with_a_missing_shard_is_refused_and_the_previous_one_chosen(two_steps):
    (step_folder(two_steps, 2) / "__0_0.distcp").unlink()
    with pytest.raises(IncompleteStepError, match="rank 0's shard __0_0.distcp is missing") as e:
        check_step_folder(step_folder(two_steps, 2))
    assert "load the previous step" in str(e.value)
    choice = newest_complete_step(two_steps)
    assert (choice.step, choice.path) == (1, step_folder(two_steps, 1))
    assert choice.refused == [
        "step 2: rank 0's shard __0_0.distcp is missing (the metadata lists it)"
    ]


def test_a_truncated_shard_and_a_missing_metadata_are_refused(two_steps):
    shard = step_folder(two_steps, 2) / "__0_0.distcp"
    size = shard.stat().st_size
    with shard.open("r+b") as f:
        f.truncate(size - 10)
    with pytest.raises(IncompleteStepError, match=f"truncated: {size - 10} bytes, the metadata"):
        check_step_folder(step_folder(two_steps, 2))
    (step_folder(two_steps, 1) / ".metadata").unlink()
    with pytest.raises(IncompleteStepError, match="no .metadata file"):
        check_step_folder(step_folder(two_steps, 1))
    assert newest_complete_step(two_steps).step is None  # start from scratch


def test_an_unfinished_step_folder_is_never_chosen(two_steps):
    shutil.copytree(step_folder(two_steps, 2), two_steps / "step_000003.incomplete")
    assert newest_complete_step(two_steps).step == 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        save_step({"w": torch.zeros(64)}, two_steps, 3)
    assert not list(two_steps.glob("*.incomplete"))
    assert newest_complete_step(two_steps).step == 3


def test_commands_for_one_node_and_for_several():
    one = torchrun_command(JOB, ["--steps", "3"], nproc_per_node=2, max_restarts=3)
    assert one[1:] == [
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "--max-restarts=3",
        "-m",
        JOB,
        "--steps",
        "3",
    ]
    node = torchrun_command(JOB, [], nproc_per_node=1, nnodes=2, rdzv_endpoint="127.0.0.1:29500")
    assert "--standalone" not in node
    assert "--rdzv-endpoint=127.0.0.1:29500" in node and "--nnodes=2" in node


def test_backend_choice():
    expected = "nccl" if torch.cuda.device_count() >= 2 and dist.is_nccl_available() else "gloo"
    assert choose_backend(2) == expected


@pytest.mark.parametrize(
    "ranks_on_host, gpus, expected",
    [
        (1, 1, "nccl"),
        (2, 1, "gloo"),
        (2, 2, "nccl"),
        (3, 2, "gloo"),
        (1, 0, "gloo"),
        (4, 8, "nccl"),
    ],
)
def test_backend_choice_counts_the_ranks_of_every_node_on_this_machine(
    ranks_on_host, gpus, expected
):
    """NCCL only when every rank on the machine has a GPU of its own; shared GPUs mean gloo."""
    assert choose_backend(ranks_on_host, gpus, nccl_available=True) == expected
    assert choose_backend(ranks_on_host, gpus, nccl_available=False) == "gloo"


def test_two_one_rank_nodes_on_a_one_gpu_machine_use_gloo(monkeypatch):
    """What run_torchrun tells each node's workers: torchrun's LOCAL_WORLD_SIZE is 1 in both nodes,
    but the two ranks share this machine's one GPU (NCCL: "Duplicate GPU detected")."""
    for node in (0, 1):
        layout = host_layout_env(node, nnodes=2, nproc_per_node=1)
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
        monkeypatch.setenv("LOCAL_RANK", "0")
        for name, value in layout.items():
            monkeypatch.setenv(name, value)
        assert ranks_on_this_host() == 2
        assert choose_backend(gpus=1, nccl_available=True) == "gloo"
        assert choose_backend(gpus=2, nccl_available=True) == "nccl"
        assert device_index_on_host() == node  # with 2 GPUs: cuda:0 and cuda:1, not cuda:0 twice
    assert host_layout_env(1, nnodes=2, nproc_per_node=3) == {
        "COURSE_RANKS_ON_HOST": "6",
        "COURSE_HOST_RANK_OFFSET": "3",
    }


def test_without_run_torchrun_the_ranks_on_this_host_are_torchruns_local_world(monkeypatch):
    monkeypatch.delenv("COURSE_RANKS_ON_HOST", raising=False)
    monkeypatch.delenv("COURSE_HOST_RANK_OFFSET", raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert ranks_on_this_host() == 3 and device_index_on_host() == 2
    assert choose_backend(gpus=2, nccl_available=True) == "gloo"
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert ranks_on_this_host() == 1


@pytest.mark.timeout(200)
def test_the_async_save_benchmark_runs_under_torchrun(tmp_path):
    """A small run of benchmarks/bench_distributed.py: async_save beside training collectives
    must not hang (it needs a process group of its own), and it prints its ratio."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "benchmarks/bench_distributed.py", "--size-mb", "4", "--repeats", "1",
         "--dir", str(tmp_path), "--timeout", "150"],
        cwd=root, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ratio async/sync blocked:" in out.stdout
    assert not list(tmp_path.iterdir())  # its scratch folder is gone


def test_run_torchrun_tells_each_node_how_many_ranks_share_the_machine(monkeypatch):
    """The node processes run_torchrun starts get COURSE_RANKS_ON_HOST (all nodes' ranks) and
    their own GPU offset; torchrun itself is replaced by a process that exits at once."""
    import subprocess
    import sys

    import course_lib.distributed.torchrun as torchrun_module

    seen = []
    real_popen = subprocess.Popen

    def popen(command, *args, env=None, **kwargs):
        if "torch.distributed.run" in command:
            seen.append({k: env[k] for k in ("COURSE_RANKS_ON_HOST", "COURSE_HOST_RANK_OFFSET")})
            command = [sys.executable, "-c", "pass"]
        return real_popen(command, *args, env=env, **kwargs)

    monkeypatch.setattr(torchrun_module.subprocess, "Popen", popen)
    run_torchrun(JOB, [], nnodes=2, nproc_per_node=1, timeout=30)
    assert seen == [
        {"COURSE_RANKS_ON_HOST": "2", "COURSE_HOST_RANK_OFFSET": "0"},
        {"COURSE_RANKS_ON_HOST": "2", "COURSE_HOST_RANK_OFFSET": "1"},
    ]
