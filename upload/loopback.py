"""Start the loopback Hub (``geollava-hub``) for a block of code: the one launcher of tests, quickstart and demo.

    with serve_hub(Path("outputs/hub")) as url:
        os.environ["HF_ENDPOINT"] = url  # in the processes you start from here: set it before importing the clients

The server runs in a child process (``python -m upload.hub_server``), so this module needs none of the server's
dependencies (the ``hub`` extra); the child does.
"""

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path


#: The environment variable `geollava-hub` reads its token from (as ``--token`` would give it).
TOKEN_ENV = "GEOLLAVA_HUB_TOKEN"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on at ``host`` right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen, log_path: Path | None, timeout_s: float = 60.0) -> None:
    """Wait until ``url`` answers HTTP, or raise ``RuntimeError`` with the process's log if it exits or times out.

    Args:
        url: What to poll (any answer, even an error status, counts as up).
        process: The server process.
        log_path: Its log, quoted in the error.
        timeout_s: How long to wait.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                log = log_path.read_text(errors="replace")[-4000:] if log_path and log_path.exists() else ""
                state = f"exited with {process.returncode}" if process.poll() is not None else "did not answer"
                raise RuntimeError(f"{url}: the server {state}\n{log}") from None
            time.sleep(0.1)


@contextlib.contextmanager
def serve_hub(
    storage: str | Path,
    *,
    port: int | None = None,
    host: str = "127.0.0.1",
    log_path: str | Path | None = None,
    token: str | None = None,
    hostile_trees: bool = False,
) -> Iterator[str]:
    """Run ``geollava-hub`` on ``host:port`` (a free port by default), storing repos under ``storage``.

    Args:
        storage: Folder for blobs and the repo index (repos persist across restarts).
        port: The port; a free one when ``None``.
        host: The address to bind (loopback).
        log_path: Where the server's output goes (default: ``storage/../hub.log``).
        token: Require this token on every request (passed through the environment, never the command line);
            ``None``: no token, whatever ``GEOLLAVA_HUB_TOKEN`` says in this process.
        hostile_trees: TEST ONLY: let ``POST /_hostile`` commit paths the Hub refuses (``--allow-hostile-trees``).

    Yields:
        The server's URL, ``http://host:port``; the server is stopped when the block ends.
    """
    storage = Path(storage)
    storage.parent.mkdir(parents=True, exist_ok=True)
    port = port or free_port(host)
    log_path = Path(log_path) if log_path else storage.with_name(storage.name + ".log")
    url = f"http://{host}:{port}"
    command = [
        sys.executable,
        "-m",
        "upload.hub_server",
        "--host",
        host,
        "--port",
        str(port),
        "--storage",
        str(storage),
        *(["--allow-hostile-trees"] if hostile_trees else []),
    ]
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV} | ({TOKEN_ENV: token} if token else {})
    with open(log_path, "w") as log:
        # The repo root as cwd: `-m upload.hub_server` finds this checkout's package whatever the caller's cwd.
        root = Path(__file__).parents[1]
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=root, env=env)
        try:
            wait_until_up(f"{url}/api/whoami-v2", process, log_path)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
