"""The chapter's CheckpointManager (section 6.3.8), as notebook 08 shows it, loaded from nbsrc.

Used by the tests to make a folder the way the chapter's manager does, and to show its flaws.
"""

import importlib.util
from pathlib import Path

_path = Path(__file__).resolve().parents[2] / "chapter_code.py"
_spec = importlib.util.spec_from_file_location("chapter_code", _path)
_chapter_code = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_chapter_code)

CheckpointManager = _chapter_code.chapter_definitions(
    "08b_retention_async", "CheckpointManager"
).CheckpointManager
