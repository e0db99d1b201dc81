"""Token and price estimates for OpenAI annotation, before anything is sent.

Image tokens follow OpenAI's published rules (the vision guide's "Calculating costs", read 2025-08), with the
per-model numbers and prices in the shipped ``openai_prices.yaml`` (overridable with ``--price_table``):

* ``tile`` models (gpt-4o, gpt-4o-mini): detail ``low`` costs ``base`` tokens whatever the size; detail ``high``
  scales the image to fit 2048x2048, then its shortest side to 768 (images are never enlarged), and costs
  ``base + tile * n_tiles`` with 512-px tiles. ``auto`` is estimated as ``high`` (the upper bound).
* ``patch`` models (gpt-4.1-mini/nano): 32-px patches, at most ``max_patches``, times a multiplier.

Text is estimated at 4 characters a token (OpenAI's rule of thumb for English; no tokenizer file can be
downloaded offline) plus the chat format's overhead. Output tokens cannot be known in advance: the estimate uses
``expected_output_tokens`` and the budget cap reserves ``max_tokens`` for every request in flight.
"""

import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml


#: Chat format overhead: ~3 tokens per message plus 3 priming the reply (OpenAI cookbook, "counting tokens").
MESSAGE_OVERHEAD_TOKENS = 3
REPLY_PRIMING_TOKENS = 3
CHARS_PER_TOKEN = 4


@dataclass(frozen=True)
class ModelPricing:
    """What one model costs and how it counts image tokens.

    Attributes:
        model: The model name.
        input_per_1m: USD per 1M input tokens (``None`` when unknown).
        output_per_1m: USD per 1M output tokens (``None`` when unknown).
        batch_discount: Factor applied to both prices on the Batch API.
        image_rule: ``{"scheme": "tile", "base", "tile"}`` or ``{"scheme": "patch", "multiplier", "max_patches"}``.
    """

    model: str
    input_per_1m: float | None
    output_per_1m: float | None
    batch_discount: float
    image_rule: dict

    @property
    def known(self) -> bool:
        """Whether the price table lists this model."""
        return self.input_per_1m is not None and self.output_per_1m is not None

    def cost_usd(self, input_tokens: int, output_tokens: int, batch: bool = False) -> float | None:
        """The price of that many tokens (``None`` when the model's price is unknown)."""
        if not self.known:
            return None
        factor = self.batch_discount if batch else 1.0
        return factor * (input_tokens * self.input_per_1m + output_tokens * self.output_per_1m) / 1e6


def load_price_table(override: str | Path | None = None) -> dict:
    """The shipped price table, with an override file's ``models`` (and other keys) merged over it.

    Args:
        override: A YAML file in the shipped table's format, or ``None``.

    Returns:
        ``{"batch_discount": float, "models": {name: {...}}, "default": {...}}``.

    Raises:
        ValueError: If the override is not a mapping or a model entry lacks ``input``/``output``.
    """
    table = yaml.safe_load(resources.files("dataset_builder.annotation").joinpath("openai_prices.yaml").read_text())
    if override is not None:
        extra = yaml.safe_load(Path(override).read_text(encoding="utf-8")) or {}
        if not isinstance(extra, dict):
            raise ValueError(f"{override}: a price table must be a YAML mapping, got {type(extra).__name__}")
        for name, entry in (extra.get("models") or {}).items():
            if not isinstance(entry, dict) or not {"input", "output"} <= entry.keys():
                raise ValueError(f"{override}: models.{name} needs 'input' and 'output' (USD per 1M tokens)")
            table["models"][name] = {**table["models"].get(name, {}), **entry}
        for key in ("batch_discount", "default"):
            if key in extra:
                table[key] = extra[key]
    return table


def pricing_for(model: str, table: dict) -> ModelPricing:
    """The pricing of ``model`` from a price table (unknown models get ``default``'s image rule and no price)."""
    entry = table["models"].get(model)
    if entry is None:
        return ModelPricing(model, None, None, table["batch_discount"], table["default"]["image_tokens"])
    rule = entry.get("image_tokens", table["default"]["image_tokens"])
    return ModelPricing(model, float(entry["input"]), float(entry["output"]), table["batch_discount"], rule)


def image_tokens(width: int, height: int, detail: str, rule: dict) -> int:
    """Input tokens one image costs, by OpenAI's published rule.

    Args:
        width: Image width in pixels, as sent.
        height: Image height in pixels, as sent.
        detail: ``"low"``, ``"high"`` or ``"auto"`` (estimated as ``"high"``).
        rule: The model's ``image_tokens`` entry of the price table.

    Returns:
        The number of tokens.
    """
    if width < 1 or height < 1:
        raise ValueError(f"image size {width}x{height}: both sides must be >= 1 pixel")
    if rule["scheme"] == "patch":
        return _patch_tokens(width, height, rule)
    if detail == "low":
        return int(rule["base"])
    w, h = float(width), float(height)
    scale = min(1.0, 2048 / max(w, h))
    w, h = w * scale, h * scale
    scale = min(1.0, 768 / min(w, h))
    w, h = w * scale, h * scale
    tiles = math.ceil(w / 512) * math.ceil(h / 512)
    return int(rule["base"] + rule["tile"] * tiles)


def _patch_tokens(width: int, height: int, rule: dict) -> int:
    max_patches = int(rule.get("max_patches", 1536))
    patches = math.ceil(width / 32) * math.ceil(height / 32)
    if patches > max_patches:
        r = math.sqrt(32 * 32 * max_patches / (width * height))
        r *= min(math.floor(width * r / 32) / (width * r / 32), math.floor(height * r / 32) / (height * r / 32))
        patches = math.ceil(width * r / 32) * math.ceil(height * r / 32)
    return math.ceil(patches * float(rule["multiplier"]))


def text_tokens(text: str) -> int:
    """Estimated tokens of English text (4 characters a token, at least 1 for non-empty text)."""
    return math.ceil(len(text) / CHARS_PER_TOKEN) if text else 0


def request_input_tokens(prompt: str, image_sizes: list[tuple[int, int]], detail: str, rule: dict) -> int:
    """Estimated input tokens of one chat request: one user message with the prompt and the images.

    Args:
        prompt: The instruction text.
        image_sizes: ``(width, height)`` of each image as sent.
        detail: The image detail.
        rule: The model's image-token rule.

    Returns:
        The estimated ``prompt_tokens`` the API will report.
    """
    images = sum(image_tokens(w, h, detail, rule) for w, h in image_sizes)
    return MESSAGE_OVERHEAD_TOKENS + REPLY_PRIMING_TOKENS + text_tokens(prompt) + images


@dataclass
class CostEstimate:
    """The estimate of a run, printed and recorded before anything is sent.

    Attributes:
        model: The model.
        pairs: Pairs to send.
        input_tokens: Estimated input tokens of all of them.
        output_tokens: Estimated output tokens (``pairs * expected_output_tokens``).
        max_output_tokens: Output tokens if every answer used ``max_tokens``.
        cost_usd: Estimated price (``None`` when the model's price is unknown).
        max_cost_usd: Price if every answer used ``max_tokens``.
        batch: Whether Batch API prices were used.
    """

    model: str
    pairs: int
    input_tokens: int
    output_tokens: int
    max_output_tokens: int
    cost_usd: float | None
    max_cost_usd: float | None
    batch: bool

    def summary(self) -> str:
        """One line for the console and the log."""
        price = "price unknown (model not in the price table)" if self.cost_usd is None else f"${self.cost_usd:,.2f}"
        upper = "" if self.max_cost_usd is None else f" (at most ${self.max_cost_usd:,.2f} if every answer is long)"
        return (
            f"estimate for {self.pairs:,} pair(s) on {self.model}{' (Batch API)' if self.batch else ''}: "
            f"{self.input_tokens:,} input + {self.output_tokens:,} output tokens, {price}{upper}"
        )


def estimate_cost(
    tokens: list[int], pricing: ModelPricing, expected_output_tokens: int, max_tokens: int, batch: bool = False
) -> CostEstimate:
    """:func:`estimate_totals` of a list of per-request input token counts."""
    return estimate_totals(len(tokens), sum(tokens), pricing, expected_output_tokens, max_tokens, batch)


def estimate_totals(
    requests: int,
    input_tokens: int,
    pricing: ModelPricing,
    expected_output_tokens: int,
    max_tokens: int,
    batch: bool = False,
) -> CostEstimate:
    """The estimate of ``requests`` requests holding ``input_tokens`` input tokens in all (a streamed sum).

    Args:
        requests: How many requests.
        input_tokens: Their estimated input tokens, added up.
        pricing: The model's pricing.
        expected_output_tokens: Expected answer length in tokens.
        max_tokens: The answer length cap.
        batch: Price at Batch API rates.

    Returns:
        The estimate.
    """
    out = requests * min(expected_output_tokens, max_tokens)
    return CostEstimate(
        model=pricing.model,
        pairs=requests,
        input_tokens=input_tokens,
        output_tokens=out,
        max_output_tokens=requests * max_tokens,
        cost_usd=pricing.cost_usd(input_tokens, out, batch),
        max_cost_usd=pricing.cost_usd(input_tokens, requests * max_tokens, batch),
        batch=batch,
    )
