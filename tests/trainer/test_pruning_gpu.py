"""Pruning on a CUDA device: the same invariants as the CPU tests where bitsandbytes takes its GPU code path.

Run with ``GEOLLAVA_TEST_CUDA=0 .venv/bin/pytest tests/trainer/test_pruning_gpu.py -m gpu`` (the root conftest hides
CUDA unless ``GEOLLAVA_TEST_CUDA`` names a device).
"""

import json

import pytest
import torch
from transformers import AutoModelForImageTextToText, BitsAndBytesConfig

from dataset_builder.prompts import PROMPT_TEMPLATES
from trainer.models.families import get_family
from trainer.pruning.masks import apply_masks, load_masks
from trainer.pruning.methods import PruningConfig, collect_targets, exact_threshold, magnitude_masks
from trainer.pruning.pruned_copy import prune_before_quantization
from trainer.tiny.build import build_tiny_model


pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

CORPUS = [*PROMPT_TEMPLATES, "A new building was built in the north-east.", "A road was widened in the south."]


def test_threshold_and_masks_on_cuda_equal_the_cpu_ones():
    generator = torch.Generator().manual_seed(0)
    cpu = {f"l{i}": torch.randn(512, 1024, generator=generator) * (0.01 + 0.01 * i) for i in range(6)}
    cuda = {name: w.cuda().to(torch.bfloat16) for name, w in cpu.items()}
    cpu_bf16 = {name: w.to(torch.bfloat16) for name, w in cpu.items()}
    assert exact_threshold(cuda, 0.05, 100_000) == exact_threshold(cpu_bf16, 0.05, 100_000)
    masks_cuda, _ = magnitude_masks(cuda, 0.05, sample_size=100_000)
    masks_cpu, _ = magnitude_masks(cpu_bf16, 0.05, sample_size=100_000)
    assert all(torch.equal(masks_cuda[n], masks_cpu[n]) for n in cpu)


def test_nf4_on_cuda_keeps_pruned_weights_exactly_zero(tmp_path):
    import bitsandbytes.functional as bnbf

    tiny = build_tiny_model("llava-next-video", tmp_path / "tiny", corpus=CORPUS)
    family = get_family("llava-next-video")
    config = PruningConfig(pruning_method="magnitude", pruning_sparsity=0.3)
    pruned = prune_before_quantization(tiny, config, tmp_path / "pruned", family).path
    masks = load_masks(pruned)
    bnb = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
        llm_int8_skip_modules=["model.vision_tower", "model.multi_modal_projector", "lm_head"],
    )
    model = AutoModelForImageTextToText.from_pretrained(pruned, quantization_config=bnb, device_map="cuda")
    for name, layer in collect_targets(model, family, require_full_precision=False).items():
        values = bnbf.dequantize_4bit(layer.weight.data, layer.weight.quant_state).reshape(masks[name].shape).cpu()
        assert (values[~masks[name]] == 0).all(), name
    with pytest.raises(TypeError, match="Params4bit"):
        apply_masks(model, masks)


def test_a_wanda_copy_is_calibrated_on_cuda_when_training_runs_there(tmp_path):
    tiny = build_tiny_model("llava-next-video", tmp_path / "tiny", corpus=CORPUS)
    config = PruningConfig(pruning_method="wanda", pruning_sparsity=0.25)
    batch = {"input_ids": torch.randint(10, 200, (2, 12)), "attention_mask": torch.ones(2, 12, dtype=torch.long)}
    family = get_family("llava-next-video")
    copy = prune_before_quantization(tiny, config, tmp_path / "pruned", family, calibration=[batch], device="cuda")
    report = json.loads((copy.path / "pruning.json").read_text())
    assert report["calibrated_on"].startswith("cuda") and report["pruned_on"].startswith("cuda")
    for name, mask in copy.masks.unpack().items():
        assert ((~mask).sum(dim=1) == round(0.25 * mask.shape[1])).all(), name
