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
