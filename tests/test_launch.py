"""The README's launch command really serves the course: notebooks listed, a kernel starts."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest
from lab_server import running_lab

ROOT = Path(__file__).resolve().parent.parent


async def _execute(port: int, token: str, kernel_id: str, code: str) -> str:
    """Run ``code`` in the kernel over its websocket (as JupyterLab does); return the result text."""
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    url = f"ws://127.0.0.1:{port}/api/kernels/{kernel_id}/channels"
    request = HTTPRequest(url, headers={"Authorization": f"token {token}"})
    connection = await asyncio.wait_for(websocket_connect(request), timeout=30)
    msg_id = uuid.uuid4().hex
    header = {
        "msg_id": msg_id,
        "msg_type": "execute_request",
        "username": "test",
        "session": uuid.uuid4().hex,
        "version": "5.3",
    }
    content = {
        "code": code,
        "silent": False,
        "store_history": False,
        "user_expressions": {},
        "allow_stdin": False,
    }
    message = {
        "header": header,
        "parent_header": {},
        "metadata": {},
        "content": content,
        "channel": "shell",
        "buffers": [],
    }
    await connection.write_message(json.dumps(message))
    try:
        while True:
            raw = await asyncio.wait_for(connection.read_message(), timeout=60)
            assert raw is not None, "the kernel's websocket closed"
            reply = json.loads(raw)
            if reply.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = reply["msg_type"]
            if kind == "error":
                raise AssertionError(f"kernel error: {reply['content']['evalue']}")
            if kind == "execute_result":
                return reply["content"]["data"]["text/plain"]
    finally:
        connection.close()


@pytest.mark.timeout(150)
@pytest.mark.slow
def test_course_lab_serves_the_notebooks_and_starts_a_kernel(tmp_path):
    with running_lab(tmp_path) as server:
        status, listing = server.call("GET", "/api/contents/notebooks")
        names = {item["name"] for item in listing["content"]}
        assert "00_introduction.ipynb" in names
        committed = {p.name for p in (ROOT / "notebooks").glob("*.ipynb")}
        assert committed <= names

        status, kernel = server.call("POST", "/api/kernels", {"name": "python3"})
        assert status == 201
        code = "import course_lib; 6 * 7"
        assert asyncio.run(_execute(server.port, server.token, kernel["id"], code)) == "42"
        status, _ = server.call("DELETE", f"/api/kernels/{kernel['id']}")
        assert status == 204
        assert server.shutdown() == 0


# ---------------------------------------------------------------- ./course's interpreter, on a GPU


def _fake_venv(tmp_path, name, torch_source):
    """A real virtualenv (no pip) whose site-packages holds a fake torch, and a fake pytest that
    records how it was called (COURSE_DEVICE, COURSE_CUDA_RUN, argv) to calls.jsonl."""
    import subprocess
    import sys

    venv = tmp_path / name
    # From the base interpreter: a virtualenv made from another one's Python would see its packages.
    base = Path(sys.base_prefix) / "bin" / "python3"
    subprocess.run([str(base), "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = subprocess.run(
        [str(venv / "bin" / "python3"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    site = Path(purelib)
    (site / "torch").mkdir()
    (site / "torch" / "__init__.py").write_text(torch_source)
    (site / "pytest").mkdir()
    (site / "pytest" / "__init__.py").write_text("")
    (site / "pytest" / "__main__.py").write_text(
        "import json, os, sys\n"
        f"with open({str(tmp_path / 'calls.jsonl')!r}, 'a') as log:\n"
        "    log.write(json.dumps([os.environ.get('COURSE_DEVICE'), os.environ.get('COURSE_CUDA_RUN'),"
        " sys.argv[1:]]) + '\\n')\n"
    )
    return venv


def _course_copy(tmp_path):
    """The launcher (and pyproject.toml, for its set-up stamp) in a folder of its own."""
    import shutil

    folder = tmp_path / "course_copy"
    folder.mkdir()
    shutil.copy2(ROOT / "course", folder / "course")
    shutil.copy2(ROOT / "pyproject.toml", folder / "pyproject.toml")
    return folder


def _run_course(folder, venv, *args):
    import os
    import subprocess

    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("VIRTUAL_ENV", "CONDA_PREFIX", "COURSE_PYTHON", "COURSE_DEVICE")
    }
    env["PATH"] = f"{venv / 'bin'}:/usr/bin:/bin"
    return subprocess.run(
        [str(folder / "course"), *args],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


CUDA_TORCH = (
    "__version__ = '2.11.0+cu130'\nclass cuda:\n    is_available = staticmethod(lambda: True)\n"
)
CPU_TORCH = (
    "__version__ = '2.13.0+cpu'\nclass cuda:\n    is_available = staticmethod(lambda: False)\n"
)


def test_course_uses_an_inactivated_virtualenvs_python_that_has_torch(tmp_path):
    """python3 is /opt/torch/.venv/bin/python3 (not activated) with a CUDA torch: ./course must use
    it, not make a .venv that sees the base interpreter and installs the CPU torch over it."""
    venv = _fake_venv(tmp_path, "torchvenv", CUDA_TORCH)
    folder = _course_copy(tmp_path)
    result = _run_course(folder, venv, "which-python")
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).parent == venv / "bin"
    assert not (folder / ".venv").exists()


@pytest.mark.parametrize(
    "torch_source", ["__version__ = '2.5.1'\n", None], ids=["torch-2.5", "no-torch"]
)
def test_course_makes_its_own_venv_when_python3s_torch_is_too_old_or_missing(
    tmp_path, torch_source
):
    venv = _fake_venv(tmp_path, "oldvenv", torch_source or "raise ImportError('no torch')\n")
    folder = _course_copy(tmp_path)
    result = _run_course(folder, venv, "which-python")
    assert result.stdout.strip() == f"{folder}/.venv/bin/python (to be made)", result.stderr
    assert not (folder / ".venv").exists()  # which-python creates nothing


def _installed(venv, folder):
    """Mark the course as set up in ``venv`` (the stamp ./course's set-up leaves), so that
    ./course test runs at once."""
    import hashlib
    import subprocess

    prefix = subprocess.run([str(venv / "bin" / "python3"), "-c", "import sys; print(sys.prefix)"],
                            capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    digest = hashlib.sha256((folder / "pyproject.toml").read_bytes()).hexdigest()[:16]
    (Path(prefix) / f".course-installed-{digest}").touch()


#: What ./course test passes pytest first: every core, one xdist group per file (conftest.py).
PARALLEL = ["-n", "auto", "--dist", "loadgroup"]


def _calls(tmp_path):
    path = tmp_path / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_course_test_on_a_gpu_compares_outputs_on_cpu_then_runs_the_notebooks_on_cuda(tmp_path):
    venv = _fake_venv(tmp_path, "torchvenv", CUDA_TORCH)
    folder = _course_copy(tmp_path)
    _installed(venv, folder)
    result = _run_course(folder, venv, "test", "-q", "notebooks")
    assert result.returncode == 0, result.stderr
    assert _calls(tmp_path) == [
        ["cpu", None, [*PARALLEL, "-q", "notebooks"]],
        ["cuda", "1", ["--nbval-lax", *PARALLEL, "-q", "notebooks"]],
    ]
    assert "Run 1 of 2" in result.stdout and "run 2 of 2" in result.stdout


def test_course_test_without_cuda_is_one_run_as_before(tmp_path):
    venv = _fake_venv(tmp_path, "cpuvenv", CPU_TORCH)
    folder = _course_copy(tmp_path)
    _installed(venv, folder)
    result = _run_course(folder, venv, "test", "-q")
    assert result.returncode == 0, result.stderr
    assert _calls(tmp_path) == [[None, None, [*PARALLEL, "-q"]]]
    assert "run 2" not in result.stdout


def test_course_test_fast_leaves_out_the_slow_tests(tmp_path):
    venv = _fake_venv(tmp_path, "cpuvenv", CPU_TORCH)
    folder = _course_copy(tmp_path)
    _installed(venv, folder)
    result = _run_course(folder, venv, "test", "--fast", "-q")
    assert result.returncode == 0, result.stderr
    assert _calls(tmp_path) == [[None, None, [*PARALLEL, "-m", "not slow", "-q"]]]


def test_the_cuda_run_keeps_the_notebooks_and_the_cuda_tests_only(tmp_path):
    """COURSE_CUDA_RUN=1 (the second run of ./course test on a GPU): notebooks, solutions and the
    tests of CUDA paths are collected, the rest is deselected; the header says which run it is."""
    import os
    import subprocess
    import sys

    selection = ["notebooks/00_introduction.ipynb", "tests/test_device.py", "tests/test_plots.py"]
    runs = {}
    for cuda_run in ("1", "0"):
        env = dict(os.environ, COURSE_CUDA_RUN=cuda_run)
        out = subprocess.run(
            [sys.executable, "-m", "pytest", "--collect-only", "-q", *selection],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        runs[cuda_run] = {line.split("::")[0] for line in out.stdout.splitlines() if "::" in line}
    assert runs["1"] == {"notebooks/00_introduction.ipynb", "tests/test_device.py"}
    assert runs["0"] == set(selection)


def _installed_from(venv, folder):
    """Record in ``venv`` that course_lib is installed editable from ``folder`` (pip's
    direct_url.json), as pip install -e does."""
    site = next((venv / "lib").glob("python3*/site-packages"))
    info = site / "course_lib-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: course_lib\nVersion: 0.1.0\n")
    (info / "direct_url.json").write_text(
        json.dumps({"url": folder.as_uri(), "dir_info": {"editable": True}})
    )


SWITCH = "already runs the copy of the course in"


def test_set_up_never_switches_another_copys_course_lib(tmp_path):
    """The Python already has course_lib installed editable from another copy of the course (an
    activated venv; the suite's release test ran the handout's ./course in it): set-up stops and
    says so, instead of pointing that copy's course_lib at this folder with pip install -e. The
    egg-info an earlier install left in this folder must not hide the venv's record."""
    venv = _fake_venv(tmp_path, "cpuvenv", CPU_TORCH)
    folder = _course_copy(tmp_path)
    egg = folder / "course_lib.egg-info"
    egg.mkdir()
    (egg / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: course_lib\nVersion: 0.1.0\n")
    other = tmp_path / "first copy"
    other.mkdir()
    (other / "course").write_text("#!/bin/sh\n")
    _installed_from(venv, other)
    result = _run_course(folder, venv, "test", "-q")
    assert result.returncode == 1
    assert f"{SWITCH} {other};" in result.stderr, result.stderr
    assert "deactivate the environment" in result.stderr
    assert "installing the CPU build" not in result.stdout  # stopped before installing anything
    assert _calls(tmp_path) == []  # no test ran


def test_set_up_goes_on_when_course_lib_is_this_copys(tmp_path):
    venv = _fake_venv(tmp_path, "cpuvenv", CPU_TORCH)
    folder = _course_copy(tmp_path)
    _installed_from(venv, folder)
    result = _run_course(folder, venv, "test", "-q")
    assert SWITCH not in result.stderr
    assert "installing the course's packages" in result.stdout, result.stdout + result.stderr
