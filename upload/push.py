"""Push a dataset, a model (adapter or merged), a base model, the Space or a metric to the Hub as ONE commit.

    geollava-push dataset outputs/quickstart/dataset --repo-id my-org/geollava [--revision BRANCH] [--dry-run]

Stages exactly what belongs to the artifact (``upload.staging``; a Space through ``upload.space_bundle``, a metric
through ``upload.metric_space``) and pushes it with one ``create_commit``; a folder over the large-folder thresholds
goes up in parts (``upload.large_push``). See docs/release.md "Pushes".
"""

import logging
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi, constants

from model_cards.cli import parse_kind_folder_args
from trainer.evaluation.hub_metrics.staging import MODULES as METRIC_MODULES
from trainer.evaluation.hub_metrics.staging import stage_metric_module
from upload.large_push import push_in_parts
from upload.metric_space import stage_metric
from upload.space_bundle import stage_space
from upload.staging import ALLOW, KINDS, REPO_TYPE, staged_files


__all__ = ["PushArguments", "main", "push", "repo_url", "staged_files"]

logger = logging.getLogger(__name__)

REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
USAGE = (
    "geollava-push {dataset,model,base,space,metric} FOLDER --repo-id ORG/NAME [--private] [--revision BRANCH]\n"
    "       [--dry-run] [--large-folder-files N] [--large-folder-bytes B] [--files-per-commit K]\n"
    "       space only: [--model-repo-id ORG/NAME] [--base-model ORG/NAME] [--dataset-repo-id ORG/NAME] [--hardware H]"
)
#: The flags of a Space push: what the Space serves (written into its space_config.json and card).
SPACE_FLAGS = ("model_repo_id", "base_model", "dataset_repo_id", "hardware")
#: Above either, a push is cut into resumable commits: one commit of thousands of files is slow and can time out.
LARGE_FOLDER_FILES, LARGE_FOLDER_BYTES = 1000, 5_000_000_000
#: The Hub recommends under 100 files a commit (hub docs, "Repository limitations and recommendations").
FILES_PER_COMMIT = 100


@dataclass
class PushArguments:
    """What to push, where, and how."""

    kind: str = field(metadata={"help": f"What the folder holds: one of {', '.join(KINDS)} (first positional)."})
    folder: str = field(
        metadata={
            "help": "The artifact's folder (second positional); for a metric, also a module of the project by name "
            "(geollava_metrics, levircc_metrics), staged first."
        }
    )
    repo_id: str = field(metadata={"help": "ORG/NAME of the repo on the Hub (created if needed)."})
    private: bool = field(default=False, metadata={"help": "Create the repo private (an existing repo is unchanged)."})
    revision: str | None = field(default=None, metadata={"help": "Branch to commit to (created from main if needed)."})
    dry_run: bool = field(default=False, metadata={"help": "Print the plan (files, sizes, URL) and send nothing."})
    large_folder_files: int = field(
        default=LARGE_FOLDER_FILES,
        metadata={"help": "Above this many files, push in resumable commits of --files-per-commit files."},
    )
    large_folder_bytes: int = field(
        default=LARGE_FOLDER_BYTES, metadata={"help": "Above this many bytes, push in resumable commits too."}
    )
    files_per_commit: int = field(
        default=FILES_PER_COMMIT, metadata={"help": "Files per commit of a large push (the Hub advises under 100)."}
    )
    model_repo_id: str | None = field(
        default=None, metadata={"help": "Space: Hub id of the adapter it serves (default: its space_config.json's)."}
    )
    base_model: str | None = field(
        default=None, metadata={"help": "Space: Hub id of the base model (default: the adapter's own base model)."}
    )
    dataset_repo_id: str | None = field(default=None, metadata={"help": "Space: Hub id of the dataset it names."})
    hardware: str | None = field(
        default=None, metadata={"help": "Space: the hardware its card suggests (a Hub name; default zero-a10g)."}
    )

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind: {self.kind!r} is not one of {KINDS}")
        if not REPO_ID.match(self.repo_id or ""):
            raise ValueError(f"repo_id: {self.repo_id!r} is not of the form ORG/NAME")
        if not Path(self.folder).is_dir() and not (self.kind == "metric" and self.folder in METRIC_MODULES):
            known = f" or one of the project's metric modules {sorted(METRIC_MODULES)}" * (self.kind == "metric")
            raise ValueError(f"folder: {self.folder!r} is not a folder{known}")
        if self.revision is not None and not self.revision.strip():
            raise ValueError(f"revision: {self.revision!r} is empty")
        for name in ("large_folder_files", "large_folder_bytes", "files_per_commit"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: {getattr(self, name)} must be at least 1")
        for name in SPACE_FLAGS:
            if getattr(self, name) is not None and self.kind != "space":
                raise ValueError(f"{name}: only a space push takes it (this is a {self.kind} push)")

    def release(self) -> dict:
        """The Space flags that were given, by name."""
        return {name: getattr(self, name) for name in SPACE_FLAGS if getattr(self, name) is not None}


def repo_url(kind: str, repo_id: str) -> str:
    """The repo's URL on the configured endpoint (``HF_ENDPOINT``)."""
    prefix = {"dataset": "datasets/", "space": "spaces/", "model": ""}[REPO_TYPE[kind]]
    return f"{constants.ENDPOINT}/{prefix}{repo_id}"


def push(
    kind: str,
    folder: Path | str,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    dry_run: bool = False,
    large_folder_files: int = LARGE_FOLDER_FILES,
    large_folder_bytes: int = LARGE_FOLDER_BYTES,
    files_per_commit: int = FILES_PER_COMMIT,
    release: dict | None = None,
) -> dict:
    """Push ``folder`` as one commit, or in resumable commits when it is large.

    A ``space`` or ``metric`` folder is staged first into a temporary folder (``upload.space_bundle``,
    ``upload.metric_space``) and that is pushed.

    Args:
        kind: ``dataset``, ``model`` (an adapter), ``base`` (a full model), ``space`` or ``metric``.
        folder: The artifact's folder.
        repo_id: ``ORG/NAME`` on the Hub.
        private: Create the repo private.
        revision: Branch to commit to; created from ``main`` when missing.
        dry_run: Return the plan and send nothing.
        large_folder_files: Above this many files, push in parts (``upload.large_push``).
        large_folder_bytes: Above this many bytes, push in parts.
        files_per_commit: Files per commit of a push in parts.
        release: A Space's settings, any of ``model_repo_id``, ``base_model``, ``dataset_repo_id``, ``hardware``
            (default: the folder's ``space_config.json``).

    Returns:
        The plan: ``kind``, ``repo_id``, ``url``, ``revision``, ``files`` (path + bytes), ``total_bytes``,
        ``files_per_commit`` (``None``: one commit), and unless ``dry_run`` ``commit`` (the commit id; ``None`` when
        nothing changed), plus ``parts`` and ``resumed_files`` for a push in parts.

    Raises:
        FileNotFoundError: The folder is missing or holds nothing that belongs to a ``kind``.
        ValueError: ``release`` for another kind than ``space``; what the Space or metric staging refuses.
    """
    if kind == "metric" and not Path(folder).is_dir() and str(folder) in METRIC_MODULES:
        with tempfile.TemporaryDirectory(prefix="geollava-metric-module-") as tmp:
            module = stage_metric_module(str(folder), tmp, repo_id=repo_id)
            return push(kind, module, repo_id, private=private, revision=revision, dry_run=dry_run)
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder")
    if release and kind != "space":
        raise ValueError(f"{sorted(release)}: only a space push takes these (this is a {kind} push)")
    options = {
        "revision": revision,
        "dry_run": dry_run,
        "private": private,
        "large": (large_folder_files, large_folder_bytes, files_per_commit),
    }
    if kind not in ("space", "metric"):
        return _push_folder(kind, folder, repo_id, **options)
    with tempfile.TemporaryDirectory(prefix=f"geollava-{kind}-") as tmp:
        staged = Path(tmp) / "repo"
        if kind == "space":
            stage_space(folder, staged, repo_id=repo_id, **(release or {}))
        else:
            stage_metric(folder, staged, repo_id=repo_id)
        return _push_folder(kind, staged, repo_id, **options)


def _push_folder(
    kind: str, folder: Path, repo_id: str, *, revision: str | None, dry_run: bool, private: bool, large: tuple
) -> dict:
    """The plan of pushing ``folder`` as it is (sent unless ``dry_run``); see :func:`push`."""
    large_folder_files, large_folder_bytes, files_per_commit = large
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
    large = len(files) > large_folder_files or plan["total_bytes"] > large_folder_bytes
    plan["files_per_commit"] = files_per_commit if large else None
    return plan if dry_run else send(plan, folder, private=private)


def send(plan: dict, folder: Path, *, private: bool = False) -> dict:
    """Create the repo (and branch) of ``plan`` and push its files: one commit, or parts when it says so.

    Returns:
        ``plan`` with ``commit`` (and ``parts``, ``resumed_files`` for a push in parts).
    """
    kind, repo_id, paths = REPO_TYPE[plan["kind"]], plan["repo_id"], [f["path"] for f in plan["files"]]
    revision = None if plan["revision"] == "main" else plan["revision"]
    api = HfApi()
    api.create_repo(
        repo_id, repo_type=kind, private=private, exist_ok=True, space_sdk="gradio" if kind == "space" else None
    )
    if revision:
        api.create_branch(repo_id, branch=revision, repo_type=kind, exist_ok=True)
    message = f"Upload {plan['kind']} with geollava-push ({len(paths)} files)"
    if plan["files_per_commit"]:
        parts = push_in_parts(
            api,
            folder,
            paths,
            repo_id=repo_id,
            kind=kind,
            revision=revision,
            files_per_commit=plan["files_per_commit"],
            message=message,
        )
        return plan | parts
    # create_commit, not upload_folder: upload_folder matches every file against every allow pattern (quadratic in
    # files), and with hf_xet installed it splits a folder into several commits on its own.
    operations = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(folder / p)) for p in paths]
    commit = api.create_commit(
        repo_id, operations=operations, commit_message=message, repo_type=kind, revision=revision
    )
    return plan | {"commit": getattr(commit, "oid", None)}


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``geollava-push``."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        args = parse_kind_folder_args(
            PushArguments, argv, prog="geollava-push", usage=USAGE, description=__doc__.splitlines()[0]
        )
        plan = push(
            args.kind,
            args.folder,
            args.repo_id,
            private=args.private,
            revision=args.revision,
            dry_run=args.dry_run,
            large_folder_files=args.large_folder_files,
            large_folder_bytes=args.large_folder_bytes,
            files_per_commit=args.files_per_commit,
            release=args.release(),
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
    if plan["files_per_commit"] is None:
        print("  as one commit")
    elif args.dry_run:
        print(f"  in resumable commits of {plan['files_per_commit']} files (a large folder)")
    else:
        print(
            f"  in resumable commits of {plan['files_per_commit']} files: {plan['parts']} parts pushed by this run, "
            f"{plan['resumed_files']} files committed by an earlier run"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
