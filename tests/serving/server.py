"""`transformers serve` on loopback for a block of code: the one launcher of the serving tests and benchmarks.

    with transformers_serve(merged_model_dir) as url:  # http://127.0.0.1:PORT/v1
        geollava_eval(["--model", str(merged_model_dir), "--server", url, ...])

The server is transformers' own OpenAI-compatible one (the venv's ``transformers`` console script, from the
``serving`` extra), pinned to the model, on the CPU. Its process gets ``server_site/`` on ``PYTHONPATH``, whose
``sitecustomize`` lets transformers 5.24 decode the data-URL videos that vLLM and SGLang take (see that file).
"""

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from upload.loopback import free_port, wait_until_up


SITE = Path(__file__).resolve().parent / "server_site"
#: Seconds to wait for the model to load and `/v1/models` to answer (CPU, shared cores).
START_TIMEOUT_S = 180.0


class TransformersServer:
    """One ``transformers serve MODEL`` process on ``127.0.0.1:port``; :meth:`stop` ends it and its children.

    Args:
        model_dir: The model folder it serves (a merged export).
        port: The port; a free one when ``None``.
        log: Where its output goes (default: ``transformers-serve-PORT.log`` beside the model folder).
    """

    def __init__(self, model_dir: str | Path, *, port: int | None = None, log: Path | None = None):
        self.model_dir = Path(model_dir)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.log = Path(log) if log else self.model_dir.parent / f"transformers-serve-{self.port}.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> str:
        """Start the server and wait until ``/v1/models`` answers; returns the base URL.

        Raises:
            RuntimeError: With the server's log, if it exits or does not answer in time.
        """
        command = [str(Path(sys.executable).with_name("transformers")), "serve", str(self.model_dir)]
        command += ["--host", "127.0.0.1", "--port", str(self.port), "--device", "cpu", "--log-level", "info"]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SITE), os.environ.get("PYTHONPATH", "")])}
        with open(self.log, "w") as log:
            # its own session, so stop() reaches every process it started
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        try:
            wait_until_up(f"{self.url}/models", self.process, self.log, timeout_s=START_TIMEOUT_S)
        except BaseException:
            self.stop()
            raise
        return self.url

    def kill(self) -> None:
        """End the server at once (SIGKILL to its process group), as a crash would."""
        self._signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        """End the server (SIGTERM, then SIGKILL after 10 s) and its children."""
        if self.process is None or self.process.poll() is not None:
            return
        self._signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()

    def _signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)


@contextlib.contextmanager
def transformers_serve(model_dir: str | Path, *, port: int | None = None, log: Path | None = None) -> Iterator[str]:
    """Run ``transformers serve MODEL_DIR`` on ``127.0.0.1`` for the block; yields ``http://127.0.0.1:PORT/v1``.

    Args:
        model_dir: The model folder to serve (e.g. a ``geollava-export`` output).
        port: The port; a free one when ``None``.
        log: Where the server's output goes.
    """
    server = TransformersServer(model_dir, port=port, log=log)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()
