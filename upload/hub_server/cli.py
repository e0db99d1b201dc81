"""A small Hugging Face Hub-compatible server on loopback: a stand-in for tests and offline staging, not a Hub.

    geollava-hub --host 127.0.0.1 --port 18900 --storage outputs/hub

The command: parse the flags, refuse a non-loopback address without a token, check that the ``hub`` extra is
installed (naming ``pip install 'geollava[hub]'`` otherwise), load the storage and serve.
"""

import logging
import os
import sys
from dataclasses import dataclass, field

from upload.hub_server.validation import is_loopback
from upload.loopback import TOKEN_ENV


#: The modules of the ``hub`` extra (``pip install 'geollava[hub]'``): the server's own dependencies.
SERVER_MODULES = ("fastapi", "uvicorn", "starlette", "multipart", "python_multipart")
INSTALL_HINT = "pip install 'geollava[hub]'"


@dataclass
class HubArguments:
    """Where the stand-in Hub listens and keeps its repos."""

    host: str = field(default="127.0.0.1", metadata={"help": "Address to bind (loopback is intended)."})
    port: int = field(default=18900, metadata={"help": "Port to listen on."})
    storage: str = field(
        default=os.environ.get("GEOLLAVA_HUB_STORAGE", "hub-storage"),
        metadata={"help": "Folder for blobs and the repo index (repos persist across restarts)."},
    )

    token: str | None = field(
        default=None,
        metadata={
            "help": f"Require this token on every request (default: ${TOKEN_ENV}, which keeps it out of the process "
            "list). Needed to bind anything but loopback."
        },
    )
    allow_hostile_trees: bool = field(
        default=False,
        metadata={"help": "TEST ONLY: accept POST /_hostile (commits paths the Hub refuses) and serve such trees."},
    )

    def __post_init__(self):
        self.token = self.token or os.environ.get(TOKEN_ENV) or None
        if not is_loopback(self.host) and not self.token:
            raise ValueError(
                f"host: {self.host!r} is not a loopback address; refusing to serve without a token "
                f"(--token or ${TOKEN_ENV}); every request must then carry it (clients: HF_TOKEN)"
            )
        if not 0 < self.port < 65536:
            raise ValueError(f"port: {self.port} is not a TCP port (1-65535)")
        if os.path.exists(self.storage) and not os.path.isdir(self.storage):
            raise ValueError(f"storage: {self.storage!r} exists and is not a folder")


def missing_extra(err: ImportError) -> str | None:
    """The message for an ImportError caused by a missing ``hub`` extra (``None``: some other import failed)."""
    name = (err.name or "").split(".")[0]
    if name not in SERVER_MODULES:
        return None
    return f"geollava-hub needs the server extra, which is not installed (no module {name!r}): {INSTALL_HINT}"


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``geollava-hub``."""
    from transformers import HfArgumentParser  # heavy: only when the command runs, not when the package imports

    parser = HfArgumentParser(HubArguments, prog="geollava-hub", description=__doc__.splitlines()[0])
    try:
        (args,) = parser.parse_args_into_dataclasses(args=argv)
    except ValueError as err:
        print(f"geollava-hub: {err}", file=sys.stderr)
        return 2
    try:
        # Function-local: the server's modules import fastapi/uvicorn, which only the optional `hub` extra installs.
        import uvicorn

        from upload.hub_server.app import create_app
        from upload.hub_server.state import HubState
        from upload.hub_server.store import HubStore
    except ImportError as err:
        message = missing_extra(err)
        if message is None:
            raise
        print(message, file=sys.stderr)
        return 1
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    store = HubStore(args.storage)
    store.root.mkdir(parents=True, exist_ok=True)
    store.load_index()
    guard = "a token required on every request" if args.token else "no token"
    hostile = "; TEST ONLY: hostile trees allowed" if args.allow_hostile_trees else ""
    print(
        f"geollava-hub: serving http://{args.host}:{args.port} from {store.root} "
        f"({len(store.repos)} repos; {guard}{hostile}; a stand-in for tests and offline staging, not a Hub)",
        flush=True,
    )
    state = HubState(store, token=args.token, hostile_trees=args.allow_hostile_trees)
    uvicorn.run(create_app(state), host=args.host, port=args.port, log_level="warning")
    return 0
