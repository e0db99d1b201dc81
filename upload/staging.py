"""What belongs in each pushed artifact: pure staging rules, no Hub calls.

A dataset push carries the card, the Parquet shards, the clips and the official JSON; a model push the adapter (or a
merged model's shards, config and export record), its masks and processor files, the card, metrics and plots, never
optimizer state or checkpoints; a base push a whole model's config, weights, processor files and card; a Space push
the app, its project modules, requirements, settings, README and examples; a metric push its scripts, card, page.
"""

import fnmatch
from pathlib import Path


#: The processor's files (tokenizer, chat template, image and video processors), in an adapter's or a base's repo.
PROCESSOR_FILES = [
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.*",
    "processor_config.json",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
]
#: What belongs in each artifact (``upload_folder`` allow patterns, matched on the relative path or its first part).
ALLOW: dict[str, list[str]] = {
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
        *PROCESSOR_FILES,
        "generation_config.json",
        # a merged model (geollava-export): its weights, config and export record
        "config.json",
        "model.safetensors",
        "model-*-of-*.safetensors",
        "model.safetensors.index.json",
        "geollava_export.json",
    ],
    "base": [
        "README.md",
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "model-*.safetensors",
        "model.safetensors.index.json",
        *PROCESSOR_FILES,
    ],
    "space": ["README.md", "app.py", "requirements.txt", "space_config.json", "examples/**", "*.py"],
    "metric": ["README.md", "app.py", "requirements.txt", "packages.txt", "*.py"],
}
#: The Hub repo type each artifact is pushed as: a base model is a model repo, an ``evaluate`` metric lives in a Space,
#: as on the Hub.
REPO_TYPE: dict[str, str] = {
    "dataset": "dataset",
    "model": "model",
    "base": "model",
    "space": "space",
    "metric": "space",
}
#: What never belongs, whatever the artifact: training state, checkpoints, temporary and hidden files.
IGNORE: list[str] = [
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
KINDS = tuple(ALLOW)


def _matches(rel: str, patterns: list[str]) -> bool:
    first = rel.split("/")[0]
    return any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(first, p) for p in patterns)


def is_staged(kind: str, rel: str) -> bool:
    """Whether the relative path ``rel`` belongs in an artifact of ``kind``.

    Args:
        kind: ``dataset``, ``model``, ``base``, ``space`` or ``metric``.
        rel: A POSIX path relative to the artifact's folder.

    Returns:
        True when ``rel`` matches the artifact's allow patterns and none of the ignore patterns.
    """
    if kind not in ALLOW:
        raise ValueError(f"kind: {kind!r} is not one of {KINDS}")
    return _matches(rel, ALLOW[kind]) and not _matches(rel, IGNORE)


def staged_files(kind: str, folder: Path | str) -> list[Path]:
    """The files of ``folder`` that a push of ``kind`` uploads, as sorted relative paths.

    Args:
        kind: ``dataset``, ``model``, ``base``, ``space`` or ``metric``.
        folder: The artifact's folder.

    Returns:
        Relative paths, sorted.
    """
    folder = Path(folder)
    rels = (p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return [Path(rel) for rel in sorted(rels) if is_staged(kind, rel)]
