import pytest

from dataset_builder.annotation.openai.cost import (
    estimate_cost,
    image_tokens,
    load_price_table,
    pricing_for,
    request_input_tokens,
    text_tokens,
)


GPT4O = {"scheme": "tile", "base": 85, "tile": 170}
MINI = {"scheme": "tile", "base": 2833, "tile": 5667}


@pytest.mark.parametrize(
    ("size", "detail", "expected"),
    [
        # OpenAI's published examples for gpt-4o
        ((1024, 1024), "high", 85 + 170 * 4),  # scaled to 768x768: 2x2 tiles = 765
        ((2048, 4096), "high", 85 + 170 * 6),  # fit 1024x2048, then 768x1536: 2x3 tiles = 1105
        ((4096, 8192), "low", 85),
        ((336, 336), "high", 85 + 170),  # never enlarged: one tile
        ((513, 100), "high", 85 + 170 * 2),
        ((336, 336), "auto", 85 + 170),  # auto is estimated as high
    ],
)
def test_tile_rule_matches_the_published_examples(size, detail, expected):
    assert image_tokens(*size, detail, GPT4O) == expected


def test_gpt_4o_mini_bills_images_at_its_own_numbers():
    table = load_price_table()
    mini = pricing_for("gpt-4o-mini", table)
    assert (mini.input_per_1m, mini.output_per_1m) == (0.15, 0.60)
    assert image_tokens(336, 336, "low", mini.image_rule) == 2833
    assert image_tokens(1024, 1024, "high", mini.image_rule) == 2833 + 4 * 5667


def test_patch_rule_matches_the_published_examples():
    rule = {"scheme": "patch", "multiplier": 1.0, "max_patches": 1536}
    assert image_tokens(1024, 1024, "high", rule) == 1024
    assert image_tokens(1800, 2400, "low", rule) == 1452  # scaled down to fit 1536 patches
    assert image_tokens(32, 32, "high", {**rule, "multiplier": 1.62}) == 2


def test_request_tokens_add_text_overhead_and_both_images():
    prompt = "x" * 40
    assert text_tokens(prompt) == 10
    assert request_input_tokens(prompt, [(336, 336), (336, 336)], "low", MINI) == 6 + 10 + 2 * 2833


def test_batch_halves_the_price_and_unknown_models_have_none():
    table = load_price_table()
    mini = pricing_for("gpt-4o-mini", table)
    sync = estimate_cost([1_000_000], mini, 200, 300)
    batch = estimate_cost([1_000_000], mini, 200, 300, batch=True)
    assert sync.cost_usd == pytest.approx(0.15 + 200 * 0.6e-6)
    assert batch.cost_usd == pytest.approx(sync.cost_usd / 2)
    assert sync.max_cost_usd > sync.cost_usd
    local = pricing_for("Qwen/Qwen2.5-VL-7B-Instruct", table)
    assert not local.known and local.cost_usd(10, 10) is None
    assert estimate_cost([5], local, 1, 1).cost_usd is None


def test_price_table_override_merges(tmp_path):
    override = tmp_path / "prices.yaml"
    override.write_text("models:\n  gpt-4o-mini: {input: 1.0, output: 2.0}\n  my-vlm: {input: 0.0, output: 0.0}\n")
    table = load_price_table(override)
    mini = pricing_for("gpt-4o-mini", table)
    assert (mini.input_per_1m, mini.output_per_1m) == (1.0, 2.0)
    assert mini.image_rule == MINI  # kept from the shipped table
    assert pricing_for("my-vlm", table).known
    assert pricing_for("gpt-4o", table).input_per_1m == 2.5
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  m: {input: 1}\n")
    with pytest.raises(ValueError, match="models.m needs 'input' and 'output'"):
        load_price_table(bad)


def test_bad_image_size_is_refused():
    with pytest.raises(ValueError, match="0x10"):
        image_tokens(0, 10, "high", GPT4O)
