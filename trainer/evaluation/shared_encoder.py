"""BERTScore and the SBERT cosine from one encoder pass: scoring at the encoder's floor.

When both metrics use the same model (the offline all-MiniLM-L6-v2 by default), one forward over each distinct
sentence serves both, with ``bert-score``'s and sentence-transformers' own values within 1e-6 in float32;
``precision="bf16"`` or ``"int8"`` trades that exactness for speed. See docs/evaluation.md "One encoder pass".
"""

import functools
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


logger = logging.getLogger(__name__)

#: Encoder precisions: ``fp32`` is exact (the default); the others are faster and slightly off (see the deviation).
PRECISIONS = ("fp32", "bf16", "int8")
#: The deviation of each fast precision from fp32 on the benchmark rows, written by benchmarks/bench_scoring.py.
DEVIATION_FILE = Path(__file__).with_name("precision_deviation.json")
_ST_TRANSFORMER = "sentence_transformers.models.Transformer"
_ST_POOLING = "sentence_transformers.models.Pooling"
_ST_NORMALIZE = "sentence_transformers.models.Normalize"


@dataclass(frozen=True)
class SharedEncoder:
    """A model both metrics read: where it is, which layer BERTScore uses, how long a sentence the cosine pools.

    Attributes:
        path: Local folder of a sentence-transformers model whose module 0 is the transformer itself.
        bertscore_layer: BERTScore's layer (1 = the first transformer layer, as ``bert-score``'s ``num_layers``).
        pooling_max_length: sentence-transformers' ``max_seq_length``: the cosine sees at most this many tokens.
    """

    path: str
    bertscore_layer: int
    pooling_max_length: int


def mean_pooling_max_length(path: str | Path) -> int | None:
    """``max_seq_length`` of a local sentence-transformers folder that is exactly transformer + mean pooling.

    Returns:
        The length, or ``None`` when the folder is not such a model (another pooling, a Dense layer, lowercasing by
        sentence-transformers, a sub-folder transformer): then the cosine is left to sentence-transformers itself.
    """
    folder = Path(path)
    try:
        modules = json.loads((folder / "modules.json").read_text())
        st_config = json.loads((folder / "sentence_bert_config.json").read_text())
        pooling_dir = next(m["path"] for m in modules if m["type"] == _ST_POOLING)
        pooling = json.loads((folder / pooling_dir / "config.json").read_text())
    except (OSError, ValueError, StopIteration, KeyError, TypeError):
        return None
    types = [m.get("type") for m in modules]
    if types not in ([_ST_TRANSFORMER, _ST_POOLING], [_ST_TRANSFORMER, _ST_POOLING, _ST_NORMALIZE]):
        return None
    modes = {key for key, value in pooling.items() if key.startswith("pooling_mode") and value}
    if modes != {"pooling_mode_mean_tokens"} or modules[0].get("path") or st_config.get("do_lower_case"):
        return None
    return int(st_config["max_seq_length"])


@functools.cache
def _load(path: str, precision: str, device: str = "cpu"):
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    if precision == "int8":
        if device != "cpu":
            raise ValueError(f"precision int8 runs on the CPU only, not on {device!r}")
        # per output channel: its largest per-row error on the benchmark rows is ~2/3 of per-tensor's, same speed
        qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
        model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear: qconfig}, dtype=torch.qint8)
    return tokenizer, model.to(device)


@dataclass
class Embeddings:
    """Per distinct sentence: BERTScore's unit token vectors (with their weights) and the unit sentence vector.

    Attributes:
        index: Sentence -> its row in ``pooled`` and its slice of ``tokens``.
        tokens: All sentences' token vectors of BERTScore's layer, concatenated, each of unit length.
        weights: BERTScore's weight of each token: 0 for [CLS] and [SEP], 1 otherwise (``bert-score`` without idf).
        offsets: ``tokens[offsets[i]:offsets[i + 1]]`` belong to sentence ``i``.
        pooled: Unit sentence vectors (mean pooling of the last layer).
    """

    index: dict[str, int]
    tokens: "torch.Tensor"  # noqa: F821 (torch is imported where the tensors are made)
    weights: "torch.Tensor"  # noqa: F821
    offsets: list[int]
    pooled: "torch.Tensor"  # noqa: F821


def _forward(model, input_ids: list[list[int]], pad_id: int, layers: tuple[int, ...], precision: str):
    """One padded batch through the model on its device: the hidden states of ``layers`` and the mask, on the CPU.

    The matching that follows is a small product per sentence pair, faster on the CPU than launched on a GPU.
    """
    import torch

    width = max(len(ids) for ids in input_ids)
    ids = torch.full((len(input_ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(input_ids), width), dtype=torch.long)
    for row, sentence_ids in enumerate(input_ids):
        ids[row, : len(sentence_ids)] = torch.tensor(sentence_ids)
        mask[row, : len(sentence_ids)] = 1
    device = next(model.parameters(), torch.empty(0)).device
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        out = model(input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True)
    return [out.hidden_states[layer].float().cpu() for layer in layers], mask


def _mean_pool(hidden, mask):
    """sentence-transformers' mean pooling then unit length, on a padded batch."""
    import torch

    summed = (hidden * mask.unsqueeze(-1).to(hidden.dtype)).sum(dim=1)
    pooled = summed / torch.clamp(mask.sum(dim=1, keepdim=True).to(hidden.dtype), min=1e-9)
    return torch.nn.functional.normalize(pooled, p=2, dim=1)


def embed(
    sentences: Sequence[str],
    encoder: SharedEncoder,
    batch_size: int = 64,
    precision: str = "fp32",
    device: str = "cpu",
) -> Embeddings:
    """Embed each distinct sentence once, in batches sorted by token length (little padding).

    BERTScore reads the token vectors of its layer, each scaled to unit length; the SBERT cosine reads the last
    layer's mean over the attention mask, scaled to unit length (sentence-transformers' ``Pooling(mean)`` +
    ``Normalize``). A sentence longer than the cosine model's ``max_seq_length`` gets a second forward truncated to
    it, as sentence-transformers would truncate it. One forward returns both layers' hidden states.

    Args:
        sentences: Sentences (repeats are embedded once).
        encoder: The model and what each metric reads of it.
        batch_size: Sentences per forward pass.
        precision: One of :data:`PRECISIONS`.
        device: Where the encoder runs (``cpu``, ``cuda:N``; ``int8`` on the CPU only).

    Returns:
        The :class:`Embeddings` of the distinct sentences (on the CPU).
    """
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    tokenizer, model = _load(encoder.path, precision, device)
    distinct = list(dict.fromkeys(sentences))
    # bert-score strips a sentence and truncates it to the tokenizer's model_max_length, with [CLS] and [SEP].
    ids = tokenizer([s.strip() for s in distinct], truncation=True, max_length=tokenizer.model_max_length)["input_ids"]
    offsets = [0]
    for sentence_ids in ids:
        offsets.append(offsets[-1] + len(sentence_ids))
    tokens = torch.empty((offsets[-1], model.config.hidden_size))
    pooled = torch.empty((len(distinct), model.config.hidden_size))
    last = model.config.num_hidden_layers
    layers = (encoder.bertscore_layer, last)
    order = sorted(range(len(distinct)), key=lambda i: -len(ids[i]))
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        (bert_layer, last_layer), mask = _forward(
            model, [ids[i] for i in batch], tokenizer.pad_token_id, layers, precision
        )
        bert_layer = torch.nn.functional.normalize(bert_layer, p=2, dim=-1)
        for row, i in enumerate(batch):
            tokens[offsets[i] : offsets[i + 1]] = bert_layer[row, : len(ids[i])]
        pooled[batch] = _mean_pool(last_layer, mask)
    too_long = [i for i in range(len(distinct)) if len(ids[i]) > encoder.pooling_max_length]
    if too_long:  # sentence-transformers pools a shorter (truncated) input: one more forward for these
        cut = tokenizer([distinct[i] for i in too_long], truncation=True, max_length=encoder.pooling_max_length)
        for start in range(0, len(too_long), batch_size):
            part = too_long[start : start + batch_size]
            batch_ids = cut["input_ids"][start : start + batch_size]
            (hidden,), mask = _forward(model, batch_ids, tokenizer.pad_token_id, (last,), precision)
            pooled[part] = _mean_pool(hidden, mask)
    special = torch.tensor([tokenizer.cls_token_id, tokenizer.sep_token_id])
    flat_ids = torch.tensor([t for sentence_ids in ids for t in sentence_ids])
    weights = (~torch.isin(flat_ids, special)).float()
    return Embeddings({s: i for i, s in enumerate(distinct)}, tokens, weights, offsets, pooled)


def _greedy_f1(emb: Embeddings, hyp: int, ref: int) -> float:
    """BERTScore F1 of sentence ``hyp`` (the candidate) against sentence ``ref`` (indices into ``emb``).

    As ``bert-score`` without idf or baseline rescaling: greedy matching of every candidate token to the most similar
    reference token (precision) and back (recall); [CLS] and [SEP] are matched against but weigh nothing.
    """
    hyp_tokens, hyp_w = (t[emb.offsets[hyp] : emb.offsets[hyp + 1]] for t in (emb.tokens, emb.weights))
    ref_tokens, ref_w = (t[emb.offsets[ref] : emb.offsets[ref + 1]] for t in (emb.tokens, emb.weights))
    hyp_total, ref_total = float(hyp_w.sum()), float(ref_w.sum())
    if not hyp_total or not ref_total:  # no token but [CLS] and [SEP]: bert-score gives 0
        return 0.0
    sim = hyp_tokens @ ref_tokens.T
    # as bert-score: the weights are scaled to sum 1, then weigh each token's best cosine
    precision = float((sim.max(dim=1).values * (hyp_w / hyp_total)).sum())
    recall = float((sim.max(dim=0).values * (ref_w / ref_total)).sum())
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def _pairs(emb: Embeddings, predictions: Sequence[str], references: Sequence[Sequence[str]]):
    rows, hyps, refs = [], [], []
    for row, (prediction, row_refs) in enumerate(zip(predictions, references, strict=True)):
        for ref in row_refs:
            rows.append(row)
            hyps.append(emb.index[prediction])
            refs.append(emb.index[ref])
    return rows, hyps, refs


def _best_per_row(n_rows: int, rows: Sequence[int], values) -> list[float]:
    best = [float("-inf")] * n_rows
    for row, value in zip(rows, values, strict=True):
        best[row] = max(best[row], float(value))
    return best


def bertscore_f1(emb: Embeddings, predictions: Sequence[str], references: Sequence[Sequence[str]]) -> list[float]:
    """Per-row BERTScore F1 from the embeddings (the best over a row's references; 0 for an empty prediction)."""
    import torch

    rows, hyps, refs = _pairs(emb, predictions, references)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 130 x 130 product per pair: splitting it over threads costs more than it saves
    try:
        values = [_greedy_f1(emb, h, r) for h, r in zip(hyps, refs, strict=True)]
    finally:
        torch.set_num_threads(threads)
    return _best_per_row(len(predictions), rows, values)


def cosine(emb: Embeddings, predictions: Sequence[str], references: Sequence[Sequence[str]]) -> list[float]:
    """Per-row cosine of the pooled sentence vectors (the best over a row's references)."""
    rows, hyps, refs = _pairs(emb, predictions, references)
    values = (emb.pooled[hyps] * emb.pooled[refs]).sum(dim=1)
    return _best_per_row(len(predictions), rows, values.tolist())


def measured_deviation(precision: str) -> dict | None:
    """What benchmarks/bench_scoring.py measured for ``precision`` against fp32 (``None`` for fp32 or unmeasured)."""
    if precision == "fp32" or not DEVIATION_FILE.exists():
        return None
    measured = json.loads(DEVIATION_FILE.read_text())
    entry = measured.get("precisions", {}).get(precision)
    return {**entry, "rows": measured.get("rows"), "measured": measured.get("measured")} if entry else None


def score_both(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    encoder: SharedEncoder,
    batch_size: int = 64,
    precision: str = "fp32",
    device: str = "cpu",
) -> tuple[list[float], list[float], dict[str, float]]:
    """BERTScore F1 and the SBERT cosine per row, from one pass of ``encoder`` (on ``device``) over the sentences.

    Returns:
        ``(bertscore_f1, sbert_cosine, seconds)``, ``seconds`` split into ``encoder`` (tokenizing and the forward
        passes), ``bertscore_matching`` and ``sbert_pooling``.
    """
    seconds = {}
    start = time.perf_counter()
    emb = embed([*predictions, *(r for refs in references for r in refs)], encoder, batch_size, precision, device)
    seconds["encoder"] = time.perf_counter() - start
    start = time.perf_counter()
    bert = bertscore_f1(emb, predictions, references)
    seconds["bertscore_matching"] = time.perf_counter() - start
    start = time.perf_counter()
    cos = cosine(emb, predictions, references)
    seconds["sbert_pooling"] = time.perf_counter() - start
    logger.info("%d distinct sentences embedded once for BERTScore and the SBERT cosine", len(emb.index))
    return bert, cos, seconds
