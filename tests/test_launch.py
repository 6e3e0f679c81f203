"""The README's launch command really serves the course: notebooks listed, a kernel starts."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, port: int, token: str):
        self.base = f"http://127.0.0.1:{port}"
        self.token = token

    def call(self, method: str, path: str, body: dict | None = None):
        request = urllib.request.Request(
            f"{self.base}{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            text = response.read()
            return response.status, (json.loads(text) if text else None)


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
def test_course_lab_serves_the_notebooks_and_starts_a_kernel(tmp_path):
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"))
    log = (tmp_path / "lab.log").open("w")
    process = subprocess.Popen(
        [
            str(ROOT / "course"),
            "lab",
            "--no-browser",
            f"--port={port}",
            "--ServerApp.ip=127.0.0.1",
            f"--IdentityProvider.token={token}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    server = Server(port, token)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, (tmp_path / "lab.log").read_text()
            try:
                status, _ = server.call("GET", "/api/status")
                break
            except OSError:
                assert time.monotonic() < deadline, "JupyterLab did not answer within 90 s"
                time.sleep(0.5)

        status, listing = server.call("GET", "/api/contents/notebooks")
        names = {item["name"] for item in listing["content"]}
        assert "00_introduction.ipynb" in names
        committed = {p.name for p in (ROOT / "notebooks").glob("*.ipynb")}
        assert committed <= names

        status, kernel = server.call("POST", "/api/kernels", {"name": "python3"})
        assert status == 201
        result = asyncio.run(_execute(port, token, kernel["id"], "import course_lib; 6 * 7"))
        assert result == "42"
        status, _ = server.call("DELETE", f"/api/kernels/{kernel['id']}")
        assert status == 204

        status, _ = server.call("POST", "/api/shutdown")
        assert status == 200
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()
