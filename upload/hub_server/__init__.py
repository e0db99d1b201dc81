"""A small Hugging Face Hub-compatible server on loopback: a stand-in for tests and offline staging, not a Hub.

    geollava-hub --host 127.0.0.1 --port 18900 --storage outputs/hub

Enough of the Hub API for the real ``huggingface_hub``, ``datasets`` and ``peft`` clients (repos, LFS uploads,
commits, branches, downloads, the Hub's error shapes), persisted on disk. Single user, no Xet: clients need
``HF_ENDPOINT`` set before importing them and ``HF_HUB_DISABLE_XET=1``. Its modules and why those settings:
docs/release.md "geollava-hub".
"""

from upload.hub_server.cli import HubArguments, main


__all__ = ["HubArguments", "main"]
