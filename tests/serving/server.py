"""``transformers serve`` on a loopback port: the OpenAI-compatible server a served model is scored through."""

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from upload.loopback import free_port, wait_until_up


@contextlib.contextmanager
def transformers_serve(model_dir: str | Path, *, port: int | None = None, log: Path | None = None) -> Iterator[str]:
    """Serve the full model folder ``model_dir`` on 127.0.0.1 (CPU, offline); yield its base URL ``.../v1``.

    The model is loaded before the server answers, so the first request does not wait for it. Its id in requests is
    ``str(model_dir)``. The server is stopped when the block ends.
    """
    port = port or free_port()
    log = Path(log) if log is not None else Path(tempfile.mkdtemp(prefix="transformers-serve-")) / "serve.log"
    command = [str(Path(sys.executable).parent / "transformers"), "serve", str(model_dir)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with open(log, "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_until_up(f"{url}/models", proc, log, timeout_s=180)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
