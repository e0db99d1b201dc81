"""CPU training benchmark: the data path alone (decode + processor + collator) at 336 px, and the tiny recipes.

    .venv/bin/python benchmarks/bench_train.py

The data path at LLaVA-NeXT-Video-7B's visual settings in process and with 2 DataLoader workers (goal: >= 200
samples/s on 2 cores), then ``geollava-train`` with the two tiny recipes; writes benchmarks/results/train.{json,md}.
See docs/training.md "Benchmarks".
"""

import io
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, load_dataset
from PIL import Image as PILImage
from PIL import ImageDraw
from transformers import AutoProcessor

from dataset_builder.atomic import write_text
from dataset_builder.prompts import PROMPT_TEMPLATES
from dataset_builder.rows import features
from trainer.sft import main as train_main
from trainer.tiny.build import build_tiny_model
from trainer.training.collator import VideoSFTCollator


RESULTS = Path(__file__).parent / "results"
FAMILY = "llava-next-video"
DATA_ROWS, DATA_SIZE, DATA_BATCH = 512, 336, 8
WORKERS = (0, 2)
TRAIN_ROWS, TRAIN_SIZE, TRAIN_STEPS = 512, 64, 40
CAPTIONS = [
    "A new building was built in the north-east of the site.",
    "The road in the south was widened and a small field became a construction site.",
    "The forest in the west was cleared.",
    "No change is visible between the two images.",
]
CARD = "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/train-*\n---\n"
FEATURES = features(columns=("id", "frames", "conversations"))


def _scene(rng: np.random.Generator, size: int) -> bytes:
    """A JPEG of a few coloured rectangles on a textured background (compresses like an aerial frame, not noise)."""
    base = rng.integers(60, 140, (size // 8, size // 8, 3), dtype=np.uint8)
    image = PILImage.fromarray(base).resize((size, size), PILImage.BILINEAR)
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x, y = rng.integers(0, size - 20, 2)
        w, h = rng.integers(10, size // 3, 2)
        draw.rectangle([int(x), int(y), int(x + w), int(y + h)], fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write_dataset(root: Path, rows: int, size: int) -> Path:
    """A Hub-layout dataset folder of ``rows`` synthetic pairs with JPEG frames of side ``size``."""
    rng = np.random.default_rng(0)
    data = {"id": [], "frames": [], "conversations": []}
    for i in range(rows):
        data["id"].append(f"pair_{i}")
        data["frames"].append([{"bytes": _scene(rng, size), "path": None} for _ in range(2)])
        data["conversations"].append(
            [
                {"from": "human", "value": PROMPT_TEMPLATES[i % len(PROMPT_TEMPLATES)] + "\n<video>"},
                {"from": "gpt", "value": CAPTIONS[i % len(CAPTIONS)]},
            ]
        )
    (root / "data").mkdir(parents=True, exist_ok=True)
    Dataset.from_dict(data, features=FEATURES).to_parquet(str(root / "data" / "train-00000-of-00001.parquet"))
    (root / "README.md").write_text(CARD)
    return root


def real_size_processor(tiny_path: Path):
    """The tiny model's processor (its tokenizer) with LLaVA-NeXT-Video-7B-hf's visual settings: 336 px, patch 14."""
    processor = AutoProcessor.from_pretrained(tiny_path)
    processor.patch_size = 14
    for sub in (processor.video_processor, processor.image_processor):
        sub.size = {"shortest_edge": DATA_SIZE}
        sub.crop_size = {"height": DATA_SIZE, "width": DATA_SIZE}
    return processor


def bench_data_path(work: Path) -> dict:
    """Samples/s of decode alone and of decode + processor + collator, with 0 and 1 DataLoader workers."""
    dataset = load_dataset(str(write_dataset(work / "data336", DATA_ROWS, DATA_SIZE)), split="train")
    tiny = build_tiny_model(FAMILY, work / "tiny336", image_size=64)
    processor = real_size_processor(tiny)
    collator = VideoSFTCollator(processor, FAMILY)
    sample = collator([dataset[0]])
    video_tokens = int((sample["input_ids"] == processor.tokenizer.convert_tokens_to_ids("<video>")).sum())

    start = time.perf_counter()
    for row in dataset:
        for frame in row["frames"]:
            frame.load()
    decode = DATA_ROWS / (time.perf_counter() - start)

    results = {"rows": DATA_ROWS, "frame_px": DATA_SIZE, "batch": DATA_BATCH, "video_tokens_per_sample": video_tokens}
    results["decode_only_samples_per_s"] = round(decode, 1)
    threads = torch.get_num_threads()
    for workers in WORKERS:
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=DATA_BATCH, collate_fn=collator, num_workers=workers, shuffle=False
        )
        # In process, one torch thread, as DataLoader workers run: on a busy 2-core machine two OpenMP threads make
        # the processor's tensor copies ~8x slower, not faster.
        torch.set_num_threads(1)
        tokens = 0
        start = time.perf_counter()
        for batch in loader:
            tokens += int(batch["attention_mask"].sum())
        seconds = time.perf_counter() - start
        torch.set_num_threads(threads)
        results[f"workers_{workers}"] = {
            "samples_per_s": round(DATA_ROWS / seconds, 1),
            "tokens_per_s": round(tokens / seconds, 1),
            "seconds": round(seconds, 2),
        }
    results["tokens_per_sample"] = round(tokens / DATA_ROWS, 1)
    results["best_samples_per_s"] = max(results[f"workers_{w}"]["samples_per_s"] for w in WORKERS)
    results["goal_samples_per_s"] = 200
    return results


def bench_training(work: Path) -> dict:
    """Run the two tiny recipes for a few steps and read their run summaries."""
    data = write_dataset(work / "data64", TRAIN_ROWS, TRAIN_SIZE)
    tiny = build_tiny_model(FAMILY, work / "tiny64", image_size=TRAIN_SIZE)
    results = {}
    for recipe in ("lora", "qlora_prune"):
        out = work / f"adapter-{recipe}"
        argv = [
            "--config",
            f"trainer/recipes/tiny/{recipe}.yaml",
            "--model_name_or_path",
            str(tiny),
            "--dataset_name",
            str(data),
            "--output_dir",
            str(out),
            "--max_steps",
            str(TRAIN_STEPS),
            "--disable_tqdm",
            "true",
            "--plot",
            "false",
        ]
        start = time.perf_counter()
        assert train_main(argv) == 0
        wall = time.perf_counter() - start
        summary = json.loads((out / "run_summary.json").read_text())
        throughput, batch = summary["throughput"], summary["training"]["per_device_train_batch_size"]
        results[recipe] = {
            "steps": TRAIN_STEPS,
            "batch": batch,
            "samples_per_s": throughput["samples_per_second"],
            "tokens_per_s": throughput["tokens_per_second"],
            "peak_memory_mb": throughput["peak_memory_mb"],
            "train_seconds": summary["timings"]["train"],
            "load_model_seconds": summary["timings"]["load_model"],
            "wall_seconds": round(wall, 2),
            "first_loss": summary["metrics"]["first_loss"],
            "final_loss": summary["metrics"]["final_loss"],
            "recipe_200_steps_estimate_s": round(200 * batch / throughput["samples_per_second"], 1),
        }
    return results


def main() -> int:
    """Run both benchmarks and write the results."""
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    default_threads = torch.get_num_threads()  # the tiny recipes set torch_num_threads: 1 inside geollava-train
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    try:
        data_path = bench_data_path(work)
        training = bench_training(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "torch_default_threads": default_threads,
            "python": platform.python_version(),
        },
        "data_path": data_path,
        "training": training,
    }
    RESULTS.mkdir(exist_ok=True)
    write_text(RESULTS / "train.json", json.dumps(result, indent=2) + "\n")
    d = data_path
    lines = [
        "# Training benchmark (CPU)",
        "",
        f"{result['machine']['cpus']} CPU cores visible (shared by several users), torch default threads "
        f"{result['machine']['torch_default_threads']}; the data path runs with 1 torch thread per process and the "
        "tiny recipes set `torch_num_threads: 1`.",
        "",
        f"## Data path: decode + processor + collator, {d['frame_px']} px, 2 frames, batch {d['batch']}",
        "",
        f"{d['rows']} rows of JPEG frames read with `load_dataset`; LLaVA-NeXT-Video-7B-hf visual settings "
        f"({d['video_tokens_per_sample']} video tokens/sample, {d['tokens_per_sample']} tokens/sample in all).",
        "",
        "| stage | samples/s | tokens/s |",
        "|---|---|---|",
        f"| decode only (datasets + Pillow) | {d['decode_only_samples_per_s']} | - |",
        f"| full data path, in process (1 thread) | {d['workers_0']['samples_per_s']} "
        f"| {d['workers_0']['tokens_per_s']} |",
        f"| full data path, 2 workers | {d['workers_2']['samples_per_s']} | {d['workers_2']['tokens_per_s']} |",
        "",
        f"Best {d['best_samples_per_s']} samples/s against a goal of >= {d['goal_samples_per_s']} "
        f"({'met' if d['best_samples_per_s'] >= d['goal_samples_per_s'] else 'NOT met'}).",
        "",
        f"## Tiny recipes: tiny LLaVA-NeXT-Video at {TRAIN_SIZE} px, {TRAIN_STEPS} steps",
        "",
        "| recipe | batch | samples/s | tokens/s | peak RSS (MB) | loss first -> last | 200 steps (est. s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in training.items():
        lines.append(
            f"| tiny/{name}.yaml | {r['batch']} | {r['samples_per_s']} | {r['tokens_per_s']} | {r['peak_memory_mb']} "
            f"| {r['first_loss']:.3f} -> {r['final_loss']:.3f} | {r['recipe_200_steps_estimate_s']} |"
        )
    write_text(RESULTS / "train.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
