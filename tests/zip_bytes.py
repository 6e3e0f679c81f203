"""Where an entry's bytes lie in a zip archive, for tests that damage exactly those bytes.

``zipfile`` gives each entry's local header offset and stored size; its data starts after the
30-byte local header and the name and extra field, whose lengths that header holds.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

__all__ = ["data_range"]


def data_range(path: Path, entry: str) -> tuple[int, int]:
    """(start, end) of ``entry``'s stored bytes in the file at ``path``."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(entry)
    with open(path, "rb") as handle:
        handle.seek(info.header_offset)
        head = handle.read(30)
    start = info.header_offset + 30 + int.from_bytes(head[26:28], "little")
    start += int.from_bytes(head[28:30], "little")
    return start, start + info.compress_size
