"""Where a benchmark's figures go: ``NAME.json`` (the numbers) and ``NAME.md`` (the table) in benchmarks/results/.

Both written atomically (``dataset_builder.atomic``): an interrupted benchmark leaves the last complete results.
"""

from pathlib import Path

from dataset_builder.atomic import write_json, write_text


RESULTS = Path(__file__).resolve().parent / "results"


def write_results(name: str, result: dict, markdown: str | list[str], folder: Path = RESULTS) -> str:
    """Write ``folder/NAME.json`` and ``folder/NAME.md``; ``markdown`` may be its lines.

    Returns:
        The markdown text written.
    """
    text = markdown if isinstance(markdown, str) else "\n".join(markdown) + "\n"
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / f"{name}.json", result, indent=2)
    write_text(folder / f"{name}.md", text)
    return text
