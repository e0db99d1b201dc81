"""One OpenAI request of the annotator: what is planned before sending, its body, and how a reply is classified.

Planning a pair reads its two images once: their sizes (for the token estimate) and their sha256 (for the cache key);
the bytes are not kept. The body (base64 data URLs) is built only when the request is sent or written to a batch
file, reading the images again, so a window of planned requests holds no image data of its own beyond what the
``AnnotationRequest`` carries (``frames_jpeg`` for a built dataset's rows).
"""

import base64
import io
import json
from dataclasses import dataclass
from pathlib import Path

from openai.types.chat import ChatCompletion
from PIL import Image

from dataset_builder.annotation.base import AnnotationRequest
from dataset_builder.annotation.cache import cache_key, sha256_hex
from dataset_builder.annotation.cost import ModelPricing, request_input_tokens
from dataset_builder.annotation.openai_config import OpenAIAnnotatorConfig
from dataset_builder.images import ImageTooLarge, open_image


#: Expected answer length used by the up-front estimate (two short descriptions and the changes).
EXPECTED_OUTPUT_TOKENS = 180


@dataclass
class PlannedRequest:
    """One request, ready to send: its cache key, the sizes sent and the estimated tokens."""

    request: AnnotationRequest
    key: str
    image_hash: str
    sizes: list[tuple[int, int]]
    input_tokens: int
    cached: dict | None = None


def scaled_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """The size an image is sent at: unchanged when it fits ``max_side``, else scaled down keeping its aspect."""
    longest = max(width, height)
    if longest <= max_side:
        return width, height
    scale = max_side / longest
    return max(1, round(width * scale)), max(1, round(height * scale))


def mime_type(data: bytes) -> str:
    """The MIME type of an image from its first bytes (PNG, WebP, else JPEG)."""
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "image/jpeg"


class RequestPlanner:
    """Plans requests (cache key, sizes, estimated tokens) and builds their Chat Completions bodies.

    Args:
        config: The annotator's options.
        prompt: The instruction sent with every pair.
        pricing: The model's pricing (its image-token rule).
    """

    def __init__(self, config: OpenAIAnnotatorConfig, prompt: str, pricing: ModelPricing):
        self.config = config
        self.prompt = prompt
        self.pricing = pricing
        params = {
            "prompt": prompt,
            "temperature": config.temperature,
            "max_tokens": config.max_tokens,
            "image_detail": config.image_detail,
            "image_max_side": config.image_max_side,
        }
        self.params_hash = sha256_hex(json.dumps(params, sort_keys=True))

    @staticmethod
    def sources(request: AnnotationRequest) -> list[bytes]:
        """The two images' bytes: the stored frames, else the fMoW files."""
        if request.frames_jpeg is not None:
            return list(request.frames_jpeg)
        return [Path(p).read_bytes() for p in request.image_paths]

    def plan(self, request: AnnotationRequest) -> PlannedRequest:
        """Key, sizes and estimated input tokens of one request (``cached`` is left for the caller).

        Raises:
            ValueError: If an image cannot be read (the message names the pair and the file).
        """
        sources = self.sources(request)
        sizes = []
        for i, data in enumerate(sources):
            where = "frames_jpeg" if request.frames_jpeg is not None else str(request.image_paths[i])
            try:
                # header only, refused over the pixel/byte limit of dataset_builder.images before any decoding
                with open_image(data, name=f"pair {request.id}: image {i} ({where})") as img:
                    w, h = img.size
            except ImageTooLarge:
                raise
            except (OSError, ValueError) as err:
                raise ValueError(f"pair {request.id}: image {i} ({where}) cannot be read: {err}") from err
            sizes.append((w, h) if request.frames_jpeg is not None else scaled_size(w, h, self.config.image_max_side))
        image_hash = sha256_hex(*sources)
        key = cache_key(request.id, self.config.model, self.params_hash, image_hash)
        tokens = request_input_tokens(self.prompt, sizes, self.config.image_detail, self.pricing.image_rule)
        return PlannedRequest(request, key, image_hash, sizes, tokens)

    def image_urls(self, planned: PlannedRequest) -> list[str]:
        """The two frames as base64 data URLs, earlier first (fMoW images downscaled to ``image_max_side``)."""
        urls = []
        for data, size in zip(self.sources(planned.request), planned.sizes, strict=True):
            if planned.request.frames_jpeg is None:
                with open_image(data) as img:
                    if img.size != size:
                        buf = io.BytesIO()
                        img.convert("RGB").resize(size, Image.Resampling.LANCZOS).save(buf, "JPEG", quality=90)
                        data = buf.getvalue()
            urls.append(f"data:{mime_type(data)};base64,{base64.b64encode(data).decode('ascii')}")
        return urls

    def chat_body(self, planned: PlannedRequest) -> dict:
        """The Chat Completions request body of one pair (also the Batch API line's ``body``)."""
        content = [{"type": "text", "text": self.prompt}]
        content += [
            {"type": "image_url", "image_url": {"url": url, "detail": self.config.image_detail}}
            for url in self.image_urls(planned)
        ]
        return {
            "model": self.config.model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": self.config.max_tokens,
            "temperature": self.config.temperature,
        }

    def expected_tokens(self, planned: PlannedRequest) -> int:
        """Input plus expected output tokens of one request (what the tokens-per-minute bucket is charged)."""
        return planned.input_tokens + min(EXPECTED_OUTPUT_TOKENS, self.config.max_tokens)


def classify_completion(completion) -> tuple[str, str | None, str]:
    """Turn a chat completion into ``(status, text, reason)``.

    Args:
        completion: An ``openai`` ``ChatCompletion``.

    Returns:
        ``("ok", caption, "")``, or a status among ``refused``, ``content_filter``, ``empty``, ``malformed`` with
        ``text=None`` and a reason; a caption cut at ``max_tokens`` is ``ok`` with reason ``"truncated"``.
    """
    choices = getattr(completion, "choices", None)
    if not choices:
        return "malformed", None, "the reply has no choices"
    choice = choices[0]
    message = getattr(choice, "message", None)
    if choice.finish_reason == "content_filter":
        return "content_filter", None, "finish_reason=content_filter"
    if message is None:
        return "malformed", None, "the reply's choice has no message"
    refusal = getattr(message, "refusal", None)
    if refusal:
        return "refused", None, f"refusal: {refusal[:200]}"
    content = message.content if isinstance(message.content, str) else None
    if content is None or not content.strip():
        return "empty", None, f"empty answer (finish_reason={choice.finish_reason})"
    return "ok", content.strip(), "truncated" if choice.finish_reason == "length" else ""


def custom_id(key: str) -> str:
    """The Batch API ``custom_id`` of a request: a hash of its cache key (unique, free of the pair's details)."""
    return sha256_hex(key)[:32]


def planned_from_key(key: str, input_tokens: int) -> PlannedRequest:
    """A stand-in planned request rebuilt from a cache key (``id|model|params|images``) to record its answer."""
    pair_id, *_, image_hash = key.split("|")
    return PlannedRequest(AnnotationRequest(pair_id, (Path(), Path())), key, image_hash, [], input_tokens)


def parse_batch_row(row: dict) -> tuple[str, str | None, str, dict]:
    """``(status, text, reason, usage)`` of one line of a Batch output or error file.

    An error line, or a response other than 200, is ``failed`` (not cached: a rerun asks again); a 200 response is
    classified as :func:`classify_completion` does, ``malformed`` when it is not a chat completion.
    """
    response = row.get("response") or {}
    if row.get("error") or response.get("status_code") != 200:
        error = row.get("error") or (response.get("body") or {}).get("error") or {}
        reason = f"batch error: {error.get('code') or response.get('status_code')} {error.get('message', '')}"
        return "failed", None, reason.strip(), {}
    try:
        completion = ChatCompletion.model_validate(response["body"])
        status, text, reason = classify_completion(completion)
        usage = completion.usage.model_dump(exclude_none=True) if completion.usage else {}
    except (ValueError, TypeError, KeyError) as err:
        return "malformed", None, f"unreadable reply: {str(err)[:200]}", {}
    return status, text, reason, usage
