"""Serve a Space's ``app.py`` on a free loopback port (the browser tests and the Hub round trip both start one)."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(app_path: Path, base, adapter, log_path: Path):
    """Start a Space app as a subprocess on a free loopback port; return (process, url)."""
    port = free_port()
    env = {
        **os.environ,
        "BASE_MODEL_ID": str(base),
        "ADAPTER_ID": str(adapter),
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_ANALYTICS_ENABLED": "False",
    }
    log = open(log_path, "w")  # noqa: SIM115 - owned by the process
    proc = subprocess.Popen([sys.executable, str(app_path)], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the app exited early:\n{log_path.read_text()}")
        try:
            urllib.request.urlopen(url, timeout=1)
            return proc, url
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"the app did not answer in time:\n{log_path.read_text()}")
