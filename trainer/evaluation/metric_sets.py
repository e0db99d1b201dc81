"""The two sets of metrics, computed the one way both ``geollava-score`` and the ``evaluate`` modules compute them.

* :func:`geollava_set`: the GeoLLaVA paper's metrics (ROUGE-1/2/L, sentence BLEU-2, the SBERT cosine), BERTScore,
  corpus sacreBLEU, and grounding when the true changes are known.
* :func:`levircc_set`: the LEVIR-CC metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D, S*m) through pycocoevalcap.

BERTScore and the SBERT cosine come from one encoder pass when they use the same model (:func:`shared_encoder_for`,
:mod:`trainer.evaluation.shared_encoder`), else each from its own library. This module, :mod:`metrics`,
:mod:`shared_encoder`, :mod:`grounding` and ``dataset_builder.changes`` import nothing else of the project, so the
metric modules for ``evaluate`` carry copies of them (:mod:`trainer.evaluation.hub_metrics`).
"""

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from trainer.evaluation import metrics, shared_encoder
from trainer.evaluation.grounding import grounding_scores


logger = logging.getLogger(__name__)

GEOLLAVA_KEYS = ("rouge1", "rouge2", "rougeL", "sentence_bleu2", "sbert_cosine", "bertscore_f1")
LEVIRCC_KEYS = ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rougeL_coco", "cider_d", "s_m")
GROUNDING_KEYS = ("grounding_precision", "grounding_recall", "grounding_f1")
#: Temporal grounding of sequence rows (``trainer.evaluation.temporal``, which imports this module: the ``evaluate``
#: modules do not carry it).
TEMPORAL_KEYS = ("temporal_precision", "temporal_recall", "temporal_f1")


@dataclass(frozen=True)
class EncoderOptions:
    """Which models BERTScore and the SBERT cosine use, and how the encoder runs.

    Attributes:
        sbert_model: Sentence-transformers model (default: :func:`metrics.sbert_model_choice`).
        bertscore_model: BERTScore model (default: :func:`metrics.bertscore_model_choice`).
        bertscore_layers: Its layer (required with ``bertscore_model``).
        batch_size: Sentences per forward pass.
        precision: ``fp32`` (exact, the default), ``bf16`` or ``int8`` (:data:`shared_encoder.PRECISIONS`).
        device: Where the encoders run: ``auto`` (the first CUDA device when there is one; the CPU for ``int8``),
            ``cpu``, ``cuda`` or ``cuda:N`` (:func:`metrics.encoder_device`).
    """

    sbert_model: str | None = None
    bertscore_model: str | None = None
    bertscore_layers: int | None = None
    batch_size: int = 64
    precision: str = "fp32"
    device: str = "auto"

    def __post_init__(self):
        if self.precision not in shared_encoder.PRECISIONS:
            raise ValueError(f"precision must be one of {shared_encoder.PRECISIONS}, got {self.precision!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        metrics.encoder_device(self.device, self.precision)  # a bad or absent device fails here, before any model

    @property
    def resolved_device(self) -> str:
        """The device the encoders run on (``cpu`` or ``cuda:N``)."""
        return metrics.encoder_device(self.device, self.precision)


@dataclass
class MetricSet:
    """What a set of metrics computed.

    Attributes:
        values: Metric key -> value (macro means over rows, or corpus values), plus grounding's details.
        per_row: Metric key -> one value per row, for the metrics computed per row.
        models: Metric -> what computed it (model, layer, tokenizer, precision).
        unavailable: Metric -> why it was not computed.
        seconds: Step -> seconds.
    """

    values: dict = field(default_factory=dict)
    per_row: dict = field(default_factory=dict)
    models: dict = field(default_factory=dict)
    unavailable: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)

    def update(self, other: "MetricSet") -> "MetricSet":
        """Add ``other``'s entries to this set; returns this set."""
        for name in ("values", "per_row", "models", "unavailable", "seconds"):
            getattr(self, name).update(getattr(other, name))
        return self


def shared_encoder_for(options: EncoderOptions) -> shared_encoder.SharedEncoder | None:
    """The encoder both metrics can share: when they resolve to one local mean-pooling model, else ``None``."""
    bert_model, layer, _ = metrics.bertscore_model_choice(options.bertscore_model, options.bertscore_layers)
    sbert_model, _ = metrics.sbert_model_choice(options.sbert_model)
    if layer is None or not Path(sbert_model).is_dir() or not Path(bert_model).is_dir():
        return None
    if Path(sbert_model).resolve() != Path(bert_model).resolve():
        return None
    max_length = shared_encoder.mean_pooling_max_length(sbert_model)
    return None if max_length is None else shared_encoder.SharedEncoder(str(Path(bert_model)), layer, max_length)


def _precision_note(precision: str) -> str:
    if precision == "fp32":
        return ""
    measured = shared_encoder.measured_deviation(precision)
    if not measured:
        return f"; encoder in {precision} (its deviation from fp32 is not measured: run benchmarks/bench_scoring.py)"
    worst = ", ".join(f"{k} {v['max_abs']:.1e}" for k, v in measured["deviation"].items())
    return f"; encoder in {precision}: per-row values differ from fp32 by at most {worst} on the benchmark rows"


def encoder_metrics(
    predictions: Sequence[str], references: Sequence[Sequence[str]], options: EncoderOptions
) -> MetricSet:
    """BERTScore F1 and the SBERT cosine per row: one shared encoder pass when possible, else each library."""
    metrics.use_available_cores()
    out = MetricSet()
    device = options.resolved_device
    _, _, bert_info = metrics.bertscore_model_choice(options.bertscore_model, options.bertscore_layers)
    _, sbert_info = metrics.sbert_model_choice(options.sbert_model)
    encoder = shared_encoder_for(options)
    note = _precision_note(options.precision) + f"; encoder on {device}"
    if encoder is not None:
        bert, cos, seconds = shared_encoder.score_both(
            predictions, references, encoder, options.batch_size, options.precision, device
        )
        # the keys geollava-score always reported, the shared pass counted to BERTScore, and the breakdown
        out.seconds = {
            "bertscore_f1": seconds["encoder"] + seconds["bertscore_matching"],
            "sbert_cosine": seconds["sbert_pooling"],
            **seconds,
        }
        shared = "; one encoder pass shared by bertscore_f1 and sbert_cosine"
        bert_info = metrics.MetricInfo(bert_info.model, bert_info.detail + shared + note)
        sbert_info = metrics.MetricInfo(sbert_info.model, sbert_info.detail + shared + note)
    elif options.precision == "int8":
        raise ValueError("precision int8 needs one encoder shared by both metrics (the default MiniLM)")
    else:
        start = time.perf_counter()
        cos, sbert_info = metrics.sbert_cosine(
            predictions, references, options.sbert_model, options.batch_size, device=device
        )
        sbert_info = metrics.MetricInfo(sbert_info.model, sbert_info.detail + f"; encoder on {device}")
        out.seconds["sbert_cosine"] = time.perf_counter() - start
        start = time.perf_counter()
        kwargs = {"batch_size": options.batch_size, "bf16": options.precision == "bf16", "device": device}
        if options.bertscore_model:
            kwargs.update(model_type=options.bertscore_model, num_layers=options.bertscore_layers)
        bert, bert_info = metrics.bertscore_f1(predictions, references, **kwargs)
        bert_info = metrics.MetricInfo(bert_info.model, bert_info.detail + f"; encoder on {device}")
        out.seconds["bertscore_f1"] = time.perf_counter() - start
    out.per_row = {"bertscore_f1": bert, "sbert_cosine": cos}
    out.values = {key: metrics.mean(values) for key, values in out.per_row.items()}
    out.models = {"bertscore_f1": bert_info.as_dict(), "sbert_cosine": sbert_info.as_dict()}
    return out


def text_metrics(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> MetricSet:
    """ROUGE-1/2/L and sentence BLEU-2 per row (macro means), and corpus sacreBLEU."""
    start = time.perf_counter()
    out = MetricSet(per_row=metrics.rouge_scores(predictions, references))
    out.seconds["rouge"] = time.perf_counter() - start
    start = time.perf_counter()
    out.per_row["sentence_bleu2"] = metrics.sentence_bleu2(predictions, references)
    out.values = {key: metrics.mean(values) for key, values in out.per_row.items()}
    out.values["sacrebleu"] = metrics.corpus_sacrebleu(predictions, references)
    out.seconds["bleu"] = time.perf_counter() - start
    out.seconds["rouge_bleu"] = out.seconds["rouge"] + out.seconds["bleu"]  # the key geollava-score always reported
    return out


def grounding_set(predictions: Sequence[str], changes: Sequence[Sequence[dict] | None] | None) -> MetricSet:
    """Grounding over the rows whose true ``changes`` are known (``None`` for a row: not known, left out)."""
    known = [i for i, row_changes in enumerate(changes or []) if row_changes is not None]
    if not known:
        why = "no row has a 'changes' column (true changes are known only for synthetic data)"
        return MetricSet(unavailable=dict.fromkeys(GROUNDING_KEYS, why))
    out = MetricSet(values=grounding_scores([predictions[i] for i in known], [changes[i] for i in known]))
    if len(known) < len(predictions):
        out.values["grounding_note"] = (
            f"{len(predictions) - len(known)} scored rows have no 'changes' and are not in grounding"
        )
    return out


def geollava_set(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    changes: Sequence[Sequence[dict] | None] | None = None,
    *,
    model_metrics: bool = True,
    options: EncoderOptions | None = None,
) -> MetricSet:
    """The GeoLLaVA set: text metrics, BERTScore and the SBERT cosine, and grounding where ``changes`` are known.

    Args:
        predictions: One prediction per row.
        references: One or more references per row.
        changes: The true ``changes`` of each row (``None`` for a row, or for all: not known).
        model_metrics: Compute ``bertscore_f1`` and ``sbert_cosine`` (load the encoder).
        options: Models and precision of the encoder.
    """
    out = text_metrics(predictions, references)
    if model_metrics:
        out.update(encoder_metrics(predictions, references, options or EncoderOptions()))
    else:
        why = "model metrics turned off (--model_metrics false)"
        out.unavailable.update(dict.fromkeys(("sbert_cosine", "bertscore_f1"), why))
    return out.update(grounding_set(predictions, changes))


def levircc_set(predictions: Sequence[str], references: Sequence[Sequence[str]], meteor: bool = True) -> MetricSet:
    """The LEVIR-CC set through pycocoevalcap, over all rows at once (CIDEr-D uses corpus statistics).

    Without pycocoevalcap every LEVIR-CC metric is reported as not computed, with the reason.
    """
    start = time.perf_counter()
    try:
        values, unavailable, details = metrics.coco_caption_metrics(predictions, references, meteor=meteor)
    except metrics.MetricUnavailable as why:
        logger.warning("LEVIR-CC metrics not computed: %s", why)
        return MetricSet(unavailable=dict.fromkeys(LEVIRCC_KEYS, str(why)))
    return MetricSet(values, {}, {"levircc": details}, unavailable, {"levircc": time.perf_counter() - start})
