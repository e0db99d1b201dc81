"""A small Hugging Face Hub-compatible server on loopback: a stand-in for tests and offline staging, not a Hub.

    geollava-hub --host 127.0.0.1 --port 18900 --storage outputs/hub

Enough of the Hub API for the real ``huggingface_hub``, ``datasets`` and ``peft`` clients to create model, dataset
and Space repos, upload (regular and LFS), list, download and resolve by revision (branches included), with the Hub's
error shapes (404 + ``X-Error-Code``); blobs and the repo index persist on disk. Single user, no Xet: clients need
``HF_ENDPOINT=http://127.0.0.1:PORT`` (set before importing them) and ``HF_HUB_DISABLE_XET=1``. Started from the
prototype verified in the project's reference notes (data-hub-stack.md, Appendix A).

Modules: ``cli`` (the console script; imports no server dependency until it serves), ``app`` (the FastAPI app),
``routes_read`` / ``routes_write`` / ``routes_test`` (the endpoints), ``payloads`` (the Hub's JSON shapes),
``store`` (blobs and the repo index on disk), ``state`` (one server's state). The server's dependencies (fastapi,
uvicorn, python-multipart) come with the optional extra: ``pip install 'geollava[hub]'``.
"""

from upload.hub_server.cli import HubArguments, main


__all__ = ["HubArguments", "main"]
