"""Test-session set-up: offline, CPU-only, and every Hub client pointed at a loopback stand-in.

``HF_ENDPOINT`` must be set before ``huggingface_hub`` or ``datasets`` is imported (both read it at import), so it is
set here, at the top of the root conftest, on a free loopback port that the ``hub_server`` fixture later serves.
"""

import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_SESSION_DIR = Path(tempfile.mkdtemp(prefix="geollava-tests-"))
HUB_PORT = _free_port()
os.environ["HF_ENDPOINT"] = f"http://127.0.0.1:{HUB_PORT}"
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ["HF_HOME"] = str(_SESSION_DIR / "hf_home")
os.environ["HF_TOKEN"] = "hf_test_token_never_printed_0123456789"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
os.environ["TRANSFORMERS_NO_ADVISORY_WARNINGS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["WANDB_DISABLED"] = "true"
os.environ.pop("OPENAI_API_KEY", None)
os.environ.pop("OPENAI_BASE_URL", None)
os.environ["CUDA_VISIBLE_DEVICES"] = os.environ.get("GEOLLAVA_TEST_CUDA", "")


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_SESSION_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def session_dir() -> Path:
    """A temporary folder shared by the whole test session."""
    return _SESSION_DIR


@pytest.fixture(scope="session")
def hub_server(session_dir):
    """`geollava-hub` on the loopback port HF_ENDPOINT points at; yields its URL."""
    import subprocess
    import sys
    import time
    import urllib.request

    url = os.environ["HF_ENDPOINT"]
    log = open(session_dir / "hub.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "upload.hub_server",
            "--host",
            "127.0.0.1",
            "--port",
            str(HUB_PORT),
            "--storage",
            str(session_dir / "hub-storage"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=Path(__file__).resolve().parents[1],  # `-m upload.hub_server` from the repo root, whatever pytest's cwd
    )
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/whoami-v2", timeout=1)
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"geollava-hub did not start: {(session_dir / 'hub.log').read_text()}") from None
            time.sleep(0.2)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()
