"""Push a large folder as many small commits that a rerun resumes: huggingface_hub's create_commit, part by part.

huggingface_hub 2.4 has no ``upload_large_folder``, and its ``upload_folder`` splits a folder into several commits
only through Xet, which plain Git LFS servers (the loopback Hub among them) do not speak; this module does the same
with the client's public calls. Parts, resume records and memory: docs/release.md "Large folders".
"""

import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi
from tqdm.auto import tqdm

from dataset_builder.atomic import write_json


logger = logging.getLogger(__name__)

#: Where the record of committed parts lives, relative to the pushed folder.
JOURNAL_DIR = Path(".cache") / "huggingface" / "geollava-push"


def _stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


@dataclass
class PushJournal:
    """The committed parts of one push target (endpoint, repo, type, branch), one JSON file per commit."""

    folder: Path
    endpoint: str
    kind: str
    repo_id: str
    revision: str

    @property
    def path(self) -> Path:
        """The target's folder of records."""
        key = hashlib.sha1(f"{self.endpoint}|{self.kind}|{self.repo_id}|{self.revision}".encode()).hexdigest()[:16]
        return self.folder / JOURNAL_DIR / key

    def committed(self, api: HfApi) -> dict[str, tuple[int, int]]:
        """``{path: (size, mtime_ns)}`` of the files recorded in commits that the branch's history still holds."""
        records = sorted(self.path.glob("commit-*.json"))
        if not records:
            return {}
        history = {
            c.commit_id for c in api.list_repo_commits(self.repo_id, repo_type=self.kind, revision=self.revision)
        }
        out: dict[str, tuple[int, int]] = {}
        for record in records:
            data = json.loads(record.read_text())
            if data["commit"] not in history:
                logger.warning(
                    "%s: commit %s is not on %s any more; its files are pushed again",
                    record,
                    data["commit"],
                    self.revision,
                )
                continue
            out.update({path: (size, mtime) for path, size, mtime in data["files"]})
        return out

    def record(self, commit: str, files: list[tuple[str, int, int]]) -> None:
        """Record that ``commit`` holds ``files`` (``(path, size, mtime_ns)`` each)."""
        if not (self.path / "target.json").exists():
            target = {"endpoint": self.endpoint, "kind": self.kind, "repo_id": self.repo_id, "revision": self.revision}
            write_json(self.path / "target.json", target)
        write_json(self.path / f"commit-{commit}.json", {"commit": commit, "files": files}, indent=None)


def parts(
    files: list[str], folder: Path, committed: dict, files_per_commit: int
) -> Iterator[list[tuple[str, int, int]]]:
    """The files still to push, in parts of at most ``files_per_commit`` (README.md last), with size and mtime."""
    ordered = [f for f in files if f != "README.md"] + [f for f in files if f == "README.md"]
    part: list[tuple[str, int, int]] = []
    for rel in ordered:
        size, mtime = _stat(folder / rel)
        if committed.get(rel) == (size, mtime):
            continue
        part.append((rel, size, mtime))
        if len(part) == files_per_commit:
            yield part
            part = []
    if part:
        yield part


def push_in_parts(
    api: HfApi,
    folder: Path,
    files: list[str],
    *,
    repo_id: str,
    kind: str,
    revision: str | None,
    files_per_commit: int,
    message: str,
) -> dict:
    """Push ``files`` (paths relative to ``folder``) in commits of ``files_per_commit``, resuming a previous run.

    Returns:
        ``commit`` (the branch's head afterwards), ``parts`` (how many parts this run committed; a part whose files
        the branch already held unchanged makes no commit) and ``resumed_files`` (files an earlier run had
        committed, skipped without being read).
    """
    journal = PushJournal(folder, api.endpoint, kind, repo_id, revision or "main")
    committed = journal.committed(api)
    resumed = sum(1 for f in files if committed.get(f) == _stat(folder / f))
    if resumed:
        logger.info("resuming: %d of %d files were committed by an earlier run", resumed, len(files))
    head, done = None, 0
    with tqdm(total=len(files), initial=resumed, unit="file", desc=f"push {repo_id}") as bar:
        for part in parts(files, folder, committed, files_per_commit):
            operations = [
                CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(folder / rel)) for rel, _, _ in part
            ]
            info = api.create_commit(
                repo_id,
                operations=operations,
                commit_message=f"{message} (part {done + 1}, {len(part)} files)",
                repo_type=kind,
                revision=revision,
            )
            journal.record(info.oid, part)
            head, done = info.oid, done + 1
            bar.update(len(part))
    if head is None:  # everything was committed already
        head = api.repo_info(repo_id, repo_type=kind, revision=revision).sha
    return {"commit": head, "parts": done, "resumed_files": resumed}
