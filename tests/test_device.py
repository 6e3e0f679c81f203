"""Device choice: CUDA, else MPS, else CPU; COURSE_DEVICE overrides; impossible choices explain."""

from __future__ import annotations

import pytest
import torch

from course_lib import device as dev


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv(dev.DEVICE_ENV_VAR, raising=False)


def test_prefers_cuda_when_available(no_env, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert dev.try_device() == torch.device("cuda")


def test_falls_back_to_mps_then_cpu(no_env, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(dev, "_mps_available", lambda: True)
    assert dev.try_device() == torch.device("mps")
    monkeypatch.setattr(dev, "_mps_available", lambda: False)
    assert dev.try_device() == torch.device("cpu")


def test_environment_variable_overrides(monkeypatch):
    monkeypatch.setenv(dev.DEVICE_ENV_VAR, "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert dev.try_device() == torch.device("cpu")


def test_explicit_argument_beats_environment(monkeypatch):
    monkeypatch.setenv(dev.DEVICE_ENV_VAR, "cuda")
    assert dev.try_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_asking_for_missing_cuda_names_the_fix(monkeypatch):
    monkeypatch.setenv(dev.DEVICE_ENV_VAR, "cuda")
    with pytest.raises(RuntimeError, match="COURSE_DEVICE='cuda'.*Unset COURSE_DEVICE"):
        dev.try_device()


def test_asking_for_a_cuda_index_beyond_the_count(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(RuntimeError, match=r"only 1 CUDA device"):
        dev.try_device("cuda:3")


def test_unknown_device_string_is_rejected(no_env):
    with pytest.raises(RuntimeError):
        dev.try_device("tpu")


def test_description_is_one_line_naming_device_and_source(monkeypatch):
    monkeypatch.setenv(dev.DEVICE_ENV_VAR, "cpu")
    line = dev.describe_device()
    assert "\n" not in line
    assert line.startswith("Running on device: cpu [CPU,")
    assert "set by COURSE_DEVICE" in line and torch.__version__ in line


def test_gpu_saved_file_needs_map_location_on_a_cpu_machine(tmp_path):
    path = tmp_path / "gpu.pth"
    dev.save_as_if_on_gpu({"w": torch.arange(3.0)}, path)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA device"):
            torch.load(path)
    loaded = torch.load(path, map_location="cpu")
    assert loaded["w"].device.type == "cpu" and torch.equal(loaded["w"], torch.arange(3.0))
    # The temporary tagger is gone: an ordinary save is tagged cpu again.
    torch.save({"w": torch.ones(1)}, tmp_path / "cpu.pth")
    assert torch.load(tmp_path / "cpu.pth")["w"].device.type == "cpu"
