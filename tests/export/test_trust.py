"""export.trust: files that run code when loaded (issue 18, items 3-5) are refused, or read
without running code.

Each hostile file is built here. Code that runs writes a marker (or overwrites a victim file);
every refusal is checked to leave it untouched, and to say what the file can do and how to
proceed (``trusted=True`` for a file you made). Moved from tests/test_hostile_formats.py, which
keeps issue 18's other items (safetensors headers, sparse tensors, training checkpoints).
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
import torch

from course_lib import export
from course_lib.errors import FileError


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
