"""The loopback Hub's storage: content-addressed blobs and a repo index, persisted under one folder.

    storage/blobs/<sha256>   every file's bytes, once (regular files and LFS objects alike)
    storage/index.json       repos: their commits (each commit's full file map), branches and LFS objects

Every write goes through :mod:`dataset_builder.atomic`, so a killed server leaves each file complete or absent.
"""

import hashlib
import json
import time
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import unquote

from dataset_builder.atomic import write_bytes, write_json


#: The ``.gitattributes`` a new repo starts with, as on the Hub (abridged).
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.parquet filter=lfs diff=lfs merge=lfs -text\n"


def now() -> str:
    """The current time as the Hub writes it."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def git_oid(data: bytes) -> str:
    """Git's blob id of ``data``."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha: str, size: int) -> bytes:
    """The Git LFS pointer file of an object."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {size}\n".encode()


def regular_entry(data: bytes, sha: str) -> dict:
    """The index entry of a regular (non-LFS) file."""
    return {"sha256": sha, "size": len(data), "lfs": False, "git_oid": git_oid(data)}


def lfs_entry(sha: str, size: int) -> dict:
    """The index entry of an LFS file (its git id is the pointer's)."""
    return {"sha256": sha, "size": size, "lfs": True, "git_oid": git_oid(lfs_pointer(sha, size))}


class HubStore:
    """Repos, commits and blobs of one server, in memory and on disk.

    A repo is ``{"commits": {oid: commit}, "branches": {name: oid}, "main": oid, "private", "created", "sdk",
    "lfs_objects": [sha256, ...]}``; a commit is ``{"oid", "parent", "message", "files": {path: entry}, "date"}``.
    Handlers run on one event loop and never await in the middle of a change, so changes never interleave.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.repos: dict[tuple[str, str], dict] = {}

    # ------------------------------------------------------------------ blobs
    def blob_path(self, sha: str) -> Path:
        """Where the blob with this sha256 lives."""
        return self.root / "blobs" / sha

    def has_blob(self, sha: str) -> bool:
        """Whether the blob is stored."""
        return self.blob_path(sha).exists()

    def put_blob(self, data: bytes) -> str:
        """Store ``data`` (once) and return its sha256."""
        sha = hashlib.sha256(data).hexdigest()
        if not self.has_blob(sha):
            write_bytes(self.blob_path(sha), data)
        return sha

    def read_text(self, sha: str) -> str:
        """A blob as text (undecodable bytes replaced)."""
        return self.blob_path(sha).read_text(encoding="utf-8", errors="replace")

    # ------------------------------------------------------------------ index
    def save_index(self) -> None:
        """Persist the repo index next to the blobs, so repos survive a restart."""
        write_json(self.root / "index.json", [{"type": t, "id": i, **repo} for (t, i), repo in self.repos.items()])

    def load_index(self) -> None:
        """Load the repo index written by :meth:`save_index`, if any."""
        path = self.root / "index.json"
        if path.exists():
            for entry in json.loads(path.read_text()):
                rtype, repo_id = entry.pop("type"), entry.pop("id")
                self.repos[(rtype, repo_id)] = entry

    # ------------------------------------------------------------------ repos
    def get_repo(self, rtype: str | None, repo_id: str) -> dict | None:
        """The repo, or ``None``."""
        return self.repos.get((rtype, repo_id)) if rtype else None

    def create_repo(self, rtype: str, repo_id: str, *, private: bool, sdk: str | None) -> bool:
        """Create a repo with its initial commit; ``False`` when it exists already."""
        if (rtype, repo_id) in self.repos:
            return False
        repo = {"commits": {}, "main": None, "private": private, "created": now(), "sdk": sdk, "branches": {}}
        sha = self.put_blob(GITATTRIBUTES)
        self.repos[(rtype, repo_id)] = repo
        self.new_commit(repo, {".gitattributes": regular_entry(GITATTRIBUTES, sha)}, "initial commit")
        return True

    def delete_repo(self, rtype: str, repo_id: str) -> bool:
        """Delete a repo (its blobs stay); ``False`` when there was none."""
        if self.repos.pop((rtype, repo_id), None) is None:
            return False
        self.save_index()
        return True

    def add_lfs_object(self, repo: dict, sha: str) -> None:
        """Record that ``repo`` owns the LFS object ``sha`` (kept even if no commit refers to it yet)."""
        objects = repo.setdefault("lfs_objects", [])
        if sha not in objects:
            objects.append(sha)
            self.save_index()

    def owns_lfs_object(self, repo: dict, sha: str) -> bool:
        """Whether an upload of ``sha`` to ``repo`` can be skipped."""
        return sha in repo.get("lfs_objects", []) and self.has_blob(sha)

    # ------------------------------------------------------------------ revisions and commits
    @staticmethod
    def branches(repo: dict) -> dict[str, str]:
        """The repo's branches, ``{name: head oid}``."""
        return repo.setdefault("branches", {"main": repo["main"]})

    def resolve_rev(self, repo: dict, rev: str) -> str | None:
        """The commit oid a branch name, a full or a short (7+) commit id names; ``None`` when none."""
        rev = unquote(rev).removeprefix("refs/heads/")
        branches = self.branches(repo)
        if rev in branches:
            return branches[rev]
        if rev in repo["commits"]:
            return rev
        if len(rev) >= 7:
            return next((oid for oid in repo["commits"] if oid.startswith(rev)), None)
        return None

    @staticmethod
    def files_at(repo: dict, oid: str) -> dict[str, dict]:
        """The file map ``{path: entry}`` of a commit."""
        return repo["commits"][oid]["files"]

    def new_commit(self, repo: dict, files: dict, message: str, branch: str = "main") -> str:
        """Add a commit holding ``files`` on top of ``branch`` and move the branch to it."""
        branches = repo.setdefault("branches", {})
        parent = branches.get(branch, repo.get("main"))
        oid = hashlib.sha1(
            json.dumps([parent, message, sorted((k, v["sha256"]) for k, v in files.items()), time.time()]).encode()
        ).hexdigest()
        repo["commits"][oid] = {"oid": oid, "parent": parent, "message": message, "files": files, "date": now()}
        branches[branch] = oid
        if branch == "main":
            repo["main"] = oid
        self.save_index()
        return oid

    def create_branch(self, repo: dict, branch: str, start: str) -> None:
        """Point a new branch at commit ``start``."""
        self.branches(repo)[branch] = start
        self.save_index()

    def history(self, repo: dict, oid: str | None) -> list[dict]:
        """The commits from ``oid`` back to the first, newest first."""
        out = []
        while oid:
            out.append(repo["commits"][oid])
            oid = repo["commits"][oid]["parent"]
        return out
