"""What trainer and CCExpert tests build the same way: a tiny base with a random adapter, a 2-process launch, a
``sequences`` dataset folder."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, Features, Image, List, Value
from peft import LoraConfig, get_peft_model
from PIL import Image as PILImage
from transformers import AutoModelForImageTextToText

from dataset_builder.prompts import SEQUENCE_QUESTION
from trainer.models.families import get_family
from trainer.tiny.build import build_tiny_model
from upload.loopback import free_port


ROOT = Path(__file__).resolve().parents[2]


def tiny_base_and_adapter(family: str, root: Path, corpus: list[str]) -> tuple[Path, Path]:
    """A tiny ``family`` base (32 px) in ``root/base`` and a LoRA adapter on it with random, non-zero B weights
    (r 4, seed 0) in ``root/adapter``: an adapter that changes the outputs, as a trained one does."""
    base = build_tiny_model(family, root / "base", image_size=32, corpus=corpus)
    lora = LoraConfig(r=4, target_modules=get_family(family).lora_target_modules, init_lora_weights=False)
    torch.manual_seed(0)
    get_peft_model(AutoModelForImageTextToText.from_pretrained(base), lora).save_pretrained(root / "adapter")
    return base, root / "adapter"


def launch_two_processes(
    script: str, launch: list[str], options: dict, env: dict, timeout: float
) -> subprocess.CompletedProcess:
    """``accelerate launch`` ``script`` (a ``trainer.sft`` entry) in 2 CPU processes on a free loopback port.

    Args:
        script: The file to launch.
        launch: The launcher's own flags (``--config_file ...``).
        options: The script's flags, ``{"max_steps": 4}`` -> ``--max_steps 4``.
        env: Extra environment (the repository is on PYTHONPATH and each process has one OpenMP thread).
        timeout: Seconds.

    Returns:
        The finished process; the test fails with its output's tail if it did not exit 0.
    """
    command = [sys.executable, "-m", "accelerate.commands.launch", *launch, "--main_process_port", str(free_port())]
    command.append(script)
    for name, value in options.items():
        command += [f"--{name}", str(value)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **env}
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def tiny_sft_args(config_class, out: Path, **overrides):
    """A short CPU training run's arguments (constant lr 1e-2, a log line per step, seed 0), as ``config_class``."""
    defaults = {"output_dir": str(out), "learning_rate": 1e-2, "lr_scheduler_type": "constant", "logging_steps": 1}
    defaults |= {"use_cpu": True, "seed": 0, "disable_tqdm": True}
    return config_class(**(defaults | overrides))


#: The columns of a ``sequences`` row (docs/CONTRACTS.md §2); synthetic builds add ``changes``.
SEQUENCE_FEATURES = {
    "id": Value("string"),
    "frames": List(Image()),
    "timestamps": List(Value("string")),
    "category": Value("string"),
    "country_code": Value("string"),
    "gsd": Value("float32"),
    "conversations": List({"from": Value("string"), "value": Value("string")}),
}
CHANGE_FEATURE = List({name: Value("string") for name in ("kind", "location", "size", "start", "end")})


def sequence_row(i: int, n_frames: int, caption: str, size: int = 32, changes: list[dict] | None = None) -> dict:
    """A ``sequences`` row: ``n_frames`` random frames dated a year and a month apart from 2010-01-02, in order."""
    rng = np.random.default_rng(i)
    row = {
        "id": f"farm_{i}",
        "frames": [PILImage.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(n_frames)],
        "timestamps": [f"{2010 + k}-{1 + k % 12:02d}-02T10:21:07Z" for k in range(n_frames)],
        "category": "farm",
        "country_code": "FRA",
        "gsd": 0.5,
        "conversations": [
            {"from": "human", "value": SEQUENCE_QUESTION + "\n<video>"},
            {"from": "gpt", "value": caption},
        ],
    }
    if changes is not None:
        row["changes"] = changes
    return row


def write_sequences_dataset(root: Path, splits: dict[str, list[dict]]) -> Path:
    """A Hub-layout folder whose ``sequences`` config holds ``splits`` (one Parquet shard each), as the builder's."""
    with_changes = all("changes" in row for rows in splits.values() for row in rows)
    features = Features({**SEQUENCE_FEATURES, **({"changes": CHANGE_FEATURE} if with_changes else {})})
    (root / "data" / "sequences").mkdir(parents=True)
    entries = ""
    for split, rows in splits.items():
        columns = {name: [row[name] for row in rows] for name in features}
        path = root / "data" / "sequences" / f"{split}-00000-of-00001.parquet"
        Dataset.from_dict(columns, features=features).to_parquet(str(path))
        entries += f"  - split: {split}\n    path: data/sequences/{split}-*.parquet\n"
    (root / "README.md").write_text(f"---\nconfigs:\n- config_name: sequences\n  data_files:\n{entries}---\n# tiny\n")
    return root
