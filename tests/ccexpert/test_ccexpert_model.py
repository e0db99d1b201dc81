import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    AutoProcessor,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    SiglipVisionConfig,
)

from trainer.models.ccexpert import CCExpertConfig, DifferenceAwareIntegrationModule, proportional_taps
from trainer.models.ccexpert.modeling_ccexpert import sine_positions
from trainer.models.ccexpert.template import CCEXPERT_CHAT_TEMPLATE, CCEXPERT_PROMPT
from trainer.models.families import build_messages, family_of, get_family
from trainer.tiny.ccexpert import build_tiny_ccexpert


def _inputs(processor, pairs, answers=None):
    answers = answers or [None] * len(pairs)
    messages = [build_messages("ccexpert", "Describe the change.", p, a) for p, a in zip(pairs, answers)]
    return processor.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_tensors="pt", padding=True, add_generation_prompt=True
    )


@pytest.fixture(scope="module")
def loaded(tiny_ccexpert):
    model = AutoModelForImageTextToText.from_pretrained(tiny_ccexpert).eval()
    return model, AutoProcessor.from_pretrained(tiny_ccexpert)


# --- configuration -----------------------------------------------------------------------------------------------


def test_taps_are_the_papers_blocks_or_the_same_relative_depths():
    assert proportional_taps(27) == [17, 20, 23, 26]
    # llava-hf conversions keep 26 of the 27 blocks: the same absolute blocks, the last one being block 26.
    assert proportional_taps(26) == [17, 20, 23, 26]
    assert proportional_taps(8) == [5, 6, 7, 8]
    for blocks in range(1, 30):
        taps = proportional_taps(blocks)
        assert taps == sorted(set(taps)) and taps[0] >= 1 and taps[-1] == min(blocks, 26)


def _vision(layers=8):
    return SiglipVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=2)


def test_config_rejects_bad_taps_naming_the_field_and_value():
    with pytest.raises(ValueError, match=r"tapped_vision_layers \[5, 9\]"):
        CCExpertConfig(vision_config=_vision(), tapped_vision_layers=[5, 9])
    with pytest.raises(
        ValueError, match=r"tapped_vision_layers \[6, 5, 8\]: must be a non-empty, strictly increasing"
    ):
        CCExpertConfig(vision_config=_vision(), tapped_vision_layers=[6, 5, 8])
    with pytest.raises(ValueError, match=r"vision_feature_layer -2"):
        CCExpertConfig(vision_config=_vision(), vision_feature_layer=-2)
    with pytest.raises(ValueError, match="integration_num_heads 3"):
        CCExpertConfig(vision_config=_vision(), integration_num_heads=3)
    # 7B layout: 26-block tower, plain path at -1 = block 26 = last tap; heads 1152 // 128.
    real = CCExpertConfig(vision_config=SiglipVisionConfig(hidden_size=1152, num_hidden_layers=26))
    assert real.tapped_vision_layers == [17, 20, 23, 26] and real.integration_num_heads == 9


def test_config_round_trips_through_auto_config(tmp_path):
    config = CCExpertConfig(vision_config=_vision(), integration_depth=3, integration_gate_init=0.0)
    config.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "ccexpert"
    again = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(again, CCExpertConfig)
    assert (again.tapped_vision_layers, again.integration_depth, again.integration_gate_init) == ([5, 6, 7, 8], 3, 0)


# --- the module ----------------------------------------------------------------------------------------------------


def test_sine_positions_match_the_detr_formula():
    pos = sine_positions(3, 8)
    assert pos.shape == (9, 8)
    # token (row 1, col 2): y = (2 - 0.5) / 3 * 2 pi, x = (3 - 0.5) / 3 * 2 pi; 4 features per axis.
    y, x = 1.5 / 3 * 2 * torch.pi, 2.5 / 3 * 2 * torch.pi
    freqs = torch.tensor([1.0, 1.0, 100.0, 100.0])

    def expect(v):
        return torch.tensor([(v / f).sin() if k % 2 == 0 else (v / f).cos() for k, f in enumerate(freqs)])

    assert torch.allclose(pos[1 * 3 + 2], torch.cat((expect(y), expect(x))), atol=1e-5)


def test_module_shapes_weights_and_gradient_flow():
    torch.manual_seed(0)
    module = DifferenceAwareIntegrationModule(64, num_levels=4, depth=2, num_heads=2)
    levels_a = [torch.randn(3, 16, 64, requires_grad=True) for _ in range(4)]
    levels_b = [torch.randn(3, 16, 64, requires_grad=True) for _ in range(4)]
    out = module(levels_a, levels_b)
    assert out["enhanced_a"].shape == out["enhanced_b"].shape == out["change"].shape == (3, 16, 64)
    weights = out["level_weights"]
    assert weights.shape == (3, 4) and bool(((weights > 0) & (weights < 1)).all())
    (out["enhanced_a"].square().mean() + out["enhanced_b"].square().mean()).backward()
    no_grad = [n for n, p in module.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []  # every weight of the module is on the path to the projector's input
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in levels_a + levels_b)


def test_module_rejects_a_non_square_grid_and_a_wrong_level_count():
    module = DifferenceAwareIntegrationModule(64, num_levels=2, num_heads=2)
    with pytest.raises(ValueError, match="square token grid, got 15"):
        module([torch.randn(1, 15, 64)] * 2, [torch.randn(1, 15, 64)] * 2)
    with pytest.raises(ValueError, match="expected 2 tapped levels, got 3"):
        module([torch.randn(1, 16, 64)] * 3, [torch.randn(1, 16, 64)] * 3)


# --- the model -----------------------------------------------------------------------------------------------------


def test_family_and_chat_template_render_the_authors_prompt(loaded, random_pair):
    model, processor = loaded
    assert family_of(model).name == "ccexpert" and get_family("ccexpert").visual == "images"
    messages = build_messages("ccexpert", "Any question of the dataset.", random_pair(0), "a road is built")
    text = processor.apply_chat_template(messages, tokenize=False)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        f"<|im_start|>user\n{CCEXPERT_PROMPT}<|im_end|>\n<|im_start|>assistant\na road is built<|im_end|>\n"
    )
    own = processor.apply_chat_template(messages[:1], tokenize=False, use_question=True)
    assert "Any question of the dataset." in own and "What difference" not in own
    assert processor.chat_template == CCEXPERT_CHAT_TEMPLATE


def test_with_the_output_gate_at_zero_it_is_plain_llava_onevision(loaded, random_pair):
    model, processor = loaded
    inputs = _inputs(processor, [random_pair(1), random_pair(2)])
    plain_config = LlavaOnevisionConfig(
        **{k: v for k, v in model.config.to_dict().items() if not k.startswith(("integration_", "tapped_"))}
    )
    plain = LlavaOnevisionForConditionalGeneration(plain_config).eval()
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    assert missing == [] and unexpected and all(".integration_module." in k for k in unexpected)
    with torch.no_grad():
        reference = plain(**inputs).logits
        assert not torch.allclose(model(**inputs).logits, reference, atol=1e-4)  # gate 1: the module matters
        model.model.integration_module.output_gate.zero_()
        try:
            gated = model(**inputs).logits
        finally:
            model.model.integration_module.output_gate.fill_(1.0)
    assert torch.equal(gated, reference)


def test_image_a_tokens_depend_on_image_b(loaded, random_pair):
    model, processor = loaded
    a, b = random_pair(3)
    _, other_b = random_pair(4)
    with torch.no_grad():
        feats = [
            model.model.get_image_features(_inputs(processor, [[a, second]])["pixel_values"]).pooler_output[0]
            for second in (b, other_b)
        ]
    assert feats[0].shape == (8 * 8 + 1, model.config.text_config.hidden_size)
    assert not torch.allclose(feats[0], feats[1])  # the change-aware layers mix B into A's tokens


def test_three_images_in_a_sample_is_a_clear_error(loaded, random_pair):
    model, processor = loaded
    pixel_values = _inputs(processor, [random_pair(5)])["pixel_values"]
    with pytest.raises(ValueError, match=r"exactly 2 images per sample .*\[3\]"):
        model.model.get_image_features(torch.cat([pixel_values, pixel_values[:1]]), batch_num_images=torch.tensor([3]))


def test_save_and_load_give_identical_logits_and_generations(loaded, random_pair, tmp_path):
    model, processor = loaded
    inputs = _inputs(processor, [random_pair(6)])
    model.save_pretrained(tmp_path)
    again = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    assert type(again).__name__ == "CCExpertForConditionalGeneration"
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, again(**inputs).logits)
        first = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        assert torch.equal(first, again.generate(**inputs, max_new_tokens=4, do_sample=False))


def test_lora_adapter_trains_saves_and_loads(tiny_ccexpert, random_pair, tmp_path):
    base = AutoModelForImageTextToText.from_pretrained(tiny_ccexpert)
    processor = AutoProcessor.from_pretrained(tiny_ccexpert)
    family = family_of(base)
    peft_model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=family.lora_target_modules, init_lora_weights=False)
    )
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n and ".language_model." in n for n in trainable)
    inputs = _inputs(processor, [random_pair(7)])
    with torch.no_grad():
        before = peft_model(**inputs).logits
    peft_model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(tiny_ccexpert), tmp_path)
    with torch.no_grad():
        assert torch.equal(before, reloaded(**inputs).logits)


def test_gate_init_zero_builds_a_model_that_starts_at_llava_onevision(tmp_path):
    out = build_tiny_ccexpert(tmp_path, corpus=["a road is built", "no change"] * 5, gate_init=0.0)
    model = AutoModelForImageTextToText.from_pretrained(out)
    assert model.config.integration_gate_init == 0.0
    assert model.model.integration_module.output_gate.item() == 0.0
    info = json.loads((out / "tiny_model.json").read_text())
    assert 0 < info["integration_module_parameters"] < info["parameters"]


def test_convert_keeps_every_llava_onevision_weight(tmp_path, random_pair):
    from trainer.models.ccexpert.convert import main as convert_main
    from trainer.tiny.build import build_tiny_model

    base = build_tiny_model("llava-onevision", tmp_path / "ov", corpus=["a road is built", "no change"] * 5)
    out = tmp_path / "cc"
    args = ["--base", str(base), "--out", str(out), "--integration_gate_init", "0", "--dtype", "float32"]
    assert convert_main(args) == 0
    plain = AutoModelForImageTextToText.from_pretrained(base).eval()
    model = AutoModelForImageTextToText.from_pretrained(out).eval()
    assert model.config.model_type == "ccexpert" and model.config.tapped_vision_layers == [1, 2]
    plain_state = plain.state_dict()
    for name, tensor in model.state_dict().items():
        if ".integration_module." not in name:
            assert torch.equal(tensor, plain_state[name]), name
    processor = AutoProcessor.from_pretrained(out)
    assert processor.image_processor.image_grid_pinpoints == [[64, 64]]
    inputs = _inputs(processor, [random_pair(8)])
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, plain(**inputs).logits)  # gate 0: exactly the base
    assert convert_main(["--base", str(out / "nope"), "--out", str(tmp_path / "x")]) == 1
