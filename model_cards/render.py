"""Render the cards of a release from the run's own files: dataset card, model card, Space README.

    geollava-card model outputs/quickstart/adapter --repo-id my-org/geollava-lora --metrics outputs/eval/metrics.json

``dataset`` renders ``README.md`` of a built dataset folder from its build report and shards; ``model`` renders the
adapter folder's ``README.md`` from ``run_summary.json``, ``pruning.json`` and ``metrics.json`` (``model-index`` with
the evaluation's metric keys); ``space`` writes the Space's ``README.md`` front matter. Every card is validated
offline (its YAML parses back into the Hub's card-data classes) before it is written.
"""

import argparse
import json
import logging
import os
import re
import sys
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData, SpaceCard, SpaceCardData


logger = logging.getLogger(__name__)

TEMPLATES = Path(__file__).parent / "templates"
#: Metric keys copied into the model-index (the evaluation's names).
MODEL_INDEX_KEYS = (
    "rouge1",
    "rouge2",
    "rougeL",
    "sentence_bleu2",
    "sbert_cosine",
    "bertscore_f1",
    "sacrebleu",
    "bleu1",
    "bleu2",
    "bleu3",
    "bleu4",
    "meteor",
    "rougeL_coco",
    "cider_d",
    "s_m",
    "grounding_precision",
    "grounding_recall",
    "grounding_f1",
)
#: Run-summary fields shown in the card's recipe table.
RECIPE_KEYS = (
    "family",
    "quantization",
    "dtype",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "lora_target_modules",
    "trainable_parameters",
    "learning_rate",
    "lr_scheduler_type",
    "warmup_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "num_train_epochs",
    "max_steps",
    "max_grad_norm",
    "seed",
    "dataset_config",
    "split",
    "rows",
)
REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def _load(path: Path) -> dict:
    return json.loads(path.read_text()) if path and Path(path).exists() else {}


def _hub_id(value) -> str | None:
    """``value`` when it looks like a Hub repo id (not a local path)."""
    return value if isinstance(value, str) and REPO_ID.match(value) and not Path(value).exists() else None


def validate_card(text: str, kind: str) -> None:
    """Parse a rendered card back with the Hub's card classes (offline); raise ValueError naming the problem."""
    cls = {"model": ModelCard, "space": SpaceCard}.get(kind)
    if cls is None:
        from huggingface_hub import DatasetCard as cls  # noqa: N813
    try:
        card = cls(text)
        data = card.data.to_dict()
    except Exception as err:  # noqa: BLE001 - any parse failure is a card defect
        raise ValueError(f"{kind} card does not parse: {err}") from err
    if kind == "model" and data.get("model-index"):
        from huggingface_hub.repocard_data import model_index_to_eval_results

        model_index_to_eval_results(data["model-index"])
    if kind == "space" and data.get("sdk") not in ("gradio", "streamlit", "docker", "static"):
        raise ValueError(f"space card: sdk {data.get('sdk')!r} is not a Space SDK")


def _write(folder: Path, text: str) -> Path:
    target = folder / "README.md"
    tmp = folder / ".README.md.tmp"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, target)
    return target


def render_model_card(
    adapter_dir: Path,
    repo_id: str,
    metrics_path: Path | None = None,
    dataset_repo_id: str | None = None,
    base_model: str | None = None,
) -> str:
    """The adapter's model card (text), from its own files and the evaluation's metrics.json."""
    summary = _load(adapter_dir / "run_summary.json")
    adapter = _load(adapter_dir / "adapter_config.json")
    pruning = _load(adapter_dir / "pruning.json")
    metrics_all = _load(metrics_path) if metrics_path else _load(adapter_dir / "metrics.json")
    metrics = {k: float(metrics_all[k]) for k in MODEL_INDEX_KEYS if isinstance(metrics_all.get(k), int | float)}
    base_model = base_model or _hub_id(adapter.get("base_model_name_or_path"))
    model_name = repo_id.split("/")[-1]
    results = [
        EvalResult(
            task_type="image-text-to-text",
            task_name="Change captioning",
            dataset_type=dataset_repo_id or "geollava",
            dataset_name="GeoLLaVA (test)",
            dataset_split="test",
            metric_type=k,
            metric_name=k,
            metric_value=round(v, 6),
        )
        for k, v in metrics.items()
    ]
    pruning = pruning or summary.get("pruning") or {}
    model_info = summary.get("model", {})
    card_data = ModelCardData(
        base_model=base_model,
        library_name="peft",
        pipeline_tag="image-text-to-text",
        datasets=[dataset_repo_id] if dataset_repo_id else None,
        license="apache-2.0",
        language=["en"],
        tags=["geollava", "remote-sensing", "change-captioning", "lora", "peft"]
        + (["pruned"] if pruning else [])
        + (["qlora"] if "4" in str(model_info.get("quantization", "")) else []),
        model_name=model_name,
        eval_results=results or None,
    )
    recipe_src = {**summary.get("data", {}), **model_info, **summary.get("training", {})}
    keys = RECIPE_KEYS
    recipe = {k: recipe_src[k] for k in keys if recipe_src.get(k) not in (None, "")}
    if isinstance(summary.get("recipe"), str):
        recipe["recipe file"] = Path(summary["recipe"]).name
    if not recipe:
        recipe = {k: adapter[k] for k in ("r", "lora_alpha", "target_modules") if k in adapter}
    if pruning:
        pruning.setdefault("sparsity_reached", pruning.get("sparsity", 0.0))
    card = ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATES / "model_card.md"),
        repo_id=repo_id,
        model_name=model_name,
        base_model=base_model,
        family=recipe_src.get("family", "video-LLM"),
        dataset=dataset_repo_id,
        recipe=recipe,
        pruning=pruning or None,
        metrics=metrics,
        models_used=", ".join(
            f"{k}: {v.get('model', v) if isinstance(v, dict) else v}"
            for k, v in (metrics_all.get("models") or {}).items()
        ),
        synthetic="grounding_f1" in metrics,
    )
    return str(card)


def render_space_card(repo_id: str, model_repo_id: str | None, dataset_repo_id: str | None) -> str:
    """The Space README (front matter for the Hub + a short body)."""
    import gradio

    data = SpaceCardData(
        title="GeoLLaVA demo",
        sdk="gradio",
        sdk_version=gradio.__version__,
        python_version="3.11",
        app_file="app.py",
        license="apache-2.0",
        models=[model_repo_id] if model_repo_id else None,
        datasets=[dataset_repo_id] if dataset_repo_id else None,
        tags=["remote-sensing", "change-captioning", "geollava"],
        short_description="Describe what changed between two satellite images",
        emoji="🛰️",
        colorFrom="blue",
        colorTo="green",
        pinned=False,
    )
    return str(SpaceCard.from_template(data, template_path=str(TEMPLATES / "space_readme.md"), model=model_repo_id))


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``geollava-card``."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    parser = argparse.ArgumentParser(prog="geollava-card", description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["dataset", "model", "space"])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--repo-id", required=True)
    parser.add_argument("--metrics", type=Path, default=None, help="metrics.json of geollava-eval (model cards)")
    parser.add_argument("--dataset-repo-id", default=None)
    parser.add_argument("--model-repo-id", default=None)
    parser.add_argument("--base-model", default=None, help="Hub id of the base model (default: from the adapter)")
    args = parser.parse_args(argv)
    try:
        if args.kind == "dataset":
            from model_cards.dataset_card import render_dataset_card

            text = str(render_dataset_card(args.folder, args.repo_id))
        elif args.kind == "model":
            text = render_model_card(args.folder, args.repo_id, args.metrics, args.dataset_repo_id, args.base_model)
        else:
            text = render_space_card(args.repo_id, args.model_repo_id, args.dataset_repo_id)
        validate_card(text, args.kind)
    except (FileNotFoundError, KeyError, ValueError) as err:
        print(f"geollava-card: {err}", file=sys.stderr)
        return 1
    print(f"wrote {_write(args.folder, text)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
