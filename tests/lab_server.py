"""Starting the course's JupyterLab (the README's launch command) for a test, and stopping it."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, port: int, token: str, process: subprocess.Popen):
        self.port, self.token, self.process = port, token, process
        self.base = f"http://127.0.0.1:{port}"

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

    def shutdown(self) -> int:
        """Stop the server through its own API; return its exit code."""
        status, _ = self.call("POST", "/api/shutdown")
        assert status == 200
        return self.process.wait(timeout=30)


@contextlib.contextmanager
def running_lab(tmp_path: Path, *extra_args: str, env: dict | None = None) -> Iterator[Server]:
    """``./course lab`` on a free loopback port with a random token; killed if still up at exit."""
    port, token = free_port(), secrets.token_hex(16)
    environment = dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"), **(env or {}))
    log_path = tmp_path / "lab.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [
                str(ROOT / "course"),
                "lab",
                "--no-browser",
                f"--port={port}",
                "--ServerApp.ip=127.0.0.1",
                f"--IdentityProvider.token={token}",
                *extra_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment,
            start_new_session=True,
        )
        server = Server(port, token, process)
        try:
            deadline = time.monotonic() + 90
            while True:
                assert process.poll() is None, log_path.read_text()
                try:
                    server.call("GET", "/api/status")
                    break
                except OSError:
                    assert time.monotonic() < deadline, "JupyterLab did not answer within 90 s"
                    time.sleep(0.5)
            yield server
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
