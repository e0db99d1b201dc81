"""Render the cards of a release from the run's own files: dataset card, model card, Space README.

    geollava-card model outputs/quickstart/adapter --repo-id my-org/geollava-lora --metrics outputs/eval/metrics.json

``dataset`` renders ``README.md`` of a built dataset folder from its build report and shards; ``model`` renders the
adapter folder's ``README.md`` from ``run_summary.json``, ``pruning.json`` and ``metrics.json`` (``model-index`` with
the evaluation's metric keys); ``space`` writes the Space's ``README.md`` and ``space_config.json`` (which base and
adapter it serves, its dataset and suggested hardware). Every card is validated offline (its YAML parses back into
the Hub's card-data classes) before it is written.
"""

import json
import logging
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData, SpaceCard, SpaceCardData, SpaceHardware

from dataset_builder.atomic import write_json, write_text
from dataset_builder.card import write_dataset_card
from model_cards.cli import parse_kind_folder_args
from model_cards.validate import validate_card, validate_card_file


__all__ = [
    "SPACE_CONFIG_FILE",
    "CardArguments",
    "main",
    "read_space_settings",
    "render_model_card",
    "render_space_card",
    "space_settings",
    "validate_card",
    "write_space_release",
]


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
    "temporal_precision",
    "temporal_recall",
    "temporal_f1",
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


def _load(path: Path | None) -> dict:
    """The JSON object in ``path``; ``{}`` when the file is missing (cards tolerate missing inputs)."""
    if not path or not Path(path).exists():
        return {}
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _hub_id(value) -> str | None:
    """``value`` when it looks like a Hub repo id (not a local path)."""
    return value if isinstance(value, str) and REPO_ID.match(value) and not Path(value).exists() else None


def _write(folder: Path, text: str) -> Path:
    return write_text(folder / "README.md", text)


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
    config = (metrics_all.get("run") or {}).get("config") or "default"  # the dataset config it was scored on
    results = [
        EvalResult(
            task_type="image-text-to-text",
            task_name="Change captioning",
            dataset_type=dataset_repo_id or "geollava",
            dataset_name="GeoLLaVA (test)" if config == "default" else f"GeoLLaVA {config} (test)",
            dataset_config=config,
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
    recipe = {}
    if base_model or model_info.get("base_model"):  # a local path is shown by its folder name only
        recipe["base model"] = base_model or f"{Path(model_info['base_model']).name} (local)"
    recipe.update({k: recipe_src[k] for k in RECIPE_KEYS if recipe_src.get(k) not in (None, "")})
    if isinstance(summary.get("timings", {}).get("train"), int | float):
        recipe["training time (s)"] = round(summary["timings"]["train"], 1)
    versions = summary.get("versions") or {}
    if versions:
        recipe["versions"] = ", ".join(
            f"{k} {versions[k]}" for k in ("torch", "transformers", "peft") if versions.get(k)
        )
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


#: The Space's settings, written beside its app.py: which base and adapter it serves (``BASE_MODEL_ID`` and
#: ``ADAPTER_ID`` override them), the dataset it names and the hardware it suggests. spaces_demo/app.py reads it.
SPACE_CONFIG_FILE = "space_config.json"
#: ZeroGPU: the app loads on the CPU and moves the model to the GPU inside its ``@spaces.GPU`` function.
DEFAULT_SPACE_HARDWARE = "zero-a10g"


def space_settings(
    model_repo_id: str | None,
    dataset_repo_id: str | None,
    base_model: str | None = None,
    hardware: str | None = None,
) -> dict:
    """The Space's settings (``space_config.json``): base model, adapter, dataset and suggested hardware.

    Args:
        model_repo_id: Hub id of the adapter the Space serves.
        dataset_repo_id: Hub id of the dataset it was trained on.
        base_model: Hub id of the base model (``None``: the adapter's own ``base_model_name_or_path``, read by the
            app when it starts).
        hardware: The Hub's hardware name the card suggests (default :data:`DEFAULT_SPACE_HARDWARE`).

    Raises:
        ValueError: For a hardware name the Hub does not know, or an id that is not ``ORG/NAME``.
    """
    hardware = hardware or DEFAULT_SPACE_HARDWARE
    known = [h.value for h in SpaceHardware]
    if hardware not in known:
        raise ValueError(f"hardware: {hardware!r} is not a Space hardware of the Hub ({', '.join(known)})")
    for name, value in (
        ("model_repo_id", model_repo_id),
        ("dataset_repo_id", dataset_repo_id),
        ("base_model", base_model),
    ):
        if value is not None and not REPO_ID.match(value):
            raise ValueError(f"{name}: {value!r} is not a Hub id of the form ORG/NAME")
    return {"base_model": base_model, "adapter": model_repo_id, "dataset": dataset_repo_id, "hardware": hardware}


def render_space_card(
    repo_id: str,
    model_repo_id: str | None,
    dataset_repo_id: str | None,
    base_model: str | None = None,
    hardware: str | None = None,
) -> str:
    """The Space README: front matter for the Hub (models, dataset, suggested hardware) and a short body."""
    import gradio  # the card's sdk_version is the gradio this app is written and tested with

    settings = space_settings(model_repo_id, dataset_repo_id, base_model, hardware)
    models = [m for m in (model_repo_id, base_model) if m]
    data = SpaceCardData(
        title="GeoLLaVA demo",
        sdk="gradio",
        sdk_version=gradio.__version__,
        python_version="3.11",
        app_file="app.py",
        license="apache-2.0",
        models=models or None,
        datasets=[dataset_repo_id] if dataset_repo_id else None,
        tags=["remote-sensing", "change-captioning", "geollava"],
        short_description="Describe what changed between two satellite images",
        emoji="🛰️",
        colorFrom="blue",
        colorTo="green",
        pinned=False,
        suggested_hardware=settings["hardware"],
    )
    return str(
        SpaceCard.from_template(
            data,
            template_path=str(TEMPLATES / "space_readme.md"),
            model=model_repo_id,
            base_model=base_model,
            dataset=dataset_repo_id,
            hardware=settings["hardware"],
            repo_id=repo_id,
            config_file=SPACE_CONFIG_FILE,
        )
    )


def read_space_settings(folder: Path) -> dict:
    """What a Space folder's ``space_config.json`` names, as keyword arguments of :func:`write_space_release`.

    Returns:
        Any of ``model_repo_id``, ``dataset_repo_id``, ``base_model``, ``hardware``; ``{}`` without the file.

    Raises:
        ValueError: If the file is not a JSON object (naming it).
    """
    data = _load(Path(folder) / SPACE_CONFIG_FILE)
    keys = {
        "adapter": "model_repo_id",
        "dataset": "dataset_repo_id",
        "base_model": "base_model",
        "hardware": "hardware",
    }
    return {keys[k]: v for k, v in data.items() if k in keys and v}


def write_space_release(
    folder: Path,
    repo_id: str,
    model_repo_id: str | None = None,
    dataset_repo_id: str | None = None,
    base_model: str | None = None,
    hardware: str | None = None,
) -> Path:
    """Write the Space's ``README.md`` (validated) and ``space_config.json`` into ``folder``; returns the README."""
    text = render_space_card(repo_id, model_repo_id, dataset_repo_id, base_model, hardware)
    validate_card(text, "space")
    write_json(Path(folder) / SPACE_CONFIG_FILE, space_settings(model_repo_id, dataset_repo_id, base_model, hardware))
    return _write(Path(folder), text)


USAGE = (
    "geollava-card {dataset,model,space} FOLDER --repo-id ORG/NAME [--metrics METRICS_JSON] "
    "[--dataset-repo-id ORG/NAME] [--model-repo-id ORG/NAME] [--base-model HUB_ID] [--hardware zero-a10g]"
)


@dataclass
class CardArguments:
    """Which card to render, into which folder, from which inputs."""

    kind: str = field(metadata={"help": "dataset, model or space (first positional)."})
    folder: str = field(metadata={"help": "The folder to be pushed; its README.md is written (second positional)."})
    repo_id: str = field(metadata={"help": "ORG/NAME the folder will be pushed to."})
    metrics: str | None = field(default=None, metadata={"help": "metrics.json of geollava-eval (model cards)."})
    dataset_repo_id: str | None = field(default=None, metadata={"help": "ORG/NAME of the dataset (model, space)."})
    model_repo_id: str | None = field(default=None, metadata={"help": "ORG/NAME of the adapter the Space serves."})
    base_model: str | None = field(
        default=None,
        metadata={"help": "Hub id of the base model (model cards, the Space; default: the adapter's own)."},
    )
    hardware: str | None = field(
        default=None,
        metadata={"help": f"The Space's suggested hardware, a Hub hardware name (default {DEFAULT_SPACE_HARDWARE})."},
    )

    def __post_init__(self):
        if self.kind not in ("dataset", "model", "space"):
            raise ValueError(f"kind: {self.kind!r} is not one of dataset, model, space")
        if not Path(self.folder).is_dir():
            raise ValueError(f"folder: {self.folder!r} is not a folder")
        for name in ("repo_id", "dataset_repo_id", "model_repo_id"):
            value = getattr(self, name)
            if (value is not None or name == "repo_id") and not REPO_ID.match(value or ""):
                raise ValueError(f"{name}: {value!r} is not of the form ORG/NAME")
        if self.metrics is not None and not Path(self.metrics).is_file():
            raise ValueError(f"metrics: {self.metrics!r} is not a file")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``geollava-card``."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        args = parse_kind_folder_args(
            CardArguments, argv, prog="geollava-card", usage=USAGE, description=__doc__.splitlines()[0]
        )
        folder = Path(args.folder)
        if args.kind == "dataset":
            target = write_dataset_card(folder, repo_id=args.repo_id)
            validate_card_file(target, "dataset")
        elif args.kind == "model":
            metrics = Path(args.metrics) if args.metrics else None
            text = render_model_card(folder, args.repo_id, metrics, args.dataset_repo_id, args.base_model)
            validate_card(text, args.kind)
            target = _write(folder, text)
        else:
            target = write_space_release(
                folder, args.repo_id, args.model_repo_id, args.dataset_repo_id, args.base_model, args.hardware
            )
    except (FileNotFoundError, KeyError, ValueError, json.JSONDecodeError) as err:
        print(f"geollava-card: {err}", file=sys.stderr)
        return 1
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
