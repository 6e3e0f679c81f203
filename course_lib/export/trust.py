"""Which exported files run code when loaded, and the ``trusted=True`` that loading them takes.

A TorchScript file is a program: ``torch.jit.load`` runs its scripted ``__setstate__`` before any
``forward``, and TorchScript can read and write files (``torch.from_file``). An AOTInductor package
is a shared library of machine code. A ``.pt2`` program is a graph and tensors, which
``torch.export.load`` reads without running code, except for three things it may also hold:
a pickle it reads with ``weights_only=False`` when ``weights_only=True`` refuses it
(``data/sample_inputs/*.pt``), a weight or constant stored as a pickle (``use_pickle: true``), and
a native library under ``data/aotinductor/``, which it loads. The course's loaders refuse these
unless the caller passes ``trusted=True`` (compare ``trust_remote_code`` in other libraries);
``pt2_code_risks`` says what a ``.pt2`` holds.

Taught in notebooks/06_torchscript.ipynb.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import torch

from course_lib.export.errors import ExportError

__all__ = [
    "UntrustedCodeError",
    "check_pt2_trusted",
    "check_torchscript_trusted",
    "load_aoti_package",
    "pt2_code_risks",
]

_NATIVE_SUFFIXES = (".so", ".dll", ".dylib", ".pyd")
_MAX_JSON_BYTES = 64 << 20


class UntrustedCodeError(ExportError):
    """A file that runs code when loaded, refused because the caller did not pass ``trusted=True``.

    Raised by ``check_pt2_trusted``, ``check_torchscript_trusted`` and ``load_aoti_package``;
    not taught in a notebook.
    """


def _loads_without_code(data: bytes) -> bool:
    try:
        with torch.sparse.check_sparse_tensor_invariants():
            torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception:  # noqa: BLE001 - refused or damaged: torch.export.load would fall back
        return False
    return True


def _pickled_payloads(archive: zipfile.ZipFile, names: list[str]) -> list[str]:
    """Entries ``torch.export.load`` unpickles: sample inputs, ``use_pickle`` weights/constants."""
    found = [n for n in names if "/data/sample_inputs/" in f"/{n}" and not n.endswith("/")]
    raw = set()
    for config in names:
        folder = config.rsplit("/", 1)[0] if "/" in config else ""
        if not config.endswith("_config.json") or not folder.endswith(
            ("data/weights", "data/constants")
        ):
            continue
        if archive.getinfo(config).file_size > _MAX_JSON_BYTES:
            found.append(config)  # not read: a config this large is no real program's
            continue
        try:
            entries = json.loads(archive.read(config)).get("config", {})
        except (ValueError, AttributeError, RecursionError, zipfile.BadZipFile, OSError):
            continue  # torch.export.load fails on it before reading any payload
        for meta in entries.values() if isinstance(entries, dict) else ():
            if not isinstance(meta, dict) or not isinstance(meta.get("path_name"), str):
                continue
            member = f"{folder}/{meta['path_name']}" if folder else meta["path_name"]
            if meta.get("use_pickle"):
                found.append(member)
            else:
                raw.add(member)
    found += [n for n in names if n.endswith((".pt", ".pkl", ".pth")) and n not in raw]
    return list(dict.fromkeys(found))


def pt2_code_risks(path: str | os.PathLike[str]) -> list[str]:
    """What in a ``.pt2`` archive would run code in ``torch.export.load`` (empty: nothing).

    Native libraries (``data/aotinductor/``, ``*.so``) and pickles that ``weights_only=True``
    refuses (``torch.export.load`` then retries them with ``weights_only=False``). Pickles that
    load with ``weights_only=True`` (the sample inputs every ``torch.export.save`` writes) are
    fine. Used by ``check_pt2_trusted``; not taught in a notebook.
    """
    path = Path(path)
    risks: list[str] = []
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            for name in names:
                if "/data/aotinductor/" in f"/{name}" or name.lower().endswith(_NATIVE_SUFFIXES):
                    if not name.endswith("/"):
                        risks.append(
                            f"{name} (AOTInductor native code, which torch.export.load loads)"
                        )
            for name in _pickled_payloads(archive, names):
                try:
                    info = archive.getinfo(name)
                except KeyError:
                    continue
                if info.file_size > 1 << 30 or not _loads_without_code(archive.read(name)):
                    risks.append(
                        f"{name} (a pickle that weights_only=True refuses: torch.export.load "
                        "unpickles it with weights_only=False, which runs the code it names)"
                    )
    except (zipfile.BadZipFile, OSError):
        return []  # not an archive: torch.export.load raises its own error without running code
    return risks


def check_pt2_trusted(path: str | os.PathLike[str], trusted: bool) -> None:
    """Raise ``UntrustedCodeError`` if the ``.pt2`` at ``path`` runs code when loaded and the
    caller did not pass ``trusted=True``. Used by ``load_program`` and
    ``run_all_in_fresh_process``; not taught in a notebook."""
    if trusted:
        return
    risks = pt2_code_risks(path)
    if risks:
        shown = "; ".join(risks[:4]) + (f"; and {len(risks) - 4} more" if len(risks) > 4 else "")
        raise UntrustedCodeError(
            path,
            f"this .pt2 holds more than a graph and tensors: {shown}. Loading it runs code from "
            "the file, with your permissions",
            "if you made this file yourself (or trust its source completely), pass trusted=True; "
            "otherwise ask for a .pt2 of the graph and tensors alone (torch.export.save of a "
            "program, with no AOTInductor package and plain-tensor weights) or an .onnx file",
        )


def check_torchscript_trusted(path: str | os.PathLike[str], trusted: bool) -> None:
    """Raise ``UntrustedCodeError`` unless ``trusted``: every TorchScript file is a program.
    Used by ``load_torchscript`` and ``run_all_in_fresh_process``; not taught in a notebook."""
    if not trusted:
        raise UntrustedCodeError(
            path,
            "this is a TorchScript file: a program, and torch.jit.load runs its code (a scripted "
            "__setstate__) while loading, before any forward; TorchScript can read and write "
            "files with your permissions",
            "if you made this file yourself (or trust its source completely), pass trusted=True; "
            "otherwise ask for a .pt2 program (export.load_program reads one without running "
            "code) or an .onnx file",
        )


def load_aoti_package(path: str | os.PathLike[str], *, trusted: bool = False) -> Any:
    """``torch._inductor.aoti_load_package`` for a package you trust: it is native code.

    An AOTInductor package is a compiled shared library; loading it runs its machine code by
    design, so it is refused unless ``trusted=True``. Taught in notebooks/06_torchscript.ipynb.
    """
    if not trusted:
        raise UntrustedCodeError(
            path,
            "this is an AOTInductor package: a compiled shared library whose machine code runs "
            "when it is loaded, with your permissions",
            "if you compiled it yourself (aoti_compile_and_package) or trust its source "
            "completely, pass trusted=True; otherwise ask for a .pt2 program or an .onnx file",
        )
    return torch._inductor.aoti_load_package(str(path))
