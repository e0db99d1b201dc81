"""The dataset card: README.md of a built dataset folder, rendered from the build's own numbers.

The YAML front matter carries the ``configs`` that ``load_dataset`` reads and an accurate ``dataset_info`` (features,
split sizes): `datasets` keys its cache of a local folder on that block, so a rebuild with other content must change
it (otherwise ``load_dataset(DIR)`` returns stale rows in the same ``HF_HOME``).
"""

import json
import logging
from pathlib import Path

import pyarrow.parquet as pq
from datasets import Features
from huggingface_hub import DatasetCard, DatasetCardData

from dataset_builder.atomic import write_text
from dataset_builder.prompts import ANNOTATION_PROMPT, PROMPT_TEMPLATES, SEQUENCE_QUESTION
from dataset_builder.sequences import SEQUENCES_CONFIG


logger = logging.getLogger(__name__)

TEMPLATE = Path(__file__).parent / "templates" / "dataset_card.md"
DEFAULT_REPO_ID = "<org>/geollava"


def _split_info(files: list[Path]) -> dict:
    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    size = sum(
        pq.ParquetFile(f).metadata.row_group(i).total_byte_size
        for f in files
        for i in range(pq.ParquetFile(f).metadata.num_row_groups)
    )
    return {"num_examples": rows, "num_bytes": size, "download_size": sum(f.stat().st_size for f in files)}


def configs_and_info(dataset_dir: Path) -> tuple[list[dict], list[dict]]:
    """The YAML ``configs`` and ``dataset_info`` of a built folder, read from its Parquet shards.

    Args:
        dataset_dir: A folder with ``data/{split}-NNNNN-of-NNNNN.parquet`` (and optionally ``data/sample_10k/`` and
            ``data/sequences/``).

    Returns:
        ``(configs, dataset_info)`` lists for the card's YAML.

    Raises:
        FileNotFoundError: If there are no shards.
    """
    data = dataset_dir / "data"
    splits = sorted({p.name.split("-")[0] for p in data.glob("*.parquet")}, key=lambda s: (s != "train", s))
    if not splits:
        raise FileNotFoundError(f"{data}: no Parquet shards (data/{{split}}-NNNNN-of-NNNNN.parquet)")
    layouts = {"default": {s: f"data/{s}-*" for s in splits}}
    sample = data / "sample_10k"
    if list(sample.glob("train-*.parquet")):
        layouts["sample_10k"] = {
            "train": "data/sample_10k/train-*",
            **{s: f"data/{s}-*" for s in splits if s != "train"},
        }
    schemas = dict.fromkeys(layouts, pq.read_schema(next(data.glob("*.parquet"))))
    sequence_files = sorted((data / SEQUENCES_CONFIG).glob("*-*-of-*.parquet"))
    if sequence_files:
        sequence_splits = sorted({p.name.split("-")[0] for p in sequence_files}, key=lambda s: (s != "train", s))
        layouts[SEQUENCES_CONFIG] = {s: f"data/{SEQUENCES_CONFIG}/{s}-*" for s in sequence_splits}
        schemas[SEQUENCES_CONFIG] = pq.read_schema(sequence_files[0])
    configs, infos = [], []
    for name, layout in layouts.items():
        features = Features.from_arrow_schema(schemas[name])
        configs.append(
            {
                "config_name": name,
                "data_files": [{"split": s, "path": p} for s, p in layout.items()],
                **({"default": True} if name == "default" else {}),
            }
        )
        split_infos = []
        for split, pattern in layout.items():
            files = sorted(dataset_dir.glob(pattern + ".parquet"))
            info = _split_info(files)
            split_infos.append(
                {
                    "name": split,
                    "num_bytes": info["num_bytes"],
                    "num_examples": info["num_examples"],
                    "download_size": info["download_size"],
                }
            )
        infos.append(
            {
                "config_name": name,
                "features": features._to_yaml_list(),
                "splits": [{k: v for k, v in s.items() if k != "download_size"} for s in split_infos],
                "download_size": sum(s["download_size"] for s in split_infos),
                "dataset_size": sum(s["num_bytes"] for s in split_infos),
            }
        )
    return configs, infos


def render_dataset_card(dataset_dir: Path | str, repo_id: str | None = None) -> DatasetCard:
    """Render the card of a built dataset folder from its ``build_report.json`` and shards.

    Args:
        dataset_dir: A folder written by ``geollava-build``.
        repo_id: The Hub id shown in the card's loading lines (default ``<org>/geollava``).

    Returns:
        The card; its YAML holds ``configs`` and an accurate ``dataset_info`` read from the shards.
    """
    dataset_dir = Path(dataset_dir)
    report = json.loads((dataset_dir / "build_report.json").read_text())
    configs, infos = configs_and_info(dataset_dir)
    synthetic = report.get("synthetic", report["annotation"]["annotator"] == "synthetic")
    total = sum(report["pairs_per_split"].values())
    size_category = (
        "n<1K" if total < 1000 else "1K<n<10K" if total < 10_000 else "10K<n<100K" if total < 100_000 else "100K<n<1M"
    )
    card_data = DatasetCardData(
        pretty_name="GeoLLaVA change-captioning pairs" + (" (synthetic)" if synthetic else ""),
        license="cc-by-4.0" if synthetic else "other",
        language=["en"],
        task_categories=["image-text-to-text"],
        tags=["remote-sensing", "change-captioning", "satellite", "fmow", "geollava"]
        + (["synthetic"] if synthetic else []),
        size_categories=[size_category],
        configs=configs,
        dataset_info=infos,
    )
    options = report["options"]
    annotation = report["annotation"]
    sequences = report.get("sequences") if any(c["config_name"] == SEQUENCES_CONFIG for c in configs) else None
    card = DatasetCard.from_template(
        card_data,
        template_path=str(TEMPLATE),
        repo_id=repo_id or DEFAULT_REPO_ID,
        synthetic=synthetic,
        min_gap_days=options["min_gap_days"],
        max_image_bytes=f"{options['max_image_bytes']:,}",
        frame_size=options["frame_size"],
        sample_size=options["sample_size"],
        sample_seed=options["sample_seed"],
        sample_rows=report.get("sample_10k_rows", 0),
        videos=not options["no_videos"],
        pairs_per_split=report["pairs_per_split"],
        locations_per_split=report["locations_per_split"],
        images_in_pairs_per_split=report["images_in_pairs_per_split"],
        pairs_per_category=report["pairs_per_category"],
        images_seen=report["images_seen"],
        images_usable=report.get("images_usable"),
        images_dropped=report["images_dropped"],
        files_skipped=report.get("files_skipped", {}),
        pairs_found=report.get("pairs_found"),
        pairs_not_annotated=report.get("pairs_not_annotated", 0),
        pairs_failed=len(report.get("pairs_failed", [])),
        dropped_any=any(report["images_dropped"].values()),
        gaps=report["gap_days"],
        templates=PROMPT_TEMPLATES,
        annotator=annotation["annotator"],
        annotation_model=annotation.get("model"),
        annotation_prompt=annotation.get("prompt"),
        paper_prompt=ANNOTATION_PROMPT,
        sequences=sequences,
        sequence_question=SEQUENCE_QUESTION,
        sequence_prompt=annotation.get("sequence_prompt"),
    )
    return card


def write_dataset_card(dataset_dir: Path | str, repo_id: str | None = None) -> Path:
    """Render and write ``README.md`` into a built dataset folder, atomically.

    Args:
        dataset_dir: A folder written by ``geollava-build``.
        repo_id: The Hub id shown in the card.

    Returns:
        The path of the README.
    """
    dataset_dir = Path(dataset_dir)
    card = render_dataset_card(dataset_dir, repo_id)
    target = dataset_dir / "README.md"
    write_text(target, str(card))
    return target
