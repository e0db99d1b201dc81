"""Offline validation of rendered cards: the YAML front matter parses and fits the Hub's card-data schema.

    from model_cards.validate import validate_card_file; validate_card_file("adapter/README.md", "model")

No network: the card is parsed back with ``huggingface_hub``'s card classes (``ModelCard``, ``DatasetCard``,
``SpaceCard``), the ``model-index`` into ``EvalResult``s, and the fields the Hub reads are checked for type and value.
"""

import re
from pathlib import Path

import yaml
from huggingface_hub import DatasetCard, ModelCard, SpaceCard


CARD_CLASSES = {"model": ModelCard, "dataset": DatasetCard, "space": SpaceCard}
SPACE_SDKS = ("gradio", "streamlit", "docker", "static")
REPO_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")
TAG = re.compile(r"^[a-z0-9][a-z0-9-]*$")
FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*(\n|\Z)", re.S)


def _ids(data: dict, key: str) -> list[str]:
    value = data.get(key)
    if value is None:
        return []
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) and REPO_ID.match(v) for v in values):
        raise ValueError(f"{key}: {value!r} is not a Hub id or a list of Hub ids")
    return values


def validate_card(text: str, kind: str) -> dict:
    """Check a rendered card offline.

    Args:
        text: The card (README.md text with YAML front matter).
        kind: ``model``, ``dataset`` or ``space``.

    Returns:
        The card data as a dict.

    Raises:
        ValueError: The card does not parse, or a field the Hub reads has a bad type or value (named in the message).
    """
    if kind not in CARD_CLASSES:
        raise ValueError(f"kind: {kind!r} is not one of {tuple(CARD_CLASSES)}")
    match = FRONT_MATTER.match(text)
    if not match:
        raise ValueError(f"{kind} card does not parse: no YAML front matter between '---' lines at the top")
    try:
        raw = yaml.safe_load(match.group(1))
        if not isinstance(raw, dict):
            raise ValueError(f"the front matter is a {type(raw).__name__}, not a mapping")
        data = CARD_CLASSES[kind](text).data.to_dict()
    except (yaml.YAMLError, ValueError, TypeError, KeyError) as err:
        raise ValueError(f"{kind} card does not parse: {err}") from err
    for key in ("license", "library_name", "pipeline_tag", "sdk", "sdk_version", "app_file"):
        if key in data and data[key] is not None and not isinstance(data[key], str):
            raise ValueError(f"{key}: {data[key]!r} is not a string")
    tags = data.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise ValueError(f"tags: {tags!r} is not a list of strings")
    _ids(data, "datasets")
    if kind == "model":
        _ids(data, "base_model")
        if data.get("pipeline_tag") and not TAG.match(data["pipeline_tag"]):
            raise ValueError(f"pipeline_tag: {data['pipeline_tag']!r} is not a Hub pipeline tag")
        if data.get("model-index") is not None:
            from huggingface_hub.repocard_data import model_index_to_eval_results

            try:
                _, results = model_index_to_eval_results(data["model-index"])
            except (KeyError, TypeError, ValueError) as err:
                raise ValueError(f"model-index: does not parse into eval results ({err!r})") from err
            for result in results:
                if not isinstance(result.metric_value, int | float):
                    raise ValueError(f"model-index: metric {result.metric_type} value {result.metric_value!r}")
    elif kind == "space":
        if data.get("sdk") not in SPACE_SDKS:
            raise ValueError(f"sdk: {data.get('sdk')!r} is not a Space SDK {SPACE_SDKS}")
        if data["sdk"] in ("gradio", "streamlit") and not data.get("app_file"):
            raise ValueError("app_file: missing (a gradio/streamlit Space needs it)")
        _ids(data, "models")
    else:
        names = [c.get("config_name") for c in data.get("configs") or []]
        if len(names) != len(set(names)):
            raise ValueError(f"configs: config names are not unique: {names}")
        for config in data.get("configs") or []:
            if not config.get("data_files"):
                raise ValueError(f"configs: {config.get('config_name')!r} has no data_files")
    return data


def validate_card_file(path: Path | str, kind: str) -> dict:
    """:func:`validate_card` on a file, naming the file in the error."""
    path = Path(path)
    try:
        return validate_card(path.read_text(encoding="utf-8"), kind)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err
