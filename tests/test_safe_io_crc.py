"""safe_io's CRC-32 check: every entry is checked, a flipped bit is found, and the check of the
tensors' bytes (nearly all of the file) runs while ``torch.load`` reads them.

``verify_zip_crc`` must agree with ``zipfile``'s own check (``testzip``) on every flip; the
pickle must be checked before the unpickler sees it; and when a damaged file also makes
``torch.load`` fail, the CRC error is the one raised.
"""

from __future__ import annotations

import random
import zipfile
import zlib

import pytest
import torch

import course_lib.safe_io as safe_io
from course_lib.safe_io import CorruptCheckpointError, safe_load, verify_zip_crc
from tests.zip_bytes import data_range


@pytest.fixture
def big_file(tmp_path):
    """A torch.save file with a few tensors of a few MiB each, and some small ones."""
    torch.manual_seed(0)
    state = {f"big{i}": torch.randn(512, 1024) for i in range(3)}
    state |= {f"small{i}": torch.randn(16) for i in range(5)}
    path = tmp_path / "big.pth"
    torch.save(state, path)
    return path


def _entries(path):
    with zipfile.ZipFile(path) as archive:
        return [i.filename for i in archive.infolist() if i.file_size]


def _flip(path, position, bit=0x08):
    raw = bytearray(path.read_bytes())
    raw[position] ^= bit
    path.write_bytes(bytes(raw))


def _tensor_entry(path, which=0):
    return sorted(e for e in _entries(path) if "/data/" in e and e.rsplit("/", 1)[1].isdigit())[
        which
    ]


def test_a_flipped_bit_in_a_big_tensor_is_found_while_loading(big_file):
    assert safe_load(big_file, map_location="cpu")["big0"].shape == (512, 1024)
    entry = max(
        _entries(big_file), key=lambda e: data_range(big_file, e)[1] - data_range(big_file, e)[0]
    )
    start, end = data_range(big_file, entry)
    _flip(big_file, (start + end) // 2)
    assert torch.load(big_file, weights_only=True) is not None  # torch does not notice
    with pytest.raises(CorruptCheckpointError, match="CRC-32") as info:
        safe_load(big_file, map_location="cpu")
    record = entry.split("/", 1)[1]  # the entry without the archive's folder, "big/"
    assert f"record '{record}'" in str(info.value) and str(big_file) in str(info.value)
    with pytest.raises(CorruptCheckpointError, match="CRC-32"):
        verify_zip_crc(big_file)
    assert safe_load(big_file, map_location="cpu", verify_crc=False) is not None


def test_the_pickle_is_checked_before_torch_load_runs(big_file, monkeypatch):
    pickle_entry = next(e for e in _entries(big_file) if e.endswith("data.pkl"))
    start, end = data_range(big_file, pickle_entry)
    _flip(big_file, (start + end) // 2)
    calls = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(a))
    with pytest.raises(CorruptCheckpointError, match="CRC-32"):
        safe_load(big_file, map_location="cpu")
    assert calls == []


def test_the_crc_error_wins_when_the_damage_also_breaks_the_load(big_file, monkeypatch):
    start, end = data_range(big_file, _tensor_entry(big_file))
    _flip(big_file, start + 3)

    def failing_load(*args, **kwargs):
        raise RuntimeError("invalid data in a storage")

    monkeypatch.setattr(torch, "load", failing_load)
    with pytest.raises(CorruptCheckpointError, match="fails its CRC-32 check"):
        safe_load(big_file, map_location="cpu")


def test_a_load_error_is_kept_when_the_crcs_are_right(big_file, monkeypatch):
    def failing_load(*args, **kwargs):
        raise RuntimeError("invalid data in a storage")

    monkeypatch.setattr(torch, "load", failing_load)
    with pytest.raises(CorruptCheckpointError, match="the file is damaged: torch.load failed"):
        safe_load(big_file, map_location="cpu")


@pytest.mark.parametrize("seed", range(3))
def test_verify_zip_crc_agrees_with_zipfile_on_random_flips(big_file, tmp_path, seed):
    rng = random.Random(seed)
    original = big_file.read_bytes()
    ranges = [data_range(big_file, e) for e in _entries(big_file)]
    for _ in range(15):
        big_file.write_bytes(original)
        start, end = rng.choice(ranges)
        _flip(big_file, rng.randrange(start, end), bit=1 << rng.randrange(8))
        with zipfile.ZipFile(big_file) as archive:
            zipfile_finds = archive.testzip() is not None
        try:
            verify_zip_crc(big_file)
            ours = False
        except CorruptCheckpointError:
            ours = True
        assert ours == zipfile_finds == True  # noqa: E712 - a flip in stored bytes is always seen


def test_a_good_file_passes_and_every_byte_is_checked_once(big_file, monkeypatch):
    """Every stored byte goes through a CRC-32 once; ``safe_load`` checks the tensors on the
    bytes ``torch.load`` reads, and reads again from the file only the small records."""
    checked, reread = [], []
    real_crc32, real_check = zlib.crc32, safe_io._check_crcs

    def counting_crc32(data, value=0):
        checked.append(memoryview(data).nbytes)
        return real_crc32(data, value)

    def counting_check(source, entries):
        reread.extend(size for _, _, size, _ in entries)
        return real_check(source, entries)

    monkeypatch.setattr(safe_io.zlib, "crc32", counting_crc32)
    monkeypatch.setattr(safe_io, "_check_crcs", counting_check)
    with zipfile.ZipFile(big_file) as archive:
        total = sum(i.compress_size for i in archive.infolist())
        tensors = sum(i.compress_size for i in archive.infolist() if "/data/" in i.filename)
    verify_zip_crc(big_file)
    assert sum(checked) == sum(reread) == total
    checked.clear()
    reread.clear()
    assert safe_load(big_file, map_location="cpu")["small0"].shape == (16,)
    assert sum(checked) == total
    assert sum(reread) == total - tensors


def test_a_compressed_archive_is_checked_through_zipfile(big_file, tmp_path):
    packed = tmp_path / "packed.pth"
    with zipfile.ZipFile(big_file) as src, zipfile.ZipFile(packed, "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info), compress_type=zipfile.ZIP_DEFLATED)
    verify_zip_crc(packed)
    assert torch.equal(safe_load(packed, map_location="cpu")["big1"], torch.load(big_file)["big1"])


def test_the_damaged_record_is_named_without_the_temporary_file_name(tmp_path):
    """``torch.save`` files its entries under the name of the file it wrote: for ``safe_save``,
    a random temporary name. The learner is told the record (``data/0``), not that name."""
    path = tmp_path / "model.pth"
    safe_io.safe_save({"w": torch.randn(1024)}, path)
    with zipfile.ZipFile(path) as archive:
        folder = archive.namelist()[0].split("/", 1)[0]
    assert folder != "model"  # the temporary file's stem: what the message must not show
    start, end = data_range(path, f"{folder}/data/0")
    _flip(path, (start + end) // 2)
    with pytest.raises(CorruptCheckpointError, match="record 'data/0'") as info:
        safe_load(path)
    assert folder not in str(info.value), str(info.value)


def test_a_truncated_tensor_is_reported(big_file):
    entry = _tensor_entry(big_file, 1)
    start, end = data_range(big_file, entry)
    raw = big_file.read_bytes()
    big_file.write_bytes(raw[: start + 10] + raw[end:])  # the zip directory points past the cut
    with pytest.raises(CorruptCheckpointError):
        safe_load(big_file, map_location="cpu")
    with pytest.raises(CorruptCheckpointError):
        verify_zip_crc(big_file)


@pytest.mark.parametrize("cores", [1, 2, 8])
def test_with_several_checking_threads_the_earliest_damage_is_reported(
    big_file, monkeypatch, cores
):
    import os

    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    tensors = sorted(
        (e for e in _entries(big_file) if "/data/" in e and e.rsplit("/", 1)[1].isdigit()),
        key=lambda e: data_range(big_file, e)[0],
    )
    assert safe_load(big_file, map_location="cpu")["big2"].shape == (512, 1024)
    for entry in (tensors[-1], tensors[1]):  # damage two, the later one first
        start, end = data_range(big_file, entry)
        _flip(big_file, end - 1)
    with pytest.raises(CorruptCheckpointError, match="CRC-32") as info:
        safe_load(big_file, map_location="cpu")
    assert f"record {tensors[1].split('/', 1)[1]!r}" in str(info.value)


def test_a_memory_mapped_load_is_checked_too(big_file):
    assert safe_load(big_file, map_location="cpu", mmap=True)["big1"].shape == (512, 1024)
    start, end = data_range(big_file, _tensor_entry(big_file, 1))
    _flip(big_file, (start + end) // 2)
    with pytest.raises(CorruptCheckpointError, match="CRC-32"):
        safe_load(big_file, map_location="cpu", mmap=True)


def test_tensors_read_in_pieces_are_checked_after_the_load(big_file, monkeypatch):
    """A torch that reads a tensor in several calls gets no check on the way: each such tensor
    is checked from the file once the load is done, and its damage still found."""
    real = safe_io._CrcCheckingReader.readinto

    def in_pieces(self, buffer):
        view = memoryview(buffer).cast("B")
        if len(view) < 4096:
            return real(self, view)
        first = real(self, view[:1000])
        return first + real(self, view[1000:])

    monkeypatch.setattr(safe_io._CrcCheckingReader, "readinto", in_pieces)
    loaded = safe_load(big_file, map_location="cpu")
    assert torch.equal(loaded["big2"], torch.load(big_file, weights_only=True)["big2"])
    start, end = data_range(big_file, _tensor_entry(big_file, 2))
    _flip(big_file, end - 1)
    with pytest.raises(CorruptCheckpointError, match="CRC-32"):
        safe_load(big_file, map_location="cpu")


def test_crc32_combine_agrees_with_zlib():
    """The CRC-32 of a tensor checked in parts by several threads is combined from theirs."""
    rng = random.Random(0)
    data = rng.randbytes(3 << 20)
    for _ in range(50):
        cut = rng.randrange(len(data) + 1)
        first, second = data[:cut], data[cut:]
        combined = safe_io._crc32_combine(zlib.crc32(first), zlib.crc32(second), len(second))
        assert combined == zlib.crc32(data)
    assert safe_io._crc32_combine(zlib.crc32(data), 0, 0) == zlib.crc32(data)
