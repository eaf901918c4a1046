"""A JupyterLab server for tests: its own port, token and config folders, stopped when the block ends."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Server:
    """A running JupyterLab: ``url(path)`` is ``http://127.0.0.1:PORT/path?token=TOKEN``."""

    port: int
    token: str

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}?token={self.token}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def jupyterlab(root: Path, scratch: Path, *extra: str, timeout: float = 90) -> Iterator[Server]:
    """Start ``python -m jupyterlab`` serving ``root``, with config, data and runtime folders in ``scratch``
    (nothing of the user's own Jupyter setup is read or written); wait until it answers; stop it afterwards.
    Its kernels draw figures as a learner's do: the tests' ``MPLBACKEND=Agg`` (conftest.py) is not passed on."""
    server = Server(_free_port(), secrets.token_hex(16))
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={server.port}",
               f"--IdentityProvider.token={server.token}", f"--ServerApp.root_dir={root}",
               "--ServerApp.port_retries=0", *extra]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # containers and CI often run as root
        command.append("--allow-root")
    inherited = {name: value for name, value in os.environ.items() if name != "MPLBACKEND"}  # conftest's Agg
    env = {**inherited, "JUPYTER_RUNTIME_DIR": str(scratch / "runtime"),
           "JUPYTER_CONFIG_DIR": str(scratch / "config"), "JUPYTER_DATA_DIR": str(scratch / "data")}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert process.poll() is None, process.stdout.read().decode(errors="replace")[-3000:]
            try:
                with urllib.request.urlopen(server.url("api/status"), timeout=5) as response:
                    json.load(response)
                break
            except OSError:
                assert time.monotonic() < deadline, f"JupyterLab did not answer within {timeout:.0f} s"
                time.sleep(0.5)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
