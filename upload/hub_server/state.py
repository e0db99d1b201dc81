"""What one running loopback Hub holds besides its storage: the request log, armed faults, and its settings."""

from dataclasses import dataclass, field

from upload.hub_server.store import HubStore


#: Repo types as they appear in API paths (``/api/datasets/...``) and in resolve URLs (``/datasets/...``).
TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}


@dataclass
class HubState:
    """The server's state, reachable from every handler as ``request.app.state.hub``."""

    store: HubStore
    #: Every request served so far, one ``METHOD path -> status`` line each (tests count them).
    log: list[str] = field(default_factory=list)
    #: Faults armed by tests through ``POST /_faults``: ``{"fail_lfs_put_after": N}`` lets N more LFS uploads
    #: through, then answers the next one with 507 (not retried by clients), as a server failing midway would.
    faults: dict[str, int] = field(default_factory=dict)

    def take_fault(self, name: str) -> bool:
        """Count one event against the armed fault ``name``; ``True`` when this event must fail (once)."""
        left = self.faults.get(name)
        if left is None:
            return False
        if left <= 0:
            self.faults.pop(name)
            return True
        self.faults[name] = left - 1
        return False
