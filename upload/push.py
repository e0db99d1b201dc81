"""Push a dataset folder, an adapter folder or the Space to the Hub as ONE commit.

    geollava-push dataset outputs/quickstart/dataset --repo-id my-org/geollava [--revision BRANCH] [--dry-run]

Creates the repo if needed, stages exactly what belongs to the artifact (never checkpoints or optimizer state) and
uploads it with one ``upload_folder`` commit. The endpoint comes from ``HF_ENDPOINT`` (huggingface.co by default) and
the token from ``HF_TOKEN`` or the login cache; the token is never printed.
"""

import argparse
import fnmatch
import logging
import sys
from pathlib import Path


logger = logging.getLogger(__name__)

#: What belongs in each artifact (``upload_folder`` allow patterns) and what never does.
ALLOW = {
    "dataset": ["README.md", "data/**", "videos/**", "geollava_json/**", "build_report.json", "*.parquet"],
    "model": [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "pruning_masks.safetensors",
        "pruning.json",
        "run_summary.json",
        "metrics.json",
        "report.md",
        "*.png",
        "tokenizer*",
        "special_tokens_map.json",
        "chat_template.*",
        "processor_config.json",
        "preprocessor_config.json",
        "video_preprocessor_config.json",
    ],
    "space": ["README.md", "app.py", "requirements.txt", "examples/**", "*.py"],
}
IGNORE = [
    "checkpoint-*",
    "checkpoint-*/**",
    "optimizer.pt",
    "scheduler.pt",
    "rng_state*.pth",
    "trainer_state.json",
    "training_args.bin",
    "*.tmp",
    ".*",
    "**/.*",
    "__pycache__/**",
    "**/__pycache__/**",
]
REPO_TYPES = {"dataset": "dataset", "model": "model", "space": "space"}


def staged_files(kind: str, folder: Path) -> list[Path]:
    """The files of ``folder`` that a push of ``kind`` uploads (relative paths)."""

    def matches(rel: str, patterns: list[str]) -> bool:
        return any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(rel.split("/")[0], p) for p in patterns)

    files = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if matches(rel, ALLOW[kind]) and not matches(rel, IGNORE):
            files.append(Path(rel))
    return files


def repo_url(kind: str, repo_id: str) -> str:
    """The repo's URL on the configured endpoint."""
    from huggingface_hub import constants

    prefix = {"dataset": "datasets/", "space": "spaces/", "model": ""}[kind]
    return f"{constants.ENDPOINT}/{prefix}{repo_id}"


def push(
    kind: str, folder: Path, repo_id: str, *, private: bool = False, revision: str | None = None, dry_run: bool = False
) -> dict:
    """Push ``folder`` as one commit; return the plan (and the commit when not a dry run)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder")
    files = staged_files(kind, folder)
    if not files:
        raise FileNotFoundError(f"{folder}: nothing to push for a {kind} (expected e.g. {ALLOW[kind][:3]})")
    if not (folder / "README.md").exists():
        logger.warning(
            "%s has no README.md card: pushing without one (render it with `geollava-card %s`)", folder, kind
        )
    plan = {
        "kind": kind,
        "repo_id": repo_id,
        "url": repo_url(kind, repo_id),
        "revision": revision or "main",
        "files": [{"path": str(f), "bytes": (folder / f).stat().st_size} for f in files],
    }
    plan["total_bytes"] = sum(f["bytes"] for f in plan["files"])
    if dry_run:
        return plan
    from huggingface_hub import HfApi

    api = HfApi()
    repo_type = REPO_TYPES[kind]
    api.create_repo(
        repo_id, repo_type=repo_type, private=private, exist_ok=True, space_sdk="gradio" if kind == "space" else None
    )
    if revision and revision != "main":
        api.create_branch(repo_id, branch=revision, repo_type=repo_type, exist_ok=True)
    commit = api.upload_folder(
        folder_path=str(folder),
        repo_id=repo_id,
        repo_type=repo_type,
        revision=revision,
        allow_patterns=[str(f) for f in files],
        commit_message=f"Upload {kind} with geollava-push ({len(files)} files)",
    )
    plan["commit"] = getattr(commit, "oid", None)
    return plan


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``geollava-push``."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    parser = argparse.ArgumentParser(prog="geollava-push", description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=sorted(ALLOW), help="what the folder holds")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--repo-id", required=True, help="ORG/NAME on the Hub")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--revision", default=None, help="branch to commit to (created if needed)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and send nothing")
    args = parser.parse_args(argv)
    try:
        plan = push(
            args.kind, args.folder, args.repo_id, private=args.private, revision=args.revision, dry_run=args.dry_run
        )
    except (FileNotFoundError, OSError) as err:
        print(f"geollava-push: {err}", file=sys.stderr)
        return 1
    print(f"{'plan' if args.dry_run else 'pushed'}: {plan['kind']} -> {plan['url']} (revision {plan['revision']})")
    for f in plan["files"]:
        print(f"  {f['bytes']:>12,d}  {f['path']}")
    print(
        f"  {plan['total_bytes']:>12,d}  bytes in {len(plan['files'])} files"
        + ("" if args.dry_run else f"; commit {plan.get('commit')}")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
