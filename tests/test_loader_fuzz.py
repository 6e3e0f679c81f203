"""Fuzzing every loader with damaged and hostile files: no payload runs, no crash, no hang.

A child process with a memory cap loads a few hundred seeded variants of a real training
checkpoint through ``safe_load``, ``load_checkpoint``, ``CheckpointManager.load`` and
``inspect_checkpoint``: truncations, flipped bits anywhere in the file, byte mutations of the
pickle with the archive's CRC made to match (so they reach the unpickler), and pickles that try
to call code. Every failure must be a ``CheckpointError``; the payload's marker file must never
appear; the child must finish (a crash or hang fails the test).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # ./course test --fast leaves it out

ROOT = Path(__file__).resolve().parent.parent

FUZZ = textwrap.dedent(
    """
    import io, json, random, resource, sys, warnings, zipfile
    from pathlib import Path

    resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))
    import torch
    from course_lib.checkpoint import build_checkpoint, load_checkpoint
    from course_lib.manager import CheckpointManager
    from course_lib.models import make_mlp
    from course_lib.safe_io import CheckpointError, safe_load
    from course_lib.inspection import inspect_checkpoint

    warnings.simplefilter("ignore")
    work, seed, count = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(seed)
    torch.manual_seed(seed)
    model = make_mlp()
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 10)).sum().backward()
    optimizer.step()
    good = work / "good.pth"
    torch.save(build_checkpoint(model, optimizer, epoch=3, metrics={"val_loss": 0.5}), good)
    original = good.read_bytes()
    marker = work / "PAYLOAD_RAN"

    def rezip(data_pkl):
        buffer = io.BytesIO()
        with zipfile.ZipFile(good) as src, zipfile.ZipFile(buffer, "w") as dst:
            for item in src.infolist():
                data = src.read(item)
                dst.writestr(item, data_pkl if item.filename.endswith("data.pkl") else data)
        return buffer.getvalue()

    with zipfile.ZipFile(good) as archive:
        pkl = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    payloads = [
        b"\\x80\\x02cbuiltins\\nexec\\nq\\x00X%sq\\x01\\x85q\\x02Rq\\x03." ,
        b"cos\\nsystem\\n(S'touch %s'\\ntR.",
        b"(S'touch %s'\\nios\\nsystem\\n.",
        b"\\x80\\x04\\x8c\\x02os\\x8c\\x06system\\x93\\x8c\\x0ftouch %s\\x85R.",
    ]

    def variant(index):
        kind = index % 5
        if kind == 0:
            return "truncated", original[: rng.randrange(len(original))]
        if kind == 1:
            data = bytearray(original)
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            return "bit flip", bytes(data)
        if kind in (2, 3):
            data = bytearray(pkl)
            for _ in range(rng.randint(1, 3)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            return "pickle mutation", rezip(bytes(data))
        template = payloads[index // 5 % len(payloads)]
        if template.startswith(b"\\x80\\x02cbuiltins"):
            code = f"open({str(marker)!r}, 'w').write('x')".encode()
            body = template.replace(b"X%s", b"X" + len(code).to_bytes(4, "little") + code)
        elif b"\\x8c\\x0f" in template:
            command = f"touch {marker}".encode()
            body = template.replace(b"\\x8c\\x0ftouch %s", b"\\x8c" + bytes([len(command)]) + command)
        else:
            body = template.replace(b"%s", str(marker).encode())
        return "payload", rezip(body)

    loaders = {
        "safe_load": lambda p: safe_load(p, map_location="cpu"),
        "load_checkpoint": lambda p: load_checkpoint(p, make_mlp(), None),
        "manager.load": lambda p: CheckpointManager(work / "m").load(p, make_mlp(), None),
        "inspect_checkpoint": lambda p: inspect_checkpoint(p).table(),
    }
    foreign, loaded = [], 0
    for index in range(count):
        kind, content = variant(index)
        path = work / f"v{index}.pth"
        path.write_bytes(content)
        for name, load in loaders.items():
            try:
                load(path)
                loaded += 1
            except CheckpointError:
                pass
            except Exception as exc:
                foreign.append(f"{name} on {kind}: {type(exc).__name__}: {str(exc)[:100]}")
        path.unlink()
    print(json.dumps({"foreign": foreign, "payload_ran": marker.exists(), "loaded": loaded}))
    """
)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("seed", [1, 2])
def test_fuzzed_checkpoints_only_ever_raise_checkpoint_errors(tmp_path, seed):
    script = tmp_path / "fuzz.py"
    script.write_text(FUZZ)
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path), str(seed), "150"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert result.returncode == 0, f"the child crashed or was killed: {result.stderr[-2000:]}"
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert not report["payload_ran"], "a payload ran"
    assert not report["foreign"], report["foreign"][:10]
