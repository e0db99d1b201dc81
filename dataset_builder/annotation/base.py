"""Annotators: what writes the answer (the gpt turn) of each pair.

An annotator takes pair requests and yields one result per request. The builder and ``geollava-annotate`` only use
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
    """One pair to describe.

    Attributes:
        id: The pair id, ``{cat}_{loc}_{a}-{cat}_{loc}_{b}``.
        image_paths: The earlier and the later fMoW image (``*_rgb.jpg``).
        frames_jpeg: The two frames as the dataset stores them (JPEG bytes, earlier first), when already made.
        metadata: Anything else the annotator may use (split, category, fMoW root, ...).
    """

    id: str
    image_paths: tuple[Path, Path]
    frames_jpeg: tuple[bytes, bytes] | None = None
    metadata: dict = field(default_factory=dict)


@dataclass(frozen=True)
class AnnotationResult:
    """What an annotator made of one pair.

    Attributes:
        id: The pair id.
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
        prompt: The instruction given to that model, if any.
    """

    name: str
    model: str | None
    prompt: str | None

    def annotate(self, requests: Iterable[AnnotationRequest]) -> Iterator[AnnotationResult]:
        """Yield one result per request (in any order)."""
        ...


class NoneAnnotator:
    """Leaves the answer empty: the pairs and frames are built, captions come later (``geollava-annotate``)."""

    name = "none"
    model = None
    prompt = None

    def annotate(self, requests: Iterable[AnnotationRequest]) -> Iterator[AnnotationResult]:
        """Yield an empty caption for every request."""
        for request in requests:
            yield AnnotationResult(id=request.id, text="", status="ok")
