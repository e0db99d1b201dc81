"""`accelerate launch --num_processes 2` runs geollava-train on CPU (gloo): both ranks train the same adapter.

Run as a script by ``accelerate launch``, this file is the worker: it runs the real ``trainer.sft.main`` with an
``SFTTrainer`` subclass that, after training, writes each rank's trainable parameters and losses for the test.
"""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file, save_file

import trainer.sft
from dataset_builder.prompts import PROMPT_TEMPLATES
from dataset_builder.rows import features
from tests.trainer.helpers import launch_two_processes
from trainer.tiny.build import build_tiny_model


CORPUS = [*PROMPT_TEMPLATES, "A new building was built in the north-east.", "No change.", "USER: ASSISTANT:"]
ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "trainer" / "recipes" / "accelerate_configs"
STEPS, BATCH = 3, 2
CARD = "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/train-*\n---\n"


class RecordingTrainer(trainer.sft.SFTTrainer):
    """The real SFTTrainer; after ``train`` each rank saves its trainable parameters and its logged losses."""

    def train(self, *args, **kwargs):  # noqa: D102
        result = super().train(*args, **kwargs)
        rank = self.accelerator.process_index
        out = Path(os.environ["GEOLLAVA_RANK_DIR"])
        model = self.accelerator.unwrap_model(self.model)
        tensors = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        save_file(tensors, out / f"rank{rank}.safetensors")
        record = {
            "world_size": self.accelerator.num_processes,
            "global_step": self.state.global_step,
            "losses": [e["loss"] for e in self.state.log_history if "loss" in e],
        }
        (out / f"rank{rank}.json").write_text(json.dumps(record))
        return result


def _rows(n: int) -> Dataset:
    rng = np.random.default_rng(0)
    return Dataset.from_dict(
        {
            "id": [f"pair_{i}" for i in range(n)],
            "frames": [[rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(2)] for _ in range(n)],
            "conversations": [
                [
                    {"from": "human", "value": PROMPT_TEMPLATES[i % len(PROMPT_TEMPLATES)] + "\n<video>"},
                    {"from": "gpt", "value": CORPUS[-3 + i % 2]},
                ]
                for i in range(n)
            ],
        },
        features=features(columns=("id", "frames", "conversations")),
    )


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_accelerate_configs_load(path):
    from accelerate.commands.config.config_args import load_config_from_file

    text = path.read_text()
    assert text.startswith("#") and "accelerate launch --config_file " + str(path.relative_to(ROOT)) in text
    config = load_config_from_file(str(path))
    assert config.num_processes >= 1 and config.num_machines >= 1
    if config.num_machines > 1:
        assert config.num_processes % config.num_machines == 0


@pytest.mark.slow
def test_two_process_cpu_run_agrees(tmp_path):
    data = tmp_path / "dataset"
    (data / "data").mkdir(parents=True)
    _rows(STEPS * BATCH * 2).to_parquet(str(data / "data" / "train-00000-of-00001.parquet"))
    (data / "README.md").write_text(CARD)
    model = build_tiny_model("llava-next-video", tmp_path / "model", image_size=32, corpus=CORPUS)
    out, ranks = tmp_path / "adapter", tmp_path / "ranks"
    ranks.mkdir()
    launch = ["--config_file", "trainer/recipes/accelerate_configs/multi_gpu.yaml", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--main_process_ip", "127.0.0.1"]
    options = {"config": "trainer/recipes/tiny/lora.yaml", "model_name_or_path": model, "dataset_name": data}
    options |= {"output_dir": out, "max_steps": STEPS, "per_device_train_batch_size": BATCH, "logging_steps": 1}
    env = {"GEOLLAVA_RANK_DIR": str(ranks), "MASTER_ADDR": "127.0.0.1"}
    launch_two_processes(__file__, launch, options | {"disable_tqdm": "true"}, env, timeout=240)

    records = [json.loads((ranks / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world_size"] == 2 and r["global_step"] == STEPS for r in records)
    weights = [load_file(ranks / f"rank{r}.safetensors") for r in (0, 1)]
    assert weights[0].keys() == weights[1].keys() and any("lora_B" in k for k in weights[0])
    for name, tensor in weights[0].items():
        assert torch.equal(tensor, weights[1][name]), f"ranks disagree on {name}"
    # Training moved the adapter (LoRA B starts at zero) and the saved adapter is what both ranks hold.
    assert any(tensor.abs().sum() > 0 for name, tensor in weights[0].items() if "lora_B" in name)
    saved = load_file(out / "adapter_model.safetensors")
    lora_b = next(k for k in weights[0] if "lora_B" in k)
    saved_key = next(k for k in saved if k.endswith(lora_b.split("base_model.model.", 1)[-1].replace(".default", "")))
    assert torch.equal(saved[saved_key], weights[0][lora_b])
    # The summary counts the global batch: 2 processes x per-device batch per step.
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["throughput"]["samples"] == STEPS * BATCH * 2
    assert summary["training"]["per_device_train_batch_size"] == BATCH
    assert summary["distributed"]["world_size"] == 2 and summary["distributed"]["ranks_agree"]
    assert not list(out.glob("checkpoint-*"))


if __name__ == "__main__":
    trainer.sft.SFTTrainer = RecordingTrainer
    sys.exit(trainer.sft.main(sys.argv[1:]))
