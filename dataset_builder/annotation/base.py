"""Annotators: what writes the answer (the gpt turn) of each pair, and of each sequence.

An annotator takes requests and yields one result per request. The builder and ``geollava-annotate`` only use
this interface, so ``synthetic`` (ground truth turned into text), ``none``, ``import:PATH`` (the official release's
JSON) and ``openai`` are interchangeable.
See docs/dataset.md ("Annotators").
"""

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class AnnotationRequest:
    """One pair, or one sequence, to describe.

    A request with ``timestamps`` is a sequence (a location at every kept date, docs/dataset.md): it is answered
    with the evolution and its dates; one without is a pair.

    Attributes:
        id: The pair id, ``{cat}_{loc}_{a}-{cat}_{loc}_{b}``; a sequence's ``{split}/{location}``.
        image_paths: The fMoW images (``*_rgb.jpg``), earliest first: two for a pair, N for a sequence.
        frames_jpeg: The frames as the dataset stores them (JPEG bytes, earliest first), when already made.
        metadata: Anything else the annotator may use (split, category, fMoW root, ...).
        timestamps: A sequence's view timestamps (ISO 8601 as written, one per image, in order); ``None`` for a pair.
    """

    id: str
    image_paths: tuple[Path, ...]
    frames_jpeg: tuple[bytes, ...] | None = None
    metadata: dict = field(default_factory=dict)
    timestamps: tuple[str, ...] | None = None


@dataclass(frozen=True)
class AnnotationResult:
    """What an annotator made of one pair.

    Attributes:
        id: The request's id.
        text: The caption, or ``None`` when there is none (status other than ``"ok"``).
        status: ``"ok"``, ``"refused"``, ``"content_filter"``, ``"empty"``, ``"malformed"``, ``"failed"`` or
            ``"missing"``.
        reason: A human-readable reason for any status other than ``"ok"``.
        usage: Token counts reported by a remote model, if any.
    """

    id: str
    text: str | None
    status: str = "ok"
    reason: str = ""
    usage: dict = field(default_factory=dict)


class Annotator(Protocol):
    """The annotator interface.

    Attributes:
        name: Short name recorded in the build report and the card (``"synthetic"``, ``"openai"``, ...).
        model: The model that wrote the captions, if any (``"gpt-4o-mini"``).
        prompt: The instruction given to that model for a pair, if any.
        sequence_prompt: The instruction given to that model for a sequence, if any.
    """

    name: str
    model: str | None
    prompt: str | None
    sequence_prompt: str | None

    def annotate(self, requests: Iterable[AnnotationRequest]) -> Iterator[AnnotationResult]:
        """Yield one result per request (in any order)."""
        ...


class NoneAnnotator:
    """Leaves the answer empty: the pairs and frames are built, captions come later (``geollava-annotate``)."""

    name = "none"
    model = None
    prompt = None
    sequence_prompt = None

    def annotate(self, requests: Iterable[AnnotationRequest]) -> Iterator[AnnotationResult]:
        """Yield an empty caption for every request."""
        for request in requests:
            yield AnnotationResult(id=request.id, text="", status="ok")
