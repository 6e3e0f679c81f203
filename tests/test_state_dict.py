"""course_lib.state_dict: partial loading, renaming, wrapper prefixes, inspecting files."""

from __future__ import annotations

import ast
import inspect
import logging
from collections import OrderedDict

import pytest
import torch
from torch import nn

from course_lib.inspection import inspect_checkpoint
from course_lib.models import SmallCNN, make_mlp
from course_lib.prefixes import (
    add_module_prefix,
    detect_wrapper_prefix,
    load_state_dict_any_prefix,
    remove_module_prefix,
    unwrap_model,
)
from course_lib.state_dict import (
    LoadReport,
    StateDictMismatchError,
    load_partial_state_dict,
    rename_state_dict_keys,
)


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy: nn.DataParallel moves its module to cuda:0 when there is a GPU, so the same
    test compares a wrapped (GPU) model with a plain (CPU) one."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    # On one device: wrapping in nn.DataParallel moves a model to the GPU when there is one.
    return a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


def test_the_comparison_moves_both_sides_to_one_device():
    # Without a GPU the mix cannot be made here; what makes it safe is the code itself.
    call = next(
        node
        for node in ast.walk(ast.parse(inspect.getsource(_equal)))
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "equal"
    )
    assert [ast.unparse(arg) for arg in call.args] == ["a[k].cpu()", "b[k].cpu()"]


class Old(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.fc2 = nn.Linear(8, 2)


class New(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Module()
        self.encoder.fc1 = nn.Linear(4, 8)
        self.decoder = nn.Module()
        self.decoder.fc2 = nn.Linear(8, 2)


# ------------------------------------------------------------------ partial loading


def test_transfer_learning_loads_the_backbone_and_reports_the_head():
    torch.manual_seed(0)
    pretrained = SmallCNN(num_classes=10)
    target = SmallCNN(num_classes=3)
    head_before = target.classifier[2].weight.clone()

    report = load_partial_state_dict(target, pretrained.state_dict())

    assert isinstance(report, LoadReport)
    assert report.applied and not report.ok
    backbone = [k for k in pretrained.state_dict() if k.startswith("features.")]
    assert report.loaded == backbone
    assert report.shape_mismatched == [
        ("classifier.2.weight", (10, 512), (3, 512)),
        ("classifier.2.bias", (10,), (3,)),
    ]
    assert report.missing == [] and report.unexpected == []
    assert report.skipped == ["classifier.2.weight", "classifier.2.bias"]
    for key in backbone:  # the backbone, BatchNorm buffers included, came across
        assert torch.equal(target.state_dict()[key], pretrained.state_dict()[key])
    assert torch.equal(target.classifier[2].weight, head_before)  # the new head was kept
    assert "loaded 14/16" in report.summary()
    assert "classifier.2.weight [10, 512] vs model [3, 512]" in report.summary()


def test_missing_and_unexpected_keys_are_reported_and_rows_cover_every_key():
    model = make_mlp()
    state = make_mlp().state_dict()
    state.pop("2.bias")
    state["extra.weight"] = torch.zeros(3)
    report = load_partial_state_dict(model, state)
    assert report.loaded == ["0.weight", "0.bias", "2.weight"]
    assert report.missing == ["2.bias"]
    assert report.unexpected == ["extra.weight"]
    rows = report.rows()
    assert {r["key"]: r["status"] for r in rows} == {
        "0.weight": "loaded",
        "0.bias": "loaded",
        "2.weight": "loaded",
        "2.bias": "missing",
        "extra.weight": "unexpected",
    }
    assert [r["key"] for r in report.rows(include_loaded=False)] == ["2.bias", "extra.weight"]
    table = report.table()
    assert table.splitlines()[0].split() == ["key", "status", "checkpoint", "model"]
    assert "extra.weight" in table


def test_partial_load_warns_when_it_skips_something(caplog):
    with caplog.at_level(logging.WARNING, logger="course_lib.state_dict"):
        load_partial_state_dict(SmallCNN(3), SmallCNN(10).state_dict())
    assert "shape-mismatched" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="course_lib.state_dict"):
        report = load_partial_state_dict(make_mlp(), make_mlp().state_dict())
    assert report.ok and caplog.text == ""


def test_strict_raises_with_the_report_and_loads_nothing():
    target = SmallCNN(num_classes=3)
    before = _snapshot(target)
    with pytest.raises(StateDictMismatchError) as info:
        load_partial_state_dict(target, SmallCNN(num_classes=10).state_dict(), strict=True)
    assert _equal(_snapshot(target), before)  # not even the matching backbone was loaded
    report = info.value.report
    assert not report.applied
    assert [k for k, _, _ in report.shape_mismatched] == [
        "classifier.2.weight",
        "classifier.2.bias",
    ]
    assert "strict=False" in str(info.value)


def test_strict_load_of_a_matching_state_dict_loads_everything():
    source, target = make_mlp(), make_mlp()
    report = load_partial_state_dict(target, source.state_dict(), strict=True)
    assert report.ok and report.applied
    assert _equal(_snapshot(target), _snapshot(source))


def test_a_whole_checkpoint_instead_of_a_state_dict_is_refused_before_loading():
    model = make_mlp()
    before = _snapshot(model)
    state = dict(make_mlp().state_dict())
    state["0.bias"] = 3  # e.g. {'epoch': 3, ...} passed where the weights were meant
    with pytest.raises(TypeError, match="not a tensor"):
        load_partial_state_dict(model, state)
    assert _equal(_snapshot(model), before)


def test_a_failure_while_copying_restores_what_was_already_copied():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    before = _snapshot(model)

    def explode(*args, **kwargs):
        raise MemoryError("simulated failure while copying the second layer")

    model[
        1
    ]._load_from_state_dict = (
        explode  # layer 0 is copied first, then layer 1 fails are copied first, then b fails
    )
    with pytest.raises(MemoryError):
        load_partial_state_dict(model, nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)).state_dict())
    assert _equal(_snapshot(model), before)


def test_partial_load_passes_metadata_through():
    seen = []

    class Recorder(nn.Linear):
        def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args):
            seen.append(local_metadata)
            super()._load_from_state_dict(state_dict, prefix, local_metadata, *args)

    state = nn.Sequential(nn.Linear(2, 2)).state_dict()
    state._metadata["0"] = {"version": 7}
    load_partial_state_dict(nn.Sequential(Recorder(2, 2)), state)
    assert seen == [{"version": 7}]


# ------------------------------------------------------------------ renaming


def test_rename_exact_mapping_as_in_the_chapter_keeps_metadata():
    state = Old().state_dict()
    mapping = {
        "fc1.weight": "encoder.fc1.weight",
        "fc1.bias": "encoder.fc1.bias",
        "fc2.weight": "decoder.fc2.weight",
        "fc2.bias": "decoder.fc2.bias",
    }
    renamed = rename_state_dict_keys(state, mapping)
    assert list(renamed) == list(mapping.values())
    assert renamed["encoder.fc1.weight"] is state["fc1.weight"]  # shared, not copied
    assert set(renamed._metadata) == {"", "encoder.fc1", "decoder.fc2"}
    New().load_state_dict(renamed)  # strict: every key matches


def test_rename_with_prefix_rules_and_longest_prefix_wins():
    state = Old().state_dict()
    renamed = rename_state_dict_keys(
        state, prefixes={"fc": "x.", "fc1.": "encoder.fc1.", "fc2.": "decoder.fc2."}
    )
    assert list(renamed) == [
        "encoder.fc1.weight",
        "encoder.fc1.bias",
        "decoder.fc2.weight",
        "decoder.fc2.bias",
    ]
    assert set(renamed._metadata) == {"", "encoder.fc1", "decoder.fc2"}


def test_rename_with_regex_and_exact_rules_taking_precedence():
    state = OrderedDict(
        (k, torch.zeros(1)) for k in ["layer1.weight", "layer2.weight", "layer2.bias", "head.w"]
    )
    renamed = rename_state_dict_keys(
        state, {"layer2.bias": "special.bias"}, patterns=[(r"^layer(\d+)\.", r"blocks.\1.")]
    )
    assert list(renamed) == ["blocks.1.weight", "blocks.2.weight", "special.bias", "head.w"]


def test_rename_refuses_two_keys_becoming_one_and_names_both():
    state = Old().state_dict()
    with pytest.raises(ValueError, match=r"'fc1\.weight' and 'fc2\.weight' would both become"):
        rename_state_dict_keys(state, patterns=[(r"^fc\d", "fc")])
    with pytest.raises(ValueError, match=r"'fc1\.bias' and 'fc2\.bias'"):
        rename_state_dict_keys(state, {"fc1.bias": "fc2.bias"})  # onto a key that stays


def test_rename_moves_container_metadata_by_prefix():
    model = nn.Sequential(OrderedDict(layers=nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))))
    renamed = rename_state_dict_keys(model.state_dict(), prefixes={"layers.": "blocks."})
    assert list(renamed._metadata) == ["", "blocks", "blocks.0", "blocks.1"]


def test_chapter_rename_drops_metadata_ours_does_not():
    def chapter_rename(state_dict, key_mapping):
        new_state_dict = {}
        for k, v in state_dict.items():
            new_state_dict[key_mapping.get(k, k)] = v
        return new_state_dict

    state = Old().state_dict()
    assert not hasattr(chapter_rename(state, {}), "_metadata")
    assert hasattr(rename_state_dict_keys(state, {}), "_metadata")


# ------------------------------------------------------------------ wrapper prefixes


def test_dataparallel_prefix_is_removed_and_metadata_follows():
    model = make_mlp()
    wrapped = nn.DataParallel(model).state_dict()  # runs on CPU: DataParallel falls through
    assert list(wrapped)[0] == "module.0.weight"
    plain = remove_module_prefix(wrapped)
    assert list(plain) == list(model.state_dict())
    assert list(plain._metadata) == list(model.state_dict()._metadata)
    make_mlp().load_state_dict(plain)


def test_add_module_prefix_is_the_inverse():
    model = make_mlp()
    wrapped = nn.DataParallel(model).state_dict()
    rebuilt = add_module_prefix(remove_module_prefix(wrapped))
    assert list(rebuilt) == list(wrapped)
    assert list(rebuilt._metadata) == [k for k in wrapped._metadata if k]
    nn.DataParallel(make_mlp()).load_state_dict(rebuilt)
    with pytest.raises(ValueError, match="must end with '.'"):
        add_module_prefix(wrapped, "module")


def test_ddp_prefix_is_the_same_module_prefix():
    # A DDP model's keys (measured in tests/distributed/test_elastic_job.py) are 'module.' + the
    # plain keys.
    plain = make_mlp().state_dict()
    assert list(remove_module_prefix(add_module_prefix(plain))) == list(plain)


def test_compile_and_nested_prefixes():
    model = make_mlp()
    compiled = torch.compile(model)  # only wraps; compilation would happen on the first call
    keys = list(compiled.state_dict())
    assert keys[0] == "_orig_mod.0.weight"
    assert list(remove_module_prefix(compiled.state_dict())) == list(model.state_dict())
    nested = nn.DataParallel(compiled).state_dict()  # DP(compile(model))
    assert list(nested)[0] == "module._orig_mod.0.weight"
    assert detect_wrapper_prefix(nested) == "module._orig_mod."
    stripped = remove_module_prefix(nested)
    assert list(stripped) == list(model.state_dict())
    assert list(stripped._metadata) == list(model.state_dict()._metadata)
    assert unwrap_model(nn.DataParallel(compiled)) is model
    other = make_mlp()
    load_state_dict_any_prefix(nn.DataParallel(torch.compile(other)), model.state_dict())
    assert _equal(_snapshot(other), _snapshot(model))


@pytest.mark.parametrize(
    "key", ["modules_list.0.weight", "module_norm.weight", "module", "modulex.weight"]
)
def test_keys_that_merely_start_with_module_are_never_truncated(key):
    state = OrderedDict([(key, torch.zeros(1)), ("module.fc.weight", torch.zeros(1))])
    assert list(remove_module_prefix(state)) == [key, "module.fc.weight"]
    alone = OrderedDict([(key, torch.zeros(1))])
    assert list(remove_module_prefix(alone)) == [key]
    wrapped = add_module_prefix(alone)
    assert list(remove_module_prefix(wrapped)) == [key]


def test_a_real_submodule_called_module_is_not_a_wrapper_prefix():
    class Holder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.module = nn.Linear(2, 2)  # every key starts with 'module.'

    source, target = Holder(), Holder()
    load_state_dict_any_prefix(target, source.state_dict())  # matched as is: not stripped
    assert _equal(_snapshot(target), _snapshot(source))
    load_state_dict_any_prefix(nn.DataParallel(target), add_module_prefix(Holder().state_dict()))


def test_one_helper_loads_every_combination():
    source = make_mlp()
    plain, prefixed = source.state_dict(), nn.DataParallel(source).state_dict()
    for state in (plain, prefixed):
        for wrap in (lambda m: m, nn.DataParallel):
            target = make_mlp()
            report = load_state_dict_any_prefix(wrap(target), state)
            assert report.ok
            assert report.stripped_prefix == ("module." if state is prefixed else "")
            assert _equal(_snapshot(target), _snapshot(source))


def test_one_helper_is_strict_by_default_and_loads_nothing_on_mismatch():
    target = nn.DataParallel(SmallCNN(3))
    before = _snapshot(target)
    with pytest.raises(StateDictMismatchError):
        load_state_dict_any_prefix(target, nn.DataParallel(SmallCNN(10)).state_dict())
    assert _equal(_snapshot(target), before)
    report = load_state_dict_any_prefix(
        target, nn.DataParallel(SmallCNN(10)).state_dict(), strict=False
    )
    assert len(report.loaded) == 14 and len(report.shape_mismatched) == 2


def test_the_chapter_snippet_fails_on_the_still_wrapped_model():
    model = nn.DataParallel(make_mlp())
    state = {k[7:] if k.startswith("module.") else k: v for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="Missing key"):
        model.load_state_dict(state)


# ------------------------------------------------------------------ inspect_checkpoint


def test_inspect_a_plain_and_a_prefixed_state_dict(tmp_path):
    model = SmallCNN(3)
    torch.save(model.state_dict(), tmp_path / "plain.pth")
    info = inspect_checkpoint(tmp_path / "plain.pth")
    assert [r["key"] for r in info.rows] == list(model.state_dict())
    first = info.rows[0]
    assert (first["shape"], first["dtype"], first["numel"], first["bytes"]) == (
        "[16, 3, 3, 3]",
        "float32",
        432,
        1728,
    )
    assert info.prefixes == {"": ""}
    assert info.num_tensors == 16
    assert info.num_elements == sum(v.numel() for v in model.state_dict().values())
    assert "no wrapper prefix" in info.summary()
    assert "num_batches_tracked" in info.table() and "int64" in info.table()

    torch.save(nn.DataParallel(model).state_dict(), tmp_path / "dp.pth")
    assert inspect_checkpoint(tmp_path / "dp.pth").prefixes == {"": "module."}
    assert "DataParallel" in inspect_checkpoint(tmp_path / "dp.pth").summary()


def test_inspect_a_nested_checkpoint_with_plain_values(tmp_path):
    model = make_mlp()
    checkpoint = {
        "epoch": 7,
        "model_state_dict": add_module_prefix(model.state_dict(), "_orig_mod."),
        "optimizer_state_dict": torch.optim.SGD(model.parameters(), lr=0.1).state_dict(),
        "loss": 0.25,
    }
    torch.save(checkpoint, tmp_path / "ckpt.pth")
    info = inspect_checkpoint(tmp_path / "ckpt.pth")
    by_key = {r["key"]: r for r in info.rows}
    assert by_key["epoch"]["value"] == "int 7"
    assert by_key["model_state_dict/_orig_mod.0.weight"]["shape"] == "[20, 10]"
    assert info.prefixes == {"model_state_dict": "_orig_mod."}
    assert "torch.compile" in info.summary()
    assert "value" in info.table().splitlines()[0]


def test_inspect_refuses_a_file_that_is_not_a_checkpoint(tmp_path):
    from course_lib.safe_io import CheckpointError

    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="notes.txt"):
        inspect_checkpoint(tmp_path / "notes.txt")


HOSTILE_SHAPES = {
    "self_referential_list": "a = []; a.append(a); obj = {'x': a}",
    "shared_references": "x = [1.0]\nfor _ in range(80):\n    x = [x, x]\nobj = {'x': x}",
    "one_string_many_times": "s = 'a' * 2**20; obj = {'x': [s] * 6000}",
}


# A CUDA build of torch maps gigabytes of address space that it never touches (the CUDA
# libraries, the driver's reservations): an address-space limit (RLIMIT_AS) that a CPU torch fits
# under makes it fail at import ("unable to mmap ... Cannot allocate memory"). What must stay
# bounded is the memory really used: the child's peak resident set (VmHWM), watched from here too.
_RSS_GROWTH_LIMIT = 768 << 20  # what inspecting one small hostile file may add to the peak
_RSS_KILL_LIMIT = 3 << 30  # the watchdog's hard stop, so that a runaway cannot take the machine


def _resident_kib(pid, field="VmRSS"):
    try:
        with open(f"/proc/{pid}/status") as handle:
            status = handle.read()
    except OSError:
        return 0
    line = next((x for x in status.splitlines() if x.startswith(field + ":")), None)
    return int(line.split()[1]) if line else 0


def _run_with_bounded_memory(script, reserve_gib=0, timeout=120):
    """Run ``script`` in a child (after ``reserve_gib`` GiB of untouched address space, as a CUDA
    torch has); kill it if its resident memory passes _RSS_KILL_LIMIT. Returns the child's output,
    its return code, and the growth of its peak resident memory after importing torch."""
    import subprocess
    import sys
    import time

    prelude = (
        "import mmap, sys\n"
        f"reserved = mmap.mmap(-1, {reserve_gib} << 30, prot=0) if {reserve_gib} else None\n"
        "import torch\n"
        "from course_lib.inspection import inspect_checkpoint\n"
        "def _kib(field):\n"
        "    line = [x for x in open('/proc/self/status') if x.startswith(field + ':')][0]\n"
        "    return int(line.split()[1])\n"
        "_base = _kib('VmRSS')\n"
    )
    epilogue = "print('GROWTH_KIB', _kib('VmHWM') - _base)\n"
    child = subprocess.Popen(
        [sys.executable, "-c", prelude + script + epilogue],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline, peak, killed = time.monotonic() + timeout, 0, False
    while child.poll() is None:
        peak = max(peak, _resident_kib(child.pid))
        if peak << 10 > _RSS_KILL_LIMIT or time.monotonic() > deadline:
            child.kill()
            killed = True
            break
        time.sleep(0.02)
    out, err = child.communicate()
    assert not killed, (
        f"killed: resident {peak >> 10} MiB (limit {_RSS_KILL_LIMIT >> 20}), or timed out"
    )
    assert child.returncode == 0, err[-2000:]
    lines = out.split("\n")
    growth = next(int(x.split()[1]) for x in lines if x.startswith("GROWTH_KIB")) << 10
    return [x for x in lines if x and not x.startswith("GROWTH_KIB")], growth


@pytest.mark.parametrize("reserve_gib", [0, 8], ids=["cpu-torch", "cuda-sized-address-space"])
@pytest.mark.parametrize("shape", sorted(HOSTILE_SHAPES))
def test_inspect_checkpoint_is_bounded_on_small_hostile_files(tmp_path, shape, reserve_gib):
    """Small files whose contents are huge or endless as a tree: a bounded, quick table, in
    bounded resident memory, also in a process with a CUDA torch's gigabytes of address space."""
    path = tmp_path / f"{shape}.pth"
    script = (
        f"{HOSTILE_SHAPES[shape]}\n"
        f"torch.save(obj, {str(path)!r})\n"
        "del obj\n"
        f"info = inspect_checkpoint({str(path)!r})\n"
        "text = info.table()\n"
        "print(len(info.rows), len(text))\n"
    )
    lines, growth = _run_with_bounded_memory(script, reserve_gib)
    rows, characters = map(int, lines[-1].split())
    assert path.stat().st_size < 2 << 20
    assert rows <= 10_001 and characters < 2_000_000
    assert growth < _RSS_GROWTH_LIMIT, f"peak resident memory grew by {growth >> 20} MiB"
    print(f"{shape}: peak resident memory +{growth >> 20} MiB")
