"""The loopback Hub's storage: content-addressed blobs, commits and a repo index, persisted under one folder.

    storage/blobs/<sha256>           every file's bytes, once (regular files and LFS objects alike)
    storage/commits/<oid>.json       a commit: parent, message, date, changes {path: entry, or null: deleted}
    storage/lfs/<repo key>/<sha256>  an empty marker per LFS object a repo owns (uploaded, committed or not yet)
    storage/index.json               the repos: type, id, private, sdk, branches and their commits' ids

Commits hold only their changes, so a push of 100K files in 1,000 commits stores 100K entries, not 50M; the file map
of a commit is rebuilt from its ancestors (the latest few are cached). Every write goes through
:mod:`dataset_builder.atomic`, so a killed server leaves each file complete or absent.
"""

import hashlib
import json
import shutil
import time
from collections import OrderedDict
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import unquote

from dataset_builder.atomic import write_bytes, write_json


#: The ``.gitattributes`` a new repo starts with, as on the Hub (abridged).
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.parquet filter=lfs diff=lfs merge=lfs -text\n"
#: How many commits' file maps stay in memory (the heads being pushed to, and what was just read).
SNAPSHOT_CACHE = 8


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


def apply_changes(files: dict, changes: dict) -> dict:
    """Apply a commit's ``changes`` (``None``: deleted) to the file map ``files``, in place; returns it."""
    for path, entry in changes.items():
        if entry is None:
            files.pop(path, None)
        else:
            files[path] = entry
    return files


class HubStore:
    """Repos, commits and blobs of one server, in memory and on disk.

    A repo is ``{"commits": {oid: commit}, "branches": {name: oid}, "main": oid, "private", "created", "sdk",
    "lfs_objects": set of sha256}``; a commit is ``{"oid", "parent", "message", "date", "changes"}``.
    Handlers run on one event loop and never await in the middle of a change, so changes never interleave.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.repos: dict[tuple[str, str], dict] = {}
        self._snapshots: OrderedDict[str, dict] = OrderedDict()

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
        """Persist the repo index (commits are written once, by :meth:`new_commit`)."""
        keep = ("private", "created", "sdk", "branches")
        entries = [
            {"type": t, "id": i, **{k: repo[k] for k in keep}, "commits": list(repo["commits"])}
            for (t, i), repo in self.repos.items()
        ]
        write_json(self.root / "index.json", entries, indent=None)

    def load_index(self) -> None:
        """Load what :meth:`save_index` and :meth:`new_commit` wrote, if anything."""
        path = self.root / "index.json"
        if not path.exists():
            return
        for entry in json.loads(path.read_text()):
            rtype, repo_id = entry["type"], entry["id"]
            if isinstance(entry["commits"], dict):
                raise ValueError(f"{path}: written by an older geollava-hub (commits inline); use an empty --storage")
            repo = {k: entry[k] for k in ("private", "created", "sdk", "branches")}
            commits = self.root / "commits"
            repo["commits"] = {oid: json.loads((commits / f"{oid}.json").read_text()) for oid in entry["commits"]}
            repo["main"] = repo["branches"]["main"]
            marks = self._lfs_dir(rtype, repo_id)
            repo["lfs_objects"] = {p.name for p in marks.iterdir()} if marks.is_dir() else set()
            self.repos[(rtype, repo_id)] = repo

    # ------------------------------------------------------------------ repos
    def get_repo(self, rtype: str | None, repo_id: str) -> dict | None:
        """The repo, or ``None``."""
        return self.repos.get((rtype, repo_id)) if rtype else None

    def create_repo(self, rtype: str, repo_id: str, *, private: bool, sdk: str | None) -> bool:
        """Create a repo with its initial commit; ``False`` when it exists already."""
        if (rtype, repo_id) in self.repos:
            return False
        repo = {"commits": {}, "branches": {}, "main": None, "private": private, "created": now(), "sdk": sdk}
        repo["lfs_objects"] = set()
        shutil.rmtree(self._lfs_dir(rtype, repo_id), ignore_errors=True)  # a deleted namesake's objects
        self.repos[(rtype, repo_id)] = repo
        sha = self.put_blob(GITATTRIBUTES)
        self.new_commit(repo, {".gitattributes": regular_entry(GITATTRIBUTES, sha)}, "initial commit")
        return True

    def delete_repo(self, rtype: str, repo_id: str) -> bool:
        """Delete a repo (its blobs stay); ``False`` when there was none."""
        if self.repos.pop((rtype, repo_id), None) is None:
            return False
        shutil.rmtree(self._lfs_dir(rtype, repo_id), ignore_errors=True)
        self.save_index()
        return True

    def _lfs_dir(self, rtype: str, repo_id: str) -> Path:
        return self.root / "lfs" / hashlib.sha1(f"{rtype}/{repo_id}".encode()).hexdigest()[:20]

    def add_lfs_object(self, rtype: str, repo_id: str, sha: str) -> None:
        """Record that the repo owns the LFS object ``sha`` (kept even if no commit refers to it yet)."""
        repo = self.repos[(rtype, repo_id)]
        if sha not in repo["lfs_objects"]:
            write_bytes(self._lfs_dir(rtype, repo_id) / sha, b"")
            repo["lfs_objects"].add(sha)

    def owns_lfs_object(self, repo: dict, sha: str) -> bool:
        """Whether an upload of ``sha`` to ``repo`` can be skipped."""
        return sha in repo["lfs_objects"] and self.has_blob(sha)

    # ------------------------------------------------------------------ revisions and commits
    @staticmethod
    def branches(repo: dict) -> dict[str, str]:
        """The repo's branches, ``{name: head oid}``."""
        return repo["branches"]

    def resolve_rev(self, repo: dict, rev: str) -> str | None:
        """The commit oid a branch name, a full or a short (7+) commit id names; ``None`` when none."""
        rev = unquote(rev).removeprefix("refs/heads/")
        if rev in repo["branches"]:
            return repo["branches"][rev]
        if rev in repo["commits"]:
            return rev
        if len(rev) >= 7:
            return next((oid for oid in repo["commits"] if oid.startswith(rev)), None)
        return None

    def files_at(self, repo: dict, oid: str) -> dict[str, dict]:
        """The file map ``{path: entry}`` of a commit (do not modify it: it may be shared with the cache)."""
        if oid in self._snapshots:
            self._snapshots.move_to_end(oid)
            return self._snapshots[oid]
        chain, cursor = [], oid
        while cursor and cursor not in self._snapshots:
            chain.append(repo["commits"][cursor])
            cursor = repo["commits"][cursor]["parent"]
        files = dict(self._snapshots[cursor]) if cursor else {}
        for commit in reversed(chain):
            apply_changes(files, commit["changes"])
        self._cache(oid, files)
        return files

    def _cache(self, oid: str, files: dict) -> None:
        self._snapshots[oid] = files
        while len(self._snapshots) > SNAPSHOT_CACHE:
            self._snapshots.popitem(last=False)

    def new_commit(self, repo: dict, changes: dict, message: str, branch: str = "main") -> str:
        """Add a commit with ``changes`` (``{path: entry, or None to delete}``) on top of ``branch``; move it there."""
        parent = repo["branches"].get(branch, repo.get("main"))
        stamp = [parent, message, sorted((k, v and v["sha256"]) for k, v in changes.items()), time.time()]
        oid = hashlib.sha1(json.dumps(stamp).encode()).hexdigest()
        commit = {"oid": oid, "parent": parent, "message": message, "date": now(), "changes": changes}
        files = apply_changes(dict(self.files_at(repo, parent)) if parent else {}, changes)
        write_json(self.root / "commits" / f"{oid}.json", commit, indent=None)
        repo["commits"][oid] = commit
        repo["branches"][branch] = oid
        if branch == "main":
            repo["main"] = oid
        self._cache(oid, files)
        self.save_index()
        return oid

    def create_branch(self, repo: dict, branch: str, start: str) -> None:
        """Point a new branch at commit ``start``."""
        repo["branches"][branch] = start
        self.save_index()

    def history(self, repo: dict, oid: str | None) -> list[dict]:
        """The commits from ``oid`` back to the first, newest first."""
        out = []
        while oid:
            out.append(repo["commits"][oid])
            oid = repo["commits"][oid]["parent"]
        return out
