"""One OpenAI request of the annotator: what is planned before sending, and how a reply is classified."""

from dataclasses import dataclass

from dataset_builder.annotation.base import AnnotationRequest


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
