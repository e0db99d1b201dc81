"""Push a dataset folder, an adapter folder or the Space to the Hub as ONE commit.

    geollava-push dataset outputs/quickstart/dataset --repo-id my-org/geollava [--revision BRANCH] [--dry-run]

Creates the repo if needed, stages exactly what belongs to the artifact (``upload.staging``: never checkpoints or
optimizer state) and uploads it with one ``upload_folder`` commit; LFS blobs go up before the commit, so a push cut
midway leaves no commit and a rerun sends only what is missing. The endpoint comes from ``HF_ENDPOINT``
(huggingface.co by default) and the token from ``HF_TOKEN`` or the login cache; the token is never printed.
"""

import logging
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from model_cards.cli import parse_kind_folder_args
from upload.staging import ALLOW, KINDS, staged_files


__all__ = ["PushArguments", "main", "push", "repo_url", "staged_files"]

logger = logging.getLogger(__name__)

REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
USAGE = "geollava-push {dataset,model,space} FOLDER --repo-id ORG/NAME [--private] [--revision BRANCH] [--dry-run]"


@dataclass
class PushArguments:
    """What to push, where, and how."""

    kind: str = field(metadata={"help": f"What the folder holds: one of {', '.join(KINDS)} (first positional)."})
    folder: str = field(metadata={"help": "The artifact's folder (second positional)."})
    repo_id: str = field(metadata={"help": "ORG/NAME of the repo on the Hub (created if needed)."})
    private: bool = field(default=False, metadata={"help": "Create the repo private (an existing repo is unchanged)."})
    revision: str | None = field(default=None, metadata={"help": "Branch to commit to (created from main if needed)."})
    dry_run: bool = field(default=False, metadata={"help": "Print the plan (files, sizes, URL) and send nothing."})

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind: {self.kind!r} is not one of {KINDS}")
        if not REPO_ID.match(self.repo_id or ""):
            raise ValueError(f"repo_id: {self.repo_id!r} is not of the form ORG/NAME")
        if not Path(self.folder).is_dir():
            raise ValueError(f"folder: {self.folder!r} is not a folder")
        if self.revision is not None and not self.revision.strip():
            raise ValueError(f"revision: {self.revision!r} is empty")


def repo_url(kind: str, repo_id: str) -> str:
    """The repo's URL on the configured endpoint (``HF_ENDPOINT``)."""
    from huggingface_hub import constants

    prefix = {"dataset": "datasets/", "space": "spaces/", "model": ""}[kind]
    return f"{constants.ENDPOINT}/{prefix}{repo_id}"


def push(
    kind: str,
    folder: Path | str,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    dry_run: bool = False,
) -> dict:
    """Push ``folder`` as one commit.

    Args:
        kind: ``dataset``, ``model`` or ``space``.
        folder: The artifact's folder.
        repo_id: ``ORG/NAME`` on the Hub.
        private: Create the repo private.
        revision: Branch to commit to; created from ``main`` when missing.
        dry_run: Return the plan and send nothing.

    Returns:
        The plan: ``kind``, ``repo_id``, ``url``, ``revision``, ``files`` (path + bytes), ``total_bytes``, and
        ``commit`` (the commit id; ``None`` when nothing changed) unless ``dry_run``.

    Raises:
        FileNotFoundError: The folder is missing or holds nothing that belongs to a ``kind``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder")
    files = staged_files(kind, folder)
    if not files:
        raise FileNotFoundError(f"{folder}: nothing to push for a {kind} (expected e.g. {ALLOW[kind][:3]})")
    if not (folder / "README.md").exists():
        logger.warning("%s has no README.md card: pushing without one (render it: `geollava-card %s`)", folder, kind)
    plan = {
        "kind": kind,
        "repo_id": repo_id,
        "url": repo_url(kind, repo_id),
        "revision": revision or "main",
        "files": [{"path": f.as_posix(), "bytes": (folder / f).stat().st_size} for f in files],
    }
    plan["total_bytes"] = sum(f["bytes"] for f in plan["files"])
    if dry_run:
        return plan
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(
        repo_id, repo_type=kind, private=private, exist_ok=True, space_sdk="gradio" if kind == "space" else None
    )
    if revision and revision != "main":
        api.create_branch(repo_id, branch=revision, repo_type=kind, exist_ok=True)
    commit = api.upload_folder(
        folder_path=str(folder),
        repo_id=repo_id,
        repo_type=kind,
        revision=revision,
        allow_patterns=[f["path"] for f in plan["files"]],
        commit_message=f"Upload {kind} with geollava-push ({len(files)} files)",
    )
    plan["commit"] = getattr(commit, "oid", None)
    return plan


def parse_args(argv: list[str] | None = None) -> PushArguments:
    """Parse ``KIND FOLDER --repo-id ...`` (the two positionals become ``--kind``/``--folder``)."""
    return parse_kind_folder_args(
        PushArguments, argv, prog="geollava-push", usage=USAGE, description=__doc__.splitlines()[0]
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``geollava-push``."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        args = parse_args(argv)
        plan = push(
            args.kind, args.folder, args.repo_id, private=args.private, revision=args.revision, dry_run=args.dry_run
        )
    except (FileNotFoundError, ValueError) as err:
        print(f"geollava-push: {err}", file=sys.stderr)
        return 1
    except Exception as err:  # noqa: BLE001 - a failed push exits non-zero with the Hub's message, never the token
        print(f"geollava-push: the push failed ({type(err).__name__}): {err}", file=sys.stderr)
        return 1
    print(f"{'plan' if args.dry_run else 'pushed'}: {plan['kind']} -> {plan['url']} (revision {plan['revision']})")
    for f in plan["files"]:
        print(f"  {f['bytes']:>12,d}  {f['path']}")
    tail = "; nothing sent (dry run)" if args.dry_run else f"; commit {plan.get('commit')}"
    print(f"  {plan['total_bytes']:>12,d}  bytes in {len(plan['files'])} files{tail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
