"""Files that run code when loaded (issue 18, items 3-5, 10-12): refused, or read without code.

Each hostile file is built here. Code that runs writes a marker (or overwrites a victim file);
every refusal is checked to leave it untouched, and to say what the file can do and how to
proceed (``trusted=True`` for a file you made).
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
from pathlib import Path

import pytest
import torch

from course_lib import export
from course_lib.errors import FileError
from course_lib.safe_io import CheckpointError


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def _payload(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _rewrite(source: Path, target: Path, replace: dict, add: dict | None = None) -> Path:
    """Copy a zip archive, replacing entries whose name ends with a key (bytes or a function)."""
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w") as zout:
        prefix = zin.namelist()[0].split("/", 1)[0]
        for info in zin.infolist():
            data = zin.read(info.filename)
            for suffix, new in replace.items():
                if info.filename.endswith(suffix):
                    data = new(data) if callable(new) else new
            zout.writestr(info.filename, data)
        for name, data in (add or {}).items():
            zout.writestr(f"{prefix}/{name}", data)
    return target


@pytest.fixture
def plain_pt2(tmp_path) -> Path:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2).eval()
    export.export_program(model, torch.randn(2, 3), tmp_path / "plain.pt2")
    return tmp_path / "plain.pt2"


def _hostile_sample_inputs(plain: Path, marker: Path) -> Path:
    inputs = ((torch.randn(2, 3), _RunsCode(marker)), {})
    return _rewrite(
        plain, plain.with_name("sample.pt2"), {"sample_inputs/model.pt": _payload(inputs)}
    )


def _hostile_pickled_weight(plain: Path, marker: Path) -> Path:
    def use_pickle(data: bytes) -> bytes:
        config = json.loads(data)
        for meta in config["config"].values():
            meta["use_pickle"] = True
        return json.dumps(config).encode()

    return _rewrite(
        plain,
        plain.with_name("pickled_weight.pt2"),
        {
            "model_weights_config.json": use_pickle,
            "data/weights/weight_0": _payload(_RunsCode(marker)),
        },
    )


def _with_native_library(plain: Path) -> Path:
    library = b"\x7fELF" + bytes(60)  # refused before anything tries to load it
    return _rewrite(
        plain, plain.with_name("aoti.pt2"), {}, {"data/aotinductor/model/model.wrapper.so": library}
    )


# ---- item 3: .pt2 programs ----------------------------------------------------------------------


def test_a_plain_program_loads_without_trust(plain_pt2):
    assert export.pt2_code_risks(plain_pt2) == []
    program = export.load_program(plain_pt2)
    module = export.exported_module(plain_pt2)
    x = torch.randn(4, 3)
    torch.testing.assert_close(program.module()(x), module(x))


@pytest.mark.parametrize("build", ["sample inputs", "pickled weight"])
def test_a_program_holding_a_pickle_is_refused_without_trust(plain_pt2, tmp_path, build):
    marker = tmp_path / "ran"
    if build == "sample inputs":
        path = _hostile_sample_inputs(plain_pt2, marker)
    else:
        path = _hostile_pickled_weight(plain_pt2, marker)
    for load in (export.load_program, export.exported_module):
        with pytest.raises(export.UntrustedCodeError, match="weights_only=True refuses") as error:
            load(path)
        assert "trusted=True" in error.value.fix
    with pytest.raises(export.UntrustedCodeError):
        export.run_in_fresh_process(path, torch.randn(2, 3))
    assert not marker.exists()


def test_torch_export_load_runs_the_pickle_when_trusted(plain_pt2, tmp_path):
    """The attack is real: what trusted=True lets through runs (so the refusal matters)."""
    marker = tmp_path / "ran"
    path = _hostile_sample_inputs(plain_pt2, marker)
    try:
        export.load_program(path, trusted=True)
    except Exception:  # noqa: BLE001 - the program may not work; the code ran before that
        pass
    assert marker.exists()


def test_a_program_with_a_native_library_is_refused_without_trust(plain_pt2):
    path = _with_native_library(plain_pt2)
    with pytest.raises(export.UntrustedCodeError, match="AOTInductor native code"):
        export.load_program(path)
    with pytest.raises(export.UntrustedCodeError, match="AOTInductor native code"):
        export.run_all_in_fresh_process([(path, torch.randn(2, 3))])


# ---- item 4: TorchScript ------------------------------------------------------------------------


class _OverwritesAFile(torch.nn.Module):
    """A scripted ``__setstate__`` that overwrites ``victim`` through ``torch.from_file``."""

    def __init__(self, victim: str) -> None:
        super().__init__()
        self.victim = victim
        self.seen = 0

    @torch.jit.export
    def __getstate__(self) -> tuple[str, bool]:
        return (self.victim, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, bool]) -> None:
        self.victim = state[0]
        self.training = state[1]
        mapped = torch.from_file(self.victim, shared=True, size=4, dtype=torch.uint8)
        mapped.fill_(66)
        self.seen = int(mapped.sum())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@pytest.fixture
def hostile_torchscript(tmp_path) -> tuple[Path, Path]:
    victim = tmp_path / "outside" / "victim.txt"
    victim.parent.mkdir()
    victim.write_bytes(b"AAAA")
    with export.ignore_jit_deprecation():
        scripted = torch.jit.script(_OverwritesAFile(str(victim)))
    victim.write_bytes(b"AAAA")
    path = tmp_path / "model.pt"
    with export.ignore_jit_deprecation():
        torch.jit.save(scripted, str(path))
    victim.write_bytes(b"AAAA")
    return path, victim


def test_torchscript_is_refused_without_trust(hostile_torchscript):
    path, victim = hostile_torchscript
    with pytest.raises(export.UntrustedCodeError, match="TorchScript") as error:
        export.load_torchscript(path)
    assert "trusted=True" in error.value.fix and "runs its code" in error.value.problem
    with pytest.raises(export.UntrustedCodeError):
        export.run_in_fresh_process(path, torch.randn(2, 3))
    assert victim.read_bytes() == b"AAAA"


def test_trusted_torchscript_loads_and_its_code_runs(hostile_torchscript):
    path, victim = hostile_torchscript
    module = export.load_torchscript(path, trusted=True)
    assert victim.read_bytes() == b"BBBB"  # why it needs trust: loading wrote a file elsewhere
    x = torch.randn(2, 3)
    assert torch.equal(module(x), x)


# ---- item 5: AOTInductor packages ---------------------------------------------------------------


def test_an_aotinductor_package_is_refused_without_trust(tmp_path):
    package = tmp_path / "model_aoti.pt2"
    package.write_bytes(b"PK\x05\x06" + bytes(18))  # never opened: refused on what it is
    with pytest.raises(export.UntrustedCodeError, match="shared library") as error:
        export.load_aoti_package(package)
    assert "trusted=True" in error.value.fix
    assert isinstance(error.value, FileError)  # a file the loader refuses: path, problem, fix


# ---- item 10: safetensors headers and tensor_state structures -----------------------------------


def _write_safetensors(path: Path, header: dict, data: bytes = b"") -> Path:
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


def test_a_shape_of_two_to_the_64_is_a_clear_error_in_every_safetensors_reader(tmp_path):
    from course_lib.big_models import load_big_model
    from course_lib.safe_io import load_safetensors
    from course_lib.tensor_state import load_state_safetensors

    header = {"x": {"dtype": "F32", "shape": [2**64 - 1, 0], "data_offsets": [0, 0]}}
    path = _write_safetensors(tmp_path / "huge.safetensors", header)

    def big_model(path: Path) -> None:  # opens the file before building anything on it
        load_big_model(lambda: torch.nn.Linear(1, 1), path)

    for load in (load_safetensors, big_model, load_state_safetensors):
        with pytest.raises(CheckpointError, match="not a readable safetensors file") as error:
            load(path)
        assert error.value.path == path


def _structure_file(path: Path, structure: str) -> Path:
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(path), metadata={"course_lib.structure": structure})
    return path


def test_a_structure_nested_900_deep_is_a_clear_error(tmp_path):
    from course_lib.tensor_state import load_state_safetensors

    deep = '{"__dict__": [["a", ' * 900 + "1" + "]]}" * 900
    path = _structure_file(tmp_path / "deep.safetensors", deep)
    with pytest.raises(CheckpointError, match="deeper than"):
        load_state_safetensors(path)


def test_five_mb_of_empty_lists_is_refused_within_twice_the_file_in_memory(tmp_path):
    import tracemalloc

    from course_lib.tensor_state import load_state_safetensors

    path = _structure_file(tmp_path / "lists.safetensors", "[" + ",".join(["[]"] * 1_700_000) + "]")
    size = path.stat().st_size
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match="more than twice the file"):
            load_state_safetensors(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert size > 5_000_000 and peak <= 2 * size  # parsed, the lists took 226 MB (44x)


def test_real_structures_still_load(tmp_path):
    from course_lib.tensor_state import load_state_safetensors, save_state_safetensors

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    state = {
        "model": model.state_dict(),
        "optim": optimizer.state_dict(),
        "history": [i / 7 for i in range(20_000)],
    }
    save_state_safetensors(state, tmp_path / "state.safetensors")
    loaded = load_state_safetensors(tmp_path / "state.safetensors")
    assert loaded["history"] == state["history"]
    assert loaded["optim"]["param_groups"] == state["optim"]["param_groups"]


def test_150000_empty_tensors_are_refused_before_they_are_built(tmp_path):
    from course_lib.safe_io import load_safetensors

    header = {
        f"t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(150_000)
    }
    path = _write_safetensors(tmp_path / "many.safetensors", header)
    with pytest.raises(CheckpointError, match="150,000 tensors"):
        load_safetensors(path)


# ---- item 11: sparse tensors on every loading path of load_memory --------------------------------


class _SparseHolder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("sp", torch.zeros(3))


@pytest.mark.parametrize("method", ["naive", "mmap", "meta + assign", "mmap + meta + assign"])
def test_a_sparse_tensor_with_an_index_out_of_range_is_refused_by_every_load(tmp_path, method):
    from course_lib.load_memory import _load

    bad = torch.sparse_coo_tensor(
        torch.tensor([[0, 7]]), torch.ones(2), (3,), check_invariants=False
    )  # index 7 in a tensor of 3: to_dense() writes out of bounds
    path = tmp_path / "sparse.pth"
    torch.save({"sp": bad}, path)
    with pytest.raises((RuntimeError, CheckpointError), match="(?i)index|invariant|bound"):
        _load(method, str(path), _SparseHolder)


# ---- item 12: hostile training checkpoints -------------------------------------------------------


def _training_checkpoint(tmp_path: Path, **changes: object) -> Path:
    from course_lib.checkpoint import build_checkpoint

    model = torch.nn.Linear(2, 2)
    checkpoint = build_checkpoint(model, torch.optim.SGD(model.parameters(), lr=0.1), epoch=1)
    checkpoint.update(changes)
    torch.save(checkpoint, tmp_path / "checkpoint.pth")
    return tmp_path / "checkpoint.pth"


def _load_into_fresh(path: Path) -> object:
    from course_lib.checkpoint import load_checkpoint

    model = torch.nn.Linear(2, 2)
    return load_checkpoint(path, model, torch.optim.SGD(model.parameters(), lr=0.1))


def test_an_rng_of_the_wrong_kind_is_a_clear_error(tmp_path):
    path = _training_checkpoint(tmp_path, rng={"torch": "x"})
    with pytest.raises(CheckpointError, match="'rng' cannot be restored") as error:
        _load_into_fresh(path)
    assert error.value.path == path


def test_an_optimizer_state_that_does_not_fit_is_a_clear_error(tmp_path):
    path = _training_checkpoint(
        tmp_path, optimizer_state_dict={"state": {}, "param_groups": [{"params": [5]}]}
    )
    with pytest.raises(CheckpointError) as error:
        _load_into_fresh(path)
    assert error.value.path == path


def _flip_in_zip_names(path: Path) -> None:
    """Flip the top bit of one byte of a member's name in the zip directory (the names are
    flagged UTF-8, so Python's zipfile raises UnicodeDecodeError on them)."""
    data = bytearray(path.read_bytes())
    where = data.rfind(b"data.pkl")
    data[where + 2] ^= 0x80
    data[where + 3] ^= 0x80
    path.write_bytes(bytes(data))


def test_bit_flips_in_the_archives_names_are_a_clear_error_everywhere(tmp_path):
    from course_lib.inspection import inspect_checkpoint
    from course_lib.safe_io import safe_load

    path = _training_checkpoint(tmp_path)
    _flip_in_zip_names(path)
    for load in (
        lambda: safe_load(path),
        lambda: _load_into_fresh(path),
        lambda: inspect_checkpoint(path),
    ):
        with pytest.raises(CheckpointError, match="damaged") as error:
            load()
        assert error.value.path == path


def test_a_manifest_best_entry_without_files_is_named_and_the_manifest_rebuilt(tmp_path):
    """It raised StopIteration; now it is a damaged manifest, handled as the manager handles
    every damaged manifest: kept aside, named in a warning, rebuilt from the files."""
    from course_lib.manager import CheckpointManager

    model = torch.nn.Linear(2, 2)
    manager = CheckpointManager(tmp_path / "run")
    manager.save(model, None, None, 1, {"val_loss": 0.5}, is_best=True)
    manifest = tmp_path / "run" / "manifest.json"
    document = json.loads(manifest.read_text())
    del document["best"]["files"]
    manifest.write_text(json.dumps(document))
    with pytest.warns(UserWarning, match="'best' lists no best_model file"):
        checkpoint = CheckpointManager(tmp_path / "run").load_best(model)
    assert checkpoint["epoch"] == 1
    assert (tmp_path / "run" / "manifest.json.damaged").exists()
