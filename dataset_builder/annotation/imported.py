"""``--annotator import:PATH``: the official GeoLLaVA release's answers (GPT-4o-mini), attached by pair id.

See docs/dataset.md ("Annotators").
"""

import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

from dataset_builder.annotation.base import AnnotationRequest, AnnotationResult
from dataset_builder.prompts import ANNOTATION_PROMPT


logger = logging.getLogger(__name__)


def read_official(path: Path | str) -> tuple[dict[str, str], list[str]]:
    """Answers by id from official GeoLLaVA JSON: one file, or every ``*.json`` in a folder.

    The id of an entry is the stem of its ``video`` (the official clip name is the pair id), else its ``id``; the
    answer is its first ``gpt`` turn. Entries without them are skipped and reported (the rest are still used).

    Args:
        path: A JSON file or a folder of them (e.g. a built dataset's ``geollava_json/``).

    Returns:
        ``(answers by id, problems)``: each problem names the file and the entry index.

    Raises:
        FileNotFoundError: If ``path`` holds no JSON file.
        ValueError: If a file is not a JSON list (naming the file).
    """
    path = Path(path)
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    if not files or not files[0].exists():
        raise FileNotFoundError(f"{path}: no official GeoLLaVA JSON ([{{id, video, conversations}}, ...]) found")
    answers: dict[str, str] = {}
    problems: list[str] = []
    for file in files:
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (ValueError, RecursionError) as err:  # RecursionError: nesting deeper than the parser goes
            raise ValueError(f"{file}: not valid JSON ({err})") from err
        if not isinstance(data, list):
            raise ValueError(f"{file}: expected a JSON list of {{id, video, conversations}} entries")
        for i, entry in enumerate(data):
            key, answer = _entry_answer(entry)
            if key is None or answer is None:
                problems.append(f"{file} entry {i}: no id/video or no gpt turn in conversations")
            elif key in answers and answers[key] != answer:
                problems.append(f"{file} entry {i}: id {key!r} seen before with another answer (kept the first)")
            else:
                answers.setdefault(key, answer)
    for problem in problems[:5]:
        logger.warning("import: %s", problem)
    if len(problems) > 5:
        logger.warning("import: %d more problem(s)", len(problems) - 5)
    return answers, problems


def _entry_answer(entry) -> tuple[str | None, str | None]:
    if not isinstance(entry, dict):
        return None, None
    # the clip name is the pair id in the official release (its "id" field is not always one)
    key = Path(str(entry["video"])).stem if entry.get("video") else entry.get("id")
    turns = entry.get("conversations")
    answer = None
    if isinstance(turns, list):
        answer = next(
            (
                t["value"]
                for t in turns
                if isinstance(t, dict) and t.get("from") == "gpt" and isinstance(t.get("value"), str)
            ),
            None,
        )
    return (str(key) if key else None), answer


class ImportAnnotator:
    """``--annotator import:PATH``: the official release's answers (GPT-4o-mini), attached by pair id.

    Our human turn (template chosen from the id) is kept; the gpt turn is the imported answer. Pairs the file does
    not hold come back with status ``"missing"`` (the builder reports and leaves them out).
    """

    name = "import"
    model = "gpt-4o-mini (imported from the official GeoLLaVA JSON)"
    prompt = ANNOTATION_PROMPT
    sequence_prompt = None  # the official release has no sequences

    def __init__(self, path: Path | str):
        """Read the official JSON at ``path`` (a file or a folder of ``{split}.json``)."""
        self.path = Path(path)
        self.answers, self.problems = read_official(self.path)

    def annotate(self, requests: Iterable[AnnotationRequest]) -> Iterator[AnnotationResult]:
        """Yield the imported answer for each request; unmatched ids are reported as ``missing``."""
        for request in requests:
            answer = self.answers.get(request.id)
            if answer is None:
                yield AnnotationResult(request.id, None, "missing", f"id not in {self.path}")
            else:
                yield AnnotationResult(request.id, answer)
