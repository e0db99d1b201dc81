"""Load a pushed release back from the Hub with an empty cache and check it equals the local folders.

    HF_ENDPOINT=http://127.0.0.1:PORT HF_HOME=/tmp/empty-hf-home HF_HUB_DISABLE_XET=1 python -m upload.roundtrip \
        --repos '{"dataset": "org/geollava", "model": "org/geollava-tiny-lora"}' \
        --dataset outputs/quickstart/dataset --adapter outputs/quickstart/adapter --base outputs/quickstart/base

Prints the report as one JSON line; exits 1 naming the first difference. See docs/release.md "Loading a release back".
"""

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path


#: The dataset configs every release carries (CONTRACTS.md §2); a build with --sequences adds `sequences`.
CONFIGS = ("default", "sample_10k")


class RoundTripError(RuntimeError):
    """What was loaded back from the Hub differs from what was pushed; the message names the first difference."""


def card_configs(local_dataset: str | Path) -> list[str]:
    """The config names the local dataset card's YAML lists (``configs:``), in its order."""
    from huggingface_hub import DatasetCard  # imported here: huggingface_hub reads HF_ENDPOINT when it is imported

    configs = DatasetCard.load(Path(local_dataset) / "README.md").data.to_dict().get("configs") or []
    return [c["config_name"] for c in configs]


def check_dataset(repo_id: str, local_dataset: str | Path, configs: Sequence[str] | None = None) -> dict:
    """Compare each config of the dataset repo with the local folder; return ``{config: {split: rows}}``.

    Args:
        repo_id: The dataset repo on the Hub.
        local_dataset: The folder that was pushed.
        configs: The configs to compare; by default every one the local card lists, which must include
            :data:`CONFIGS`.

    Raises:
        RoundTripError: Naming the config, split and field that differ, or a config the release lacks.
    """
    # Imported here, not at the top: HF_ENDPOINT/HF_HOME must already be set when `datasets` is imported.
    from datasets import load_dataset

    if configs is None:
        configs = card_configs(local_dataset)
        if missing := [c for c in CONFIGS if c not in configs]:
            raise RoundTripError(f"{local_dataset}/README.md: the card's configs lack {missing}")
    report = {}
    for config in configs:
        hub = load_dataset(repo_id, config)
        local = load_dataset(str(local_dataset), config, download_mode="force_redownload")
        if set(hub) != set(local):
            raise RoundTripError(f"{repo_id} ({config}): splits {sorted(hub)} on the Hub, {sorted(local)} locally")
        for split in local:
            for what in ("features", "id", "conversations"):
                ours = local[split].features if what == "features" else local[split][what]
                theirs = hub[split].features if what == "features" else hub[split][what]
                if ours != theirs:
                    raise RoundTripError(f"{repo_id} ({config}, {split}): '{what}' differs from {local_dataset}")
        report[config] = {split: hub[split].num_rows for split in hub}
    return report


def _load_adapter(base: str | Path, adapter: str | Path, masks):
    # Imported here: transformers and peft import huggingface_hub, which reads HF_ENDPOINT when imported.
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from trainer.pruning.masks import apply_masks  # pulls transformers (14 s): only in the checking process

    model = AutoModelForImageTextToText.from_pretrained(str(base))
    if masks:
        apply_masks(model, masks)
    return PeftModel.from_pretrained(model, str(adapter))


def check_adapter(repo_id: str, local_adapter: str | Path, base: str | Path) -> dict:
    """Load the adapter repo (masks, then LoRA) on ``base``, as its card says, and compare every tensor.

    Returns:
        ``{"adapter_tensors_identical": True, "masks": number of masked modules}``.

    Raises:
        RoundTripError: Naming the first tensor that differs, or a mask set that does not match.
    """
    # Imported here: huggingface_hub reads HF_ENDPOINT when it is imported (see the module docstring).
    import torch
    from huggingface_hub import snapshot_download

    from trainer.pruning.masks import load_masks  # pulls transformers (14 s): only in the checking process

    masks = load_masks(snapshot_download(repo_id))
    local_masks = load_masks(local_adapter)
    if set(masks or {}) != set(local_masks or {}):
        raise RoundTripError(f"{repo_id}: its pruning masks cover other modules than {local_adapter}'s")
    hub = _load_adapter(base, repo_id, masks).state_dict()
    local = _load_adapter(base, local_adapter, local_masks).state_dict()
    if list(hub) != list(local):
        raise RoundTripError(f"{repo_id}: loaded with other tensor names than {local_adapter}")
    for name, tensor in hub.items():
        if not torch.equal(tensor, local[name]):
            raise RoundTripError(f"{repo_id}: tensor {name} differs from {local_adapter}'s")
    return {"adapter_tensors_identical": True, "masks": len(masks or {})}


def check_round_trip(repos: dict, dataset: str | Path, adapter: str | Path, base: str | Path) -> dict:
    """The dataset and adapter checks together: ``{config: {split: rows}, "adapter_tensors_identical", "masks"}``."""
    return {**check_dataset(repos["dataset"], dataset), **check_adapter(repos["model"], adapter, base)}


def run_in_fresh_process(
    repos: dict,
    dataset: str | Path,
    adapter: str | Path,
    base: str | Path,
    *,
    env: dict[str, str],
    hf_home: str | Path,
    log_path: str | Path,
) -> dict:
    """Run this module in a new Python process with ``env`` (HF_ENDPOINT, token, ...) and an empty ``hf_home``.

    Args:
        repos: ``{"dataset": repo id, "model": repo id}``.
        dataset: The local dataset folder that was pushed.
        adapter: The local adapter folder that was pushed.
        base: The base model the adapter belongs to.
        env: Variables to set in the new process (over this one's environment).
        hf_home: Its ``HF_HOME``: must not exist yet or be empty, so nothing comes from a cache.
        log_path: Where its output goes.

    Returns:
        The report (:func:`check_round_trip`).

    Raises:
        RoundTripError: If the check failed, with the end of its log.
    """
    hf_home = Path(hf_home)
    if hf_home.exists() and any(hf_home.iterdir()):
        raise ValueError(f"{hf_home}: HF_HOME of the round trip must be empty, so that nothing comes from a cache")
    command = [sys.executable, "-m", "upload.roundtrip", "--repos", json.dumps(repos)]
    command += ["--dataset", str(dataset), "--adapter", str(adapter), "--base", str(base)]
    proc = subprocess.run(
        command,
        env={**os.environ, **env, "HF_HOME": str(hf_home)},
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],  # this checkout's packages, whatever the caller's cwd
    )
    Path(log_path).write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RoundTripError(f"round trip failed (log: {log_path}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m upload.roundtrip``: print the report as one JSON line, or exit 1."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repos", required=True, help='JSON: {"dataset": repo id, "model": repo id}')
    parser.add_argument("--dataset", required=True, help="the local dataset folder that was pushed")
    parser.add_argument("--adapter", required=True, help="the local adapter folder that was pushed")
    parser.add_argument("--base", required=True, help="the base model of the adapter")
    args = parser.parse_args(argv)
    try:
        report = check_round_trip(json.loads(args.repos), args.dataset, args.adapter, args.base)
    except RoundTripError as err:
        print(f"upload.roundtrip: {err}", file=sys.stderr)  # noqa: T201 (a command's verdict)
        return 1
    print(json.dumps(report))  # noqa: T201 (the report, read by the caller)
    return 0


if __name__ == "__main__":
    sys.exit(main())
