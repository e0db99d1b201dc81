"""The ``evaluate.MetricInfo`` of the project's metric modules (imported by their scripts, carried with them)."""

import datasets
import evaluate


def module_info(description: str, citation: str, inputs_description: str, reference_urls: list[str]):
    """The ``evaluate.MetricInfo`` of a metric module: its texts, and inputs of a prediction and its references.

    A row's references are a list of strings or one string; other arguments (``change_kinds``) are keywords.
    """
    string = datasets.Value("string")
    features = [
        datasets.Features({"predictions": string, "references": datasets.Sequence(string)}),
        datasets.Features({"predictions": string, "references": string}),
    ]
    return evaluate.MetricInfo(
        description=description,
        citation=citation,
        inputs_description=inputs_description,
        features=features,
        reference_urls=reference_urls,
    )
