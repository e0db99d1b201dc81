"""Annotation: what writes the answer (the gpt turn) of each pair, and ``geollava-annotate``.

Annotators are looked up by name in :data:`ANNOTATORS` and imported only when asked for, so the real builder never
imports the synthetic world (a stand-in) nor the ``openai`` client unless a run uses them.
See docs/annotation.md.
"""

import importlib
from pathlib import Path

from dataset_builder.annotation.base import AnnotationRequest, AnnotationResult, Annotator, NoneAnnotator


#: Annotator name -> ``module:class``; ``import:PATH`` adds the path of the official JSON to read.
ANNOTATORS = {
    "none": "dataset_builder.annotation.base:NoneAnnotator",
    "synthetic": "dataset_builder.synthetic.describe:SyntheticAnnotator",
    "openai": "dataset_builder.annotation.openai.annotator:OpenAIAnnotator",
    "import": "dataset_builder.annotation.imported:ImportAnnotator",
}


def annotator_class(name: str) -> type:
    """The class registered under ``name`` in :data:`ANNOTATORS` (imported on first use)."""
    module, _, attribute = ANNOTATORS[name].partition(":")
    return getattr(importlib.import_module(module), attribute)


def get_annotator(spec: str, **options) -> Annotator:
    """Build an annotator from its command-line name.

    Args:
        spec: ``"synthetic"``, ``"none"``, ``"openai"`` or ``"import:PATH"`` (the official GeoLLaVA JSON).
        **options: Passed to the annotator's constructor (for ``openai``: an ``OpenAIAnnotatorConfig``'s fields).

    Returns:
        The annotator.

    Raises:
        ValueError: If ``spec`` names no known annotator.
    """
    if spec.startswith("import:"):
        return annotator_class("import")(Path(spec.removeprefix("import:")), **options)
    if spec not in ANNOTATORS or spec == "import":
        raise ValueError(f"--annotator {spec!r}: expected one of synthetic, none, openai, import:PATH")
    return annotator_class(spec)(**options)


__all__ = ["ANNOTATORS", "AnnotationRequest", "AnnotationResult", "Annotator", "NoneAnnotator", "get_annotator"]
