"""Serve a Space's ``app.py`` on a free loopback port (the browser tests and the Hub round trip both start one)."""

import os
import subprocess
import sys
from pathlib import Path

from upload.loopback import free_port, wait_until_up


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
    try:
        wait_until_up(url, proc, log_path, timeout_s=120)
    except RuntimeError:
        proc.kill()
        raise
    return proc, url
