"""The model card's load snippet runs as a user would run it: only transformers, peft, safetensors and torch.

The snippet is cut out of the rendered card and run in a fresh interpreter in which none of the project's packages
can be imported (``upload.roundtrip.run_card_snippet``), against a tiny base and a pruned adapter pushed to the
loopback Hub; it must give the same logits as the project's own loader.
"""

import ast
import json
import textwrap

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForImageTextToText, AutoProcessor

from dataset_builder.prompts import PROMPT_TEMPLATES
from model_cards.render import main as card_main
from model_cards.render import render_model_card
from model_cards.validate import validate_card
from tests.trainer.helpers import project_logits
from trainer.models.families import get_family
from trainer.pruning.masks import apply_masks, save_masks
from trainer.pruning.methods import PruningConfig, compute_masks
from trainer.tiny.build import build_tiny_model
from upload.push import main as push_main
from upload.roundtrip import RoundTripError, card_snippet, run_card_snippet


ALLOWED_IMPORTS = {"json", "torch", "huggingface_hub", "peft", "safetensors", "transformers"}
INPUT_IDS = [[1, 5, 9, 12, 7, 3]]


@pytest.fixture(scope="module")
def published(hub_server, tmp_path_factory):
    """A tiny base and its 5 %-pruned LoRA adapter (with processor and masks) on the loopback Hub."""
    root = tmp_path_factory.mktemp("card-snippet")
    base = build_tiny_model("llava-next-video", root / "base", image_size=32, corpus=list(PROMPT_TEMPLATES))
    model = AutoModelForImageTextToText.from_pretrained(base)
    family = get_family("llava-next-video")
    masks, metadata = compute_masks(model, PruningConfig(pruning_method="magnitude", pruning_sparsity=0.05), family)
    apply_masks(model, masks)
    lora = LoraConfig(r=4, target_modules=family.lora_target_modules, init_lora_weights=False)
    adapter = root / "adapter"
    peft_model = get_peft_model(model, lora)
    peft_model.peft_config["default"].base_model_name_or_path = "geo-org/tiny-base"
    peft_model.save_pretrained(adapter)
    AutoProcessor.from_pretrained(base).save_pretrained(adapter)
    save_masks(masks, adapter, metadata)
    assert card_main(["base", str(base), "--repo-id", "geo-org/tiny-base"]) == 0
    assert push_main(["base", str(base), "--repo-id", "geo-org/tiny-base"]) == 0
    text = render_model_card(adapter, "geo-org/tiny-pruned-lora", dataset_repo_id="geo-org/geollava")
    validate_card(text, "model")
    (adapter / "README.md").write_text(text)
    assert push_main(["model", str(adapter), "--repo-id", "geo-org/tiny-pruned-lora"]) == 0
    return base, adapter, text


def test_card_metadata_names_the_real_base_and_the_masks(published):
    _, _, text = published
    meta = validate_card(text, "model")
    assert meta["base_model"] == "geo-org/tiny-base" and meta["library_name"] == "peft"
    assert meta["pipeline_tag"] == "image-text-to-text" and meta["datasets"] == ["geo-org/geollava"]
    assert "## Pruning" in text and "`pruning_masks.safetensors` in this repository" in text
    assert "sparsity reached | 0.0500" in text and "## Intended use and limits" in text


def test_snippet_imports_only_the_four_libraries(published):
    tree = ast.parse(card_snippet(published[2]))
    modules = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    modules |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    # huggingface_hub is installed by transformers itself.
    assert modules <= ALLOWED_IMPORTS, modules - ALLOWED_IMPORTS


def test_snippet_runs_without_the_project_and_matches_the_project_loader(published, tmp_path):
    base, adapter, text = published
    out = tmp_path / "logits.pt"
    # One thread on both sides: a matmul's reduction order (so its last bits) depends on the thread count, and an
    # earlier test in this process may have changed ours.
    check = textwrap.dedent(
        f"""
        torch.set_num_threads(1)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor({INPUT_IDS!r})).logits
        torch.save(logits, {str(out)!r})
        """
    )
    # an empty cache: everything comes from the Hub
    run_card_snippet(text, check, tmp_path, env={"HF_HOME": str(tmp_path / "fresh-hf-home")})
    expected = project_logits(base, adapter, INPUT_IDS)
    assert torch.equal(torch.load(out), expected)
    # Without the masks the base would differ: the snippet's masking is what makes the logits equal.
    plain = AutoModelForImageTextToText.from_pretrained(base)
    with torch.no_grad():
        unmasked = get_peft_model_logits(plain, adapter)
    assert not torch.equal(unmasked, expected)
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == "geo-org/tiny-base"


def get_peft_model_logits(base, adapter) -> torch.Tensor:
    from peft import PeftModel

    model = PeftModel.from_pretrained(base, str(adapter)).eval()
    return model(input_ids=torch.tensor(INPUT_IDS)).logits


def test_a_snippet_that_needs_the_project_fails_and_says_why(published, tmp_path):
    _, _, text = published
    needs_project = text.replace("import torch\n", "import torch\nimport trainer\n", 1)
    with pytest.raises(RoundTripError, match=r"imports \['trainer'\], beyond what it names"):
        card_snippet(needs_project)
    # an import hidden from the static check still cannot reach the project
    hidden = text.replace("import torch\n", "import torch\n__import__('trainer')\n", 1)
    with pytest.raises(RoundTripError, match="No module named 'trainer' \\(blocked"):
        run_card_snippet(hidden, "", tmp_path)
    with pytest.raises(RoundTripError, match="no Python block under '## Load it'"):
        card_snippet(text.split("## Load it")[0])
