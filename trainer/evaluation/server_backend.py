"""Captioning through an OpenAI-compatible server (vLLM, SGLang, ``transformers serve``): requests, retries.

A row becomes one chat completion in its family's prompt format (:func:`chat_request`, from the same
``build_messages`` as training): a video family's frames as one lossless clip in a ``video_url`` data URL, an image
family's as PNG ``image_url`` data URLs. :func:`run_requests` sends them with ``--concurrency`` workers under the
annotation transport's retry policy and hands the answers back in input order. See docs/evaluation.md "At scale".
"""

import asyncio
import base64
import io
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from trainer.models.families import Family, build_messages, get_family


if TYPE_CHECKING:
    from dataset_builder.annotation.openai.client import RetryPolicy


logger = logging.getLogger(__name__)

#: The clip's frame rate: one frame a second, as the dataset's own videos.
CLIP_FPS = 1
#: The silent audio track's sample rate (what speech-aware processors resample to anyway).
AUDIO_RATE = 16_000


@dataclass
class ServerConfig:
    """Where the model runs when it is not loaded in-process: ``--server`` and how requests are sent to it."""

    server: str | None = field(
        default=None,
        metadata={
            "help": "OpenAI-compatible endpoint serving the model, e.g. http://127.0.0.1:8000/v1 (vllm serve, "
            "sglang, transformers serve). --model still names the model, for its family and prompt format. The key, "
            "if the server wants one, is read from OPENAI_API_KEY."
        },
    )
    served_model: str | None = field(
        default=None, metadata={"help": "The model name to ask the server for (default: the one model it lists)."}
    )
    concurrency: int = field(default=8, metadata={"help": "Requests in flight at once."})
    timeout_s: float = field(default=600.0, metadata={"help": "Timeout of one request, in seconds."})
    max_retries: int = field(
        default=3, metadata={"help": "Retries of one row after 429/5xx/timeouts/dropped connections."}
    )
    backoff_s: float = field(default=1.0, metadata={"help": "First backoff delay (doubles per retry, with jitter)."})
    backoff_max_s: float = field(default=30.0, metadata={"help": "Longest backoff delay, in seconds."})

    def __post_init__(self):
        if self.server is not None and not self.server.startswith(("http://", "https://")):
            raise ValueError(f"--server must be an http(s) URL such as http://127.0.0.1:8000/v1, got {self.server!r}")
        if self.concurrency < 1:
            raise ValueError(f"--concurrency must be >= 1, got {self.concurrency}")
        if self.timeout_s <= 0:
            raise ValueError(f"--timeout_s must be > 0, got {self.timeout_s}")
        if self.max_retries < 0:
            raise ValueError(f"--max_retries must be >= 0, got {self.max_retries}")
        if self.backoff_s < 0 or self.backoff_max_s < self.backoff_s:
            raise ValueError(
                f"--backoff_s {self.backoff_s} and --backoff_max_s {self.backoff_max_s}: need 0 <= backoff_s <= max"
            )

    def client_options(self) -> dict:
        """Keyword arguments of ``openai.OpenAI``/``AsyncOpenAI``: no client-side retries (the policy retries)."""
        return {
            "base_url": self.server,
            "api_key": os.environ.get("OPENAI_API_KEY") or "EMPTY",
            "max_retries": 0,
            "timeout": self.timeout_s,
        }


# ---------------------------------------------------------------------- the request
def encode_clip(frames: np.ndarray, fps: int = CLIP_FPS) -> bytes:
    """Frames ``(T, H, W, 3)`` uint8 as a lossless MP4 (H.264 RGB, QP 0) with a silent mono audio track.

    Lossless, so the server decodes exactly the dataset's frames; the silent track, because servers that treat the
    model as audio-visual (``transformers serve`` for every family here) read a video's audio and fail without one.
    """
    import av  # PyAV only where a clip is written: image families and in-process runs go without it

    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"a clip needs frames of shape (T, H, W, 3), got {frames.shape}")
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        video = container.add_stream("libx264rgb", rate=fps)
        video.width, video.height, video.pix_fmt = frames.shape[2], frames.shape[1], "rgb24"
        video.options = {"qp": "0"}
        audio = container.add_stream("aac", rate=AUDIO_RATE)
        audio.layout = "mono"
        for frame in frames:
            for packet in video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        silence = av.AudioFrame.from_ndarray(
            np.zeros((1, AUDIO_RATE * len(frames) // fps), dtype=np.float32), format="fltp", layout="mono"
        )
        silence.sample_rate = AUDIO_RATE
        for packet in (*audio.encode(silence), *audio.encode()):
            container.mux(packet)
    return buffer.getvalue()


def png_bytes(image: Image.Image) -> bytes:
    """An image as PNG (lossless)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(data: bytes, mime: str) -> str:
    """``data:MIME;base64,...``."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def request_content(messages: list[dict]) -> list[dict]:
    """The user turn of :func:`trainer.models.families.build_messages` as OpenAI chat content parts.

    A ``video`` part (an ``(T, H, W, 3)`` array) becomes a ``video_url`` (:func:`encode_clip`), an ``image`` part a
    PNG ``image_url``, text stays text, in the same order, so the server renders the training prompt.
    """
    (turn,) = [m for m in messages if m["role"] == "user"]
    parts = []
    for part in turn["content"]:
        if part["type"] == "video":
            url = data_url(encode_clip(part["video"]), "video/mp4")
            parts.append({"type": "video_url", "video_url": {"url": url}})
        elif part["type"] == "image":
            parts.append({"type": "image_url", "image_url": {"url": data_url(png_bytes(part["image"]), "image/png")}})
        elif part["type"] == "text":
            parts.append({"type": "text", "text": part["text"]})
        else:
            raise ValueError(f"a message part of type {part['type']!r} has no OpenAI form")
    return parts


def chat_request(
    family: Family | str,
    question: str,
    frames,
    *,
    model: str,
    max_new_tokens: int,
    do_sample: bool = False,
    dates: Sequence[str] | None = None,
) -> dict:
    """The chat completion body of one row: its frames and question in the family's format, greedy by default.

    Args:
        family: The model family (how it takes the frames).
        question: The question, without visual placeholders.
        frames: The row's frames, earlier first (PIL images or ``(H, W, 3)`` arrays): a pair, or a sequence.
        model: The served model's name.
        max_new_tokens: Generation budget (``max_tokens``).
        do_sample: Sample at temperature 1 instead of greedy decoding (temperature 0).
        dates: A sequence's frame dates, one per frame (see ``build_messages``), or ``None``.

    Returns:
        The body (``model``, ``messages``, ``max_tokens``, ``temperature``; a video also asks the server to take
        all of the clip's frames, ``chat_template_kwargs.num_frames``, rather than sample its own number).
    """
    family = get_family(family) if isinstance(family, str) else family
    content = request_content(build_messages(family, question, frames, dates=dates))
    body = {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_new_tokens,
        "temperature": 1.0 if do_sample else 0.0,
    }
    if any(part["type"] == "video_url" for part in content):
        body["chat_template_kwargs"] = {"num_frames": len(frames)}
    return body


def served_models(config: ServerConfig) -> list[str]:
    """The model names the server lists (``GET /models``), under the retry policy.

    Raises:
        ValueError: If the server cannot be reached or refuses the key (naming the URL).
    """
    # openai only where a server is asked: in-process runs import this module for its options alone
    import openai

    from dataset_builder.annotation.openai.client import EndpointRefusedKey, GaveUp, RequestRejected, RetryPolicy

    policy = RetryPolicy(config.max_retries, config.backoff_s, config.backoff_max_s)
    try:
        with openai.OpenAI(**config.client_options()) as client:
            return [m.id for m in policy.call(client.models.list)]
    except (GaveUp, EndpointRefusedKey, RequestRejected) as err:
        raise ValueError(f"{config.server}: cannot list its models ({err})") from err


def resolve_served_model(config: ServerConfig) -> str:
    """``--served_model``, or the one model the server lists.

    Raises:
        ValueError: If the server lists no model or several (name one with --served_model), or is unreachable.
    """
    if config.served_model:
        return config.served_model
    names = served_models(config)
    if len(names) != 1:
        raise ValueError(f"{config.server} lists {len(names)} models {names}: choose one with --served_model")
    return names[0]


# ---------------------------------------------------------------------- sending
@dataclass
class RemoteResult:
    """One request's outcome.

    Attributes:
        index: Its position in the input.
        text: The answer (stripped), or ``None`` when there is none.
        error: Why the server gave no answer (``None`` when it did).
        skipped: Why the request could not be built (its builder raised ``ValueError``): nothing was sent.
        client_seconds: Time spent building the request and reading the reply.
        server_seconds: Time spent waiting for the server (every attempt).
    """

    index: int
    text: str | None
    error: str | None = None
    skipped: str | None = None
    client_seconds: float = 0.0
    server_seconds: float = 0.0


@dataclass
class RunStats:
    """What :func:`run_requests` did: counts, retries by reason, and where the time went."""

    sent: int = 0
    failed: int = 0
    not_sent: int = 0
    retries_by_reason: Counter = field(default_factory=Counter)
    client_seconds: float = 0.0
    server_seconds: float = 0.0
    stopped: str | None = None


def run_requests(
    builders: Sequence[Callable[[], dict]], config: ServerConfig, on_result: Callable[[RemoteResult], None]
) -> RunStats:
    """Send one chat completion per builder, ``config.concurrency`` at a time; ``on_result`` gets them in order.

    Each builder makes its request body (in a worker thread, so encoding overlaps the server's work); one that raises
    ``ValueError`` (a row that cannot be asked about) comes back ``skipped``, nothing sent. A request is
    retried on 429, 5xx, timeouts and dropped connections (the annotation transport's policy: jittered exponential
    backoff, ``retry-after`` honoured); a request refused as malformed fails alone. When a request gives up because
    the server cannot be reached, or it refuses the key, nothing more is sent: the rest come back failed with
    "not sent", so the caller can name every row left.

    Args:
        builders: One callable per request, returning its body.
        config: The server and the sending options.
        on_result: Called once per builder with its :class:`RemoteResult`, in input order.

    Returns:
        The run's counts and timings.
    """
    stats = RunStats()
    asyncio.run(_run(list(builders), config, on_result, stats))
    return stats


async def _run(builders: list, config: ServerConfig, on_result, stats: RunStats) -> None:
    import openai  # see served_models

    from dataset_builder.annotation.openai.client import RetryPolicy

    policy = RetryPolicy(config.max_retries, config.backoff_s, config.backoff_max_s, stats.retries_by_reason)
    pending: dict[int, RemoteResult] = {}
    next_index = 0
    queue: asyncio.Queue = asyncio.Queue()
    for index in range(len(builders)):
        queue.put_nowait(index)

    def deliver(result: RemoteResult) -> None:
        nonlocal next_index
        pending[result.index] = result
        while next_index in pending:
            done = pending.pop(next_index)
            stats.client_seconds += done.client_seconds
            stats.server_seconds += done.server_seconds
            on_result(done)
            next_index += 1

    async def worker(client: openai.AsyncOpenAI) -> None:
        while not queue.empty():
            index = queue.get_nowait()
            if stats.stopped:
                stats.not_sent += 1
                deliver(RemoteResult(index, None, f"not sent: {stats.stopped}"))
                continue
            result = await _send(client, builders[index], index, policy, stats)
            stats.failed += result.error is not None
            deliver(result)

    async with openai.AsyncOpenAI(**config.client_options()) as client:
        await asyncio.gather(*(worker(client) for _ in range(config.concurrency)))


async def _send(client, build: Callable[[], dict], index: int, policy: "RetryPolicy", stats: RunStats) -> RemoteResult:
    import openai  # see served_models

    from dataset_builder.annotation.openai.client import EndpointRefusedKey, GaveUp, RequestRejected

    start = time.perf_counter()
    try:
        body = await asyncio.to_thread(build)
    except ValueError as err:
        return RemoteResult(index, None, skipped=str(err), client_seconds=time.perf_counter() - start)
    result = RemoteResult(index, None, client_seconds=time.perf_counter() - start)
    # Not an OpenAI parameter: the client passes it through as an extra field of the body.
    extra = {"chat_template_kwargs": body.pop("chat_template_kwargs")} if "chat_template_kwargs" in body else None
    stats.sent += 1
    tries = policy.attempts()
    for _ in tries:
        sent = time.perf_counter()
        try:
            completion = await client.chat.completions.create(**body, extra_body=extra)
        except openai.APIResponseValidationError as err:
            result.error = f"unreadable reply: {str(err)[:200]}"
            return result
        except openai.APIError as err:
            result.server_seconds += time.perf_counter() - sent
            try:
                retry = tries.failed(err)
            except EndpointRefusedKey as refused:
                stats.stopped = str(refused)
                result.error = refused.reason
                return result
            except RequestRejected as rejected:
                result.error = rejected.reason
                return result
            except GaveUp as gave_up:
                result.error = gave_up.reason
                if gave_up.reason.startswith(("connection error", "timeout")):
                    stats.stopped = f"the server stopped answering ({gave_up.reason})"
                return result
            await asyncio.sleep(retry.delay_s)
            continue
        received = time.perf_counter()
        result.server_seconds += received - sent
        try:
            content = completion.choices[0].message.content
        except (AttributeError, IndexError, TypeError) as err:
            result.error = f"unreadable reply: {err}"
            return result
        result.text = (content or "").strip()
        result.client_seconds += time.perf_counter() - received
        return result
    raise AssertionError("unreachable: the last failed attempt raises GaveUp")
