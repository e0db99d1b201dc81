"""The official GeoLLaVA release form: a JSON list of ``{"id", "video", "conversations"}`` plus mp4 clips.

``export_rows`` writes it from a built dataset (so the paper's training code can read our output); ``ImportAnnotator``
reads it (``--annotator import:PATH``) and attaches its conversations to our pairs by id.
"""

import json
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from dataset_builder.annotate import AnnotationRequest, AnnotationResult


logger = logging.getLogger(__name__)


def export_rows(rows: list[dict], path: Path) -> None:
    """Write rows (``id``, ``conversations``) in the official form, atomically."""
    entries = [{"id": r["id"], "video": f"{r['id']}.mp4", "conversations": r["conversations"]} for r in rows]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(entries, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_official(path: Path) -> dict[str, list[dict]]:
    """Conversations by id from an official GeoLLaVA JSON (ids taken from ``id``, else from ``video``).

    Raises:
        ValueError: If the file is not a JSON list of such entries (naming the file and the entry).
    """
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of {{id, video, conversations}} entries")
    out = {}
    for i, entry in enumerate(data):
        conv = entry.get("conversations") if isinstance(entry, dict) else None
        if not isinstance(conv, list) or len(conv) < 2 or not all("value" in turn for turn in conv[:2]):
            raise ValueError(f"{path}: entry {i} has no [human, gpt] conversations")
        key = entry.get("id") or Path(str(entry.get("video", ""))).stem
        out[str(key)] = conv
    return out


class ImportAnnotator:
    """``--annotator import:PATH``: the official release's answers, attached by pair id."""

    name = "import"
    model = "gpt-4o-mini (official GeoLLaVA release)"
    prompt = "Briefly describe each image independently, then explain the changes happening between them."

    def __init__(self, path: Path):
        """Read the official JSON at ``path``."""
        self.path = Path(path)
        self.conversations = read_official(self.path)

    def annotate(self, requests: Iterable[AnnotationRequest]) -> Iterator[AnnotationResult]:
        """Yield the imported answer for each request; unmatched ids are reported as ``missing``."""
        for request in requests:
            conv = self.conversations.get(request.id)
            if conv is None:
                yield AnnotationResult(request.id, None, "missing", f"id not in {self.path}")
            else:
                yield AnnotationResult(request.id, conv[1]["value"])
