"""What one running loopback Hub holds besides its storage: the request log, armed faults, and its settings."""

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from upload.hub_server.store import HubStore


#: Repo types as they appear in API paths (``/api/datasets/...``) and in resolve URLs (``/datasets/...``).
TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}


@dataclass
class HubState:
    """The server's state, reachable from every handler as ``request.app.state.hub``."""

    store: HubStore
    #: When set, every request must carry it (``Authorization: Bearer``; LFS upload URLs are signed with it instead).
    token: str | None = None
    #: TEST ONLY: accept ``POST /_hostile``, which commits paths the Hub refuses, and serve such trees as they are.
    hostile_trees: bool = False
    #: Every request served so far, one ``METHOD path -> status`` line each (tests count them).
    log: list[str] = field(default_factory=list)
    #: Faults armed by tests through ``POST /_faults``: ``{"fail_lfs_put_after": N}`` lets N more LFS uploads
    #: through, then answers the next one with 507 (not retried by clients), as a server failing midway would;
    #: ``{"fail_commit_after": N}`` does the same to commits (their LFS objects are uploaded, the commit refused).
    faults: dict[str, int] = field(default_factory=dict)
    #: The latest tree listings, so that paging through 100K entries sorts them once, not once a page.
    listings: OrderedDict = field(default_factory=OrderedDict)

    def listing(self, key: tuple, build: Callable[[], list]) -> list:
        """The listing cached under ``key`` (a commit is immutable), built by ``build()`` when missing."""
        if key not in self.listings:
            self.listings[key] = build()
            while len(self.listings) > 4:
                self.listings.popitem(last=False)
        return self.listings[key]

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
