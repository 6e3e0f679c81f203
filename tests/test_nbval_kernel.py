"""conftest.py's wrapping of nbval's kernel start: a kernel that dies before it answers is named
with what it wrote to stderr, not only nbval's "Kernel died before replying to kernel_info"."""

from __future__ import annotations

import os

import pytest


def test_a_kernel_that_dies_at_start_is_named_with_its_stderr(tmp_path, monkeypatch):
    # The kernel runs `python -m ipykernel_launcher`: this one, first on its path, dies at once.
    (tmp_path / "ipykernel_launcher.py").write_text(
        "import sys\nsys.stderr.write('zmq.error.ZMQError: Address already in use\\n')\nsys.exit(3)\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    import nbval.kernel

    with pytest.raises(RuntimeError, match="Kernel died before replying") as info:
        nbval.kernel.start_new_kernel(  # as nbval's RunningKernel calls it
            startup_timeout=30,
            kernel_name=nbval.kernel.CURRENT_ENV_KERNEL_NAME,
            stderr=open(os.devnull, "w"),  # noqa: SIM115 - the wrapper closes it
        )
    assert "the kernel's stderr:\nzmq.error.ZMQError: Address already in use" in str(info.value)


def test_a_kernel_that_starts_still_runs_cells(tmp_path):
    import nbval.kernel

    km, kc = nbval.kernel.start_new_kernel(
        startup_timeout=60,
        kernel_name=nbval.kernel.CURRENT_ENV_KERNEL_NAME,
        stderr=open(os.devnull, "w"),  # noqa: SIM115 - the wrapper closes it
        cwd=str(tmp_path),
    )
    try:
        reply = kc.execute_interactive("import os; print(os.getcwd())", timeout=60)
        assert reply["content"]["status"] == "ok"
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
