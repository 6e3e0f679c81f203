"""safe_load: weights only, mapped to the chosen device, and a clear error for every bad file."""

from __future__ import annotations

import zipfile

import pytest
import torch
from torch import nn

from course_lib.device import save_as_if_on_gpu
from course_lib.models import MyModel, make_mlp
from course_lib.safe_io import (
    CheckpointDeviceError,
    CheckpointError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    ForeignFileError,
    UnsafeCheckpointError,
    safe_load,
)


@pytest.fixture
def good_file(tmp_path):
    path = tmp_path / "weights.pth"
    torch.manual_seed(0)
    torch.save(make_mlp().state_dict(), path)
    return path


def test_loads_a_state_dict_onto_the_requested_device(good_file):
    state = safe_load(good_file, map_location="cpu")
    model = make_mlp()
    model.load_state_dict(state)
    assert all(t.device.type == "cpu" for t in state.values())
    assert list(state) == ["0.weight", "0.bias", "2.weight", "2.bias"]


def test_default_map_location_is_the_course_device(good_file, monkeypatch):
    monkeypatch.setenv("COURSE_DEVICE", "cpu")
    save_as_if_on_gpu(torch.load(good_file), good_file)
    assert all(t.device.type == "cpu" for t in safe_load(good_file).values())


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_mapping_to_a_missing_gpu_is_explained(good_file):
    with pytest.raises(CheckpointDeviceError, match="map_location='cpu'") as info:
        safe_load(good_file, map_location="cuda:0")
    assert str(good_file) in str(info.value)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.pth"
    with pytest.raises(CheckpointNotFoundError, match="no such file") as info:
        safe_load(path)
    assert isinstance(info.value, FileNotFoundError)
    assert str(path) in str(info.value)


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="is a directory"):
        safe_load(tmp_path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pth"
    path.write_bytes(b"")
    with pytest.raises(CorruptCheckpointError, match=r"empty \(0 bytes\)") as info:
        safe_load(path)
    assert str(path) in str(info.value) and "How to fix" in str(info.value)


@pytest.mark.parametrize("keep", [0.02, 0.5, 0.9, -1])
def test_truncated_file(good_file, keep):
    data = good_file.read_bytes()
    cut = len(data) + keep if keep < 0 else int(len(data) * keep)
    good_file.write_bytes(data[:cut])
    with pytest.raises(CorruptCheckpointError, match="damaged or truncated") as info:
        safe_load(good_file)
    assert str(good_file) in str(info.value)


def test_damaged_pickle_inside_a_complete_archive(good_file, tmp_path):
    damaged = tmp_path / "damaged.pth"
    with zipfile.ZipFile(good_file) as src, zipfile.ZipFile(damaged, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith("data.pkl"):
                data = b"\x80\x02garbage" + data[20:]
            dst.writestr(item, data)
    with pytest.raises(CorruptCheckpointError, match="damaged") as info:
        safe_load(damaged)
    assert str(damaged) in str(info.value)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"epoch,loss\n1,0.5\n", "not a PyTorch checkpoint"),
        (b"\x89PNG\r\n\x1a\n" + bytes(100), "not a PyTorch checkpoint"),
    ],
)
def test_foreign_files(tmp_path, content, expected):
    path = tmp_path / "foreign.pth"
    path.write_bytes(content)
    with pytest.raises(ForeignFileError, match=expected):
        safe_load(path)


def test_a_zip_that_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "archive.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(ForeignFileError, match="zip archive but not a PyTorch checkpoint"):
        safe_load(path)


def test_safetensors_file_names_its_loader(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "weights.safetensors"
    save_file(make_mlp().state_dict(), path)
    with pytest.raises(ForeignFileError, match="safetensors.torch.load_file"):
        safe_load(path)


def test_torchscript_file_names_its_loader(tmp_path):
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.trace(make_mlp().eval(), torch.randn(2, 10)), path)
    with pytest.raises(ForeignFileError, match=r"torch.jit.load"):
        safe_load(path)


def test_exported_program_names_its_loader(tmp_path):
    path = tmp_path / "program.pt2"
    torch.export.save(torch.export.export(make_mlp().eval(), (torch.randn(2, 10),)), path)
    with pytest.raises(ForeignFileError, match=r"torch.export.load"):
        safe_load(path)


def test_legacy_format_still_loads(tmp_path):
    path = tmp_path / "legacy.pth"
    state = make_mlp().state_dict()
    torch.save(state, path, _use_new_zipfile_serialization=False)
    loaded = safe_load(path, map_location="cpu")
    assert all(torch.equal(loaded[k], state[k]) for k in state)


class _WritesMarker:
    """A checkpoint payload that, when unpickled, runs code: here it only writes a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('payload ran')",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "PAYLOAD_RAN"
    path = tmp_path / "innocent_looking.pth"
    torch.save({"weights": torch.ones(2), "extra": _WritesMarker(marker)}, path)
    with pytest.raises(UnsafeCheckpointError) as info:
        safe_load(path, map_location="cpu")
    assert info.value.unsafe_globals == ["builtins.exec"]
    assert "would call builtins.exec" in str(info.value)
    assert "treat the file as malicious" in str(info.value) and "do not load it" in str(info.value)
    assert not marker.exists()
    # The default torch.load refuses too; only the explicit opt-out runs the payload.
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)
    assert marker.read_text() == "payload ran"


def test_whole_model_pickle_names_the_classes_and_the_opt_in(tmp_path):
    path = tmp_path / "complete_model.pth"
    torch.save(MyModel(), path)
    with pytest.raises(UnsafeCheckpointError, match="allowed_globals") as info:
        safe_load(path, map_location="cpu")
    assert set(info.value.unsafe_globals) == {
        "course_lib.models.MyModel",
        "torch.nn.modules.linear.Linear",
    }
    with pytest.raises(UnsafeCheckpointError) as partly:
        safe_load(path, map_location="cpu", allowed_globals=[MyModel])
    assert partly.value.unsafe_globals == ["torch.nn.modules.linear.Linear"]
    model = safe_load(path, map_location="cpu", allowed_globals=iter([MyModel, nn.Linear]))
    assert isinstance(model, MyModel) and model(torch.ones(1, 10)).shape == (1, 5)


def test_every_error_is_a_checkpoint_error_with_problem_and_fix(tmp_path):
    path = tmp_path / "empty.pth"
    path.touch()
    with pytest.raises(CheckpointError) as info:
        safe_load(path)
    assert info.value.path == path and info.value.problem and info.value.fix


def _with_data_pkl(source, target, transform):
    """A copy of the torch.save archive ``source`` with its data.pkl (or tensor data) changed."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for item in src.infolist():
            dst.writestr(item, transform(item.filename, src.read(item)))
    return target


def test_sparse_tensor_with_out_of_range_indices_is_refused_not_a_crash(tmp_path):
    """The class of CVE-2025-62164: indices beyond the size used to reach .to_dense() and crash."""
    indices = torch.tensor([[0, 5_000_000]])
    bad = torch.sparse_coo_tensor(indices, torch.tensor([1.0, 2.0]), (3,), check_invariants=False)
    torch.save({"weights": bad}, tmp_path / "sparse.pth")
    with pytest.raises(CorruptCheckpointError, match="inconsistent with indices"):
        safe_load(tmp_path / "sparse.pth", map_location="cpu")


@pytest.mark.parametrize(
    ("opcode", "pickled"),
    [
        ("INST", b"(ios\nsystem\nS'id'\n."),
        ("OBJ", b"\x80\x02(cos\nsystem\nX\x02\x00\x00\x00ido."),
        ("STACK_GLOBAL", b"\x80\x04\x8c\x02os\x8c\x06system\x93\x8c\x02id\x85R."),
    ],
)
def test_pickles_that_import_by_other_opcodes_are_called_unsafe(
    good_file, tmp_path, opcode, pickled
):
    path = _with_data_pkl(good_file, tmp_path / f"{opcode}.pth",
                          lambda name, data: pickled if name.endswith("data.pkl") else data)  # fmt: skip
    with pytest.raises(UnsafeCheckpointError, match="os.system") as info:
        safe_load(path, map_location="cpu")
    assert "please file an issue" not in str(info.value).lower()


def test_flipped_bits_in_tensor_data_fail_the_crc_check(good_file, tmp_path):
    def flip(name, data):
        if "/data/" in name and data:
            data = bytearray(data)
            data[len(data) // 2] ^= 0x10
        return bytes(data)

    path = _with_data_pkl(good_file, tmp_path / "flipped.pth", flip)
    # writestr recomputes the CRC: restore the original CRCs so the flip is silent corruption.
    with zipfile.ZipFile(good_file) as original:
        crcs = {i.filename: i.CRC for i in original.infolist()}
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            for offset in (info.header_offset + 14,):
                raw[offset : offset + 4] = crcs[info.filename].to_bytes(4, "little")
    central = raw.rfind(b"PK\x05\x06")
    start = int.from_bytes(raw[central + 16 : central + 20], "little")
    position = start
    while raw[position : position + 4] == b"PK\x01\x02":
        name_len = int.from_bytes(raw[position + 28 : position + 30], "little")
        extra = int.from_bytes(raw[position + 30 : position + 32], "little")
        comment = int.from_bytes(raw[position + 32 : position + 34], "little")
        name = bytes(raw[position + 46 : position + 46 + name_len]).decode()
        raw[position + 16 : position + 20] = crcs[name].to_bytes(4, "little")
        position += 46 + name_len + extra + comment
    path.write_bytes(bytes(raw))
    assert torch.load(path, weights_only=True) is not None  # torch itself does not notice
    with pytest.raises(CorruptCheckpointError, match="CRC-32"):
        safe_load(path, map_location="cpu")


@pytest.mark.parametrize("seed", range(3))
def test_mutated_pickles_only_ever_raise_checkpoint_errors(good_file, tmp_path, seed):
    """Byte mutations of data.pkl: every failure is a CheckpointError, never a raw exception."""
    import random

    rng = random.Random(seed)
    with zipfile.ZipFile(good_file) as archive:
        pkl_name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
        original = archive.read(pkl_name)
    foreign = []
    for trial in range(150):
        data = bytearray(original)
        data[rng.randrange(len(data))] = rng.randrange(256)
        path = _with_data_pkl(good_file, tmp_path / f"m{trial}.pth",
                              lambda name, d, data=data: bytes(data) if name == pkl_name else d)  # fmt: skip
        try:
            safe_load(path, map_location="cpu")
        except CheckpointError:
            pass
        except Exception as exc:  # noqa: BLE001 - what this test looks for
            foreign.append(f"{type(exc).__name__}: {exc}"[:120])
        path.unlink()
    assert not foreign, foreign[:5]
