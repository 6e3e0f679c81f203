"""course_lib.distributed: the launcher, DDP save/load, and DCP checkpoints resharded (gloo, CPU).

Each launch starts fresh Python processes that import torch (several seconds each), so the suite
launches four times: DDP training + saving (shared by several tests), a 2-rank DCP load, a rank
that raises, and a rank that hangs. Every test has a pytest timeout on top of the launcher's own.
"""

from __future__ import annotations

import time

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from course_lib.distributed import (
    DistributedLaunchError,
    LaunchTimeoutError,
    choose_backend,
    dcp_load_on_ranks,
    ddp_train_and_save,
    example_table,
    free_port,
    launch,
    launch_ranks,
)
from course_lib.models import make_mlp
from course_lib.safe_io import safe_load
from course_lib.state_dict import inspect_checkpoint, load_state_dict_any_prefix


# Rank functions for the launcher's failure tests: module level, so the ranks can import them.
def fail_on_rank_zero(rank: int, world_size: int) -> str:
    if rank == 0:
        raise ValueError("boom on rank 0")
    time.sleep(600)  # a peer that would wait forever (as in a collective with a dead rank)
    return "never"


def hang(rank: int, world_size: int) -> None:
    print("rank function started", flush=True)
    time.sleep(600)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("ddp")
    results = launch(ddp_train_and_save, 2, args=(str(workdir),), timeout=120)
    return workdir, results


@pytest.mark.timeout(180)
def test_ddp_ranks_train_in_step_and_rank0_saves_for_everyone(trained):
    workdir, results = trained
    assert [r["rank"] for r in results] == [0, 1]
    assert all(r["device"] == "cpu" for r in results)
    # Each rank saw half the data; the all-reduced epoch losses are identical and decreasing.
    assert [r["samples_seen"] for r in results] == [384, 384]
    assert results[0]["losses"] == results[1]["losses"]
    assert results[0]["losses"] == sorted(results[0]["losses"], reverse=True)
    # Rank 0 wrote, every rank read it back after the barrier and found its own weights.
    assert all(r["reloaded_equal"] for r in results)
    assert [r["first_key_ddp"] for r in results] == ["module.0.weight"] * 2
    assert [r["first_key_get_state_dict"] for r in results] == ["0.weight"] * 2
    assert (workdir / "ddp_model.pth").exists()
    assert not list(workdir.glob("*.tmp"))


@pytest.mark.timeout(180)
def test_the_prefixed_ddp_file_loads_into_plain_and_wrapped_models(trained):
    workdir, _ = trained
    info = inspect_checkpoint(workdir / "ddp_model_prefixed.pth")
    assert info.prefixes == {"": "module."}
    expected = safe_load(workdir / "ddp_model.pth", map_location="cpu")
    prefixed = safe_load(workdir / "ddp_model_prefixed.pth", map_location="cpu")
    for wrap in (lambda m: m, torch.nn.DataParallel):
        model = make_mlp()
        assert load_state_dict_any_prefix(wrap(model), prefixed).ok
        assert all(torch.equal(expected[k], v) for k, v in model.state_dict().items())


@pytest.mark.timeout(180)
def test_dcp_checkpoint_is_written_by_both_ranks_and_sharded(trained):
    workdir, results = trained
    assert results[0]["dcp_files"] == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert [r["table_local_shape"] for r in results] == [(4, 6), (4, 6)]  # each rank: its rows
    assert all((workdir / "dcp" / name).stat().st_size > 0 for name in results[0]["dcp_files"])
    info = inspect_checkpoint(workdir / "dcp")
    by_key = {r["key"]: r for r in info.rows}
    assert by_key["model.0.weight"]["shape"] == "[20, 10]"
    assert by_key["table"]["chunks"] == 2  # saved as two pieces, one per rank


@pytest.mark.timeout(180)
@pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")
def test_dcp_checkpoint_of_two_ranks_loads_in_one_process(trained):
    workdir, results = trained
    assert not dist.is_initialized()
    model = make_mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model_sd, optim_sd = get_state_dict(model, optimizer)
    to_fill = {"model": model_sd, "optim": optim_sd, "table": torch.zeros(8, 6)}
    dcp.load(to_fill, checkpoint_id=workdir / "dcp", no_dist=True)
    set_state_dict(
        model, optimizer, model_state_dict=to_fill["model"], optim_state_dict=to_fill["optim"]
    )
    expected = safe_load(workdir / "ddp_model.pth", map_location="cpu")
    assert all(torch.equal(expected[k], v) for k, v in model.state_dict().items())
    assert torch.equal(to_fill["table"], example_table())  # both ranks' rows, reassembled
    step = optimizer.state_dict()["state"][0]["step"].item()
    assert step == results[0]["optimizer_step"] == 12


@pytest.mark.timeout(180)
def test_dcp_checkpoint_converts_to_one_ordinary_file(trained, tmp_path):
    workdir, _ = trained
    dcp_to_torch_save(workdir / "dcp", tmp_path / "full.pth")
    full = safe_load(tmp_path / "full.pth", map_location="cpu")
    assert set(full) == {"model", "optim", "table"}
    expected = safe_load(workdir / "ddp_model.pth", map_location="cpu")
    assert full["model"].keys() == expected.keys()
    assert all(torch.equal(full["model"][k], expected[k]) for k in expected)
    make_mlp().load_state_dict(full["model"])


@pytest.mark.timeout(180)
def test_dcp_checkpoint_loads_on_two_ranks_resharded(trained):
    workdir, _ = trained
    results = launch(dcp_load_on_ranks, 2, args=(str(workdir),), timeout=120)
    for r in results:
        assert r["params_equal"] and r["table_equal"]
        assert r["optimizer_step"] == 12
        assert r["table_local_shape"] == (8, 3)  # saved split by rows, loaded split by columns


@pytest.mark.timeout(120)
def test_a_rank_that_raises_is_reported_and_its_waiting_peer_killed():
    started = time.monotonic()
    with pytest.raises(DistributedLaunchError) as info:
        launch(fail_on_rank_zero, 2, timeout=90)
    assert time.monotonic() - started < 60  # stopped soon after the failure, not at the timeout
    assert not isinstance(info.value, LaunchTimeoutError)
    first, second = info.value.results
    assert (first.status, first.error) == ("error", "ValueError: boom on rank 0")
    assert "fail_on_rank_zero" in first.traceback
    assert second.status == "killed"
    assert "rank 0: error: ValueError: boom on rank 0" in str(info.value)
    assert "rank 1: killed" in str(info.value)


@pytest.mark.timeout(90)
def test_the_launcher_timeout_kills_a_hung_rank():
    with pytest.raises(LaunchTimeoutError) as info:
        launch(hang, 1, timeout=12)
    (result,) = info.value.results
    assert result.status == "timeout"
    assert "rank function started" in result.output  # it hung inside the function, not before
    assert "ran past 12 s" in str(info.value)


def test_a_function_defined_in_a_notebook_is_refused_before_launching():
    def local(rank, world_size):
        return rank

    with pytest.raises(ValueError, match="put the function in a .py file"):
        launch_ranks(local, 2)
    with pytest.raises(ValueError, match="put the function in a .py file"):
        launch_ranks(lambda rank, world_size: rank, 2)


def test_backend_and_port_choice():
    assert choose_backend(2) == ("nccl" if torch.cuda.device_count() >= 2 else "gloo")
    port = free_port()
    assert 1024 < port < 65536
