import numpy as np
import pytest
from PIL import Image

from dataset_builder.prompts import PROMPT_TEMPLATES
from trainer.tiny.build import build_tiny_model


CORPUS = [*PROMPT_TEMPLATES, "The first image shows fields. A new building was built in the north-east."]


@pytest.fixture(scope="session")
def space_model(tmp_path_factory):
    """A tiny base and a (random, non-zero) LoRA adapter, as the quickstart leaves them."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    from trainer.models.families import get_family

    root = tmp_path_factory.mktemp("space-model")
    base = build_tiny_model("llava-next-video", root / "base", image_size=32, corpus=CORPUS)
    model = AutoModelForImageTextToText.from_pretrained(base)
    lora = LoraConfig(r=4, target_modules=get_family("llava-next-video").lora_target_modules, init_lora_weights=False)
    get_peft_model(model, lora).save_pretrained(root / "adapter")
    return base, root / "adapter"


@pytest.fixture(scope="session")
def pair_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("pair")
    rng = np.random.default_rng(0)
    before = rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)
    after = before.copy()
    after[4:20, 4:20] = 255
    Image.fromarray(before).save(root / "before.png")
    Image.fromarray(after).save(root / "after.jpg", quality=95)
    (root / "notes.txt").write_text("this is not an image")
    return root / "before.png", root / "after.jpg", root / "notes.txt"
