"""Test-session set-up: offline, CPU-only, and every Hub client pointed at a loopback stand-in.

``HF_ENDPOINT`` must be set before ``huggingface_hub`` or ``datasets`` is imported (both read it at import), so it is
set here, at the top of the root conftest, on a free loopback port that the ``hub_server`` fixture later serves.
"""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Only the launcher: it imports neither huggingface_hub nor datasets, so HF_ENDPOINT below still comes first.
from upload.loopback import free_port, serve_hub


_SESSION_DIR = Path(tempfile.mkdtemp(prefix="geollava-tests-"))
HUB_PORT = free_port()
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
    with serve_hub(session_dir / "hub-storage", port=HUB_PORT, log_path=session_dir / "hub.log") as url:
        assert url == os.environ["HF_ENDPOINT"]
        yield url
