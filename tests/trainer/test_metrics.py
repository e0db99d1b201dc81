"""Each metric against its reference library or a hand-computed value on fixed strings."""

import math

import pytest

from trainer.evaluation import metrics


def test_rouge_uses_the_porter_stemmer_and_equals_rouge_score():
    from rouge_score import rouge_scorer

    # "buildings" and "building" share the Porter stem "build"; without stemming ROUGE-1 would be 2/3.
    scores = metrics.rouge_scores(["new buildings appear"], [["new building appears"]])
    assert scores["rouge1"] == [1.0]
    plain = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=False).score(
        "new building appears", "new buildings appear"
    )
    assert plain["rouge1"].fmeasure == pytest.approx(1 / 3)
    preds = ["A road was widened near the river.", "Nothing changed at all", "Trees were cleared; a site appears."]
    refs = [["The road near the river was widened."], ["No change is visible."], ["A forest was cleared."]]
    ref_scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    got = metrics.rouge_scores(preds, refs)
    for i, (p, r) in enumerate(zip(preds, refs, strict=True)):
        expected = ref_scorer.score(r[0], p)
        for key in ("rouge1", "rouge2", "rougeL"):
            assert got[key][i] == expected[key].fmeasure


def test_rouge_takes_the_best_reference_per_type():
    got = metrics.rouge_scores(["a road was built"], [["nothing here", "a road was built"]])
    assert got == {"rouge1": [1.0], "rouge2": [1.0], "rougeL": [1.0]}


def test_rouge_of_an_empty_prediction_is_zero():
    assert metrics.rouge_scores([""], [["a road"]])["rougeL"] == [0.0]


def test_sentence_bleu2_hand_computed_with_method1_smoothing():
    # hyp "the cat sat" vs ref "the cat sat down": p1 = 3/3, p2 = 2/2, BP = exp(1 - 4/3).
    (score,) = metrics.sentence_bleu2(["the cat sat"], [["the cat sat down"]])
    assert score == pytest.approx(math.exp(1 - 4 / 3))
    # no bigram match: method1 replaces the 0 count by epsilon 0.1 -> sqrt(p1 * 0.1/2) with p1 = 2/3 (BP = 1).
    (score,) = metrics.sentence_bleu2(["cat the dog"], [["the cat sat"]])
    assert score == pytest.approx(math.sqrt((2 / 3) * (0.1 / 2)))


def test_sentence_bleu2_is_case_sensitive_whitespace_and_uses_all_references():
    (lower,) = metrics.sentence_bleu2(["the cat sat"], [["The Cat sat"]])
    assert lower < 0.5  # "the" != "The": whitespace tokens, no lowercasing, as the paper's code
    (multi,) = metrics.sentence_bleu2(["the cat sat"], [["a dog ran", "the cat sat"]])
    assert multi == pytest.approx(1.0)
    assert metrics.sentence_bleu2([""], [["the cat"]]) == [0.0]


def test_corpus_sacrebleu_equals_sacrebleu_and_allows_ragged_references():
    import sacrebleu

    preds = ["a new road was built here", "nothing changed"]
    refs = [["a new road was built here"], ["nothing has changed", "no change"]]
    expected = sacrebleu.BLEU().corpus_score(preds, [[r[0] for r in refs], [None, "no change"]]).score / 100
    assert metrics.corpus_sacrebleu(preds, refs) == pytest.approx(expected)
    assert 0 < expected < 1


def test_mismatched_counts_and_empty_reference_lists_are_errors():
    with pytest.raises(ValueError, match="2 predictions but 1 reference lists"):
        metrics.rouge_scores(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="row 0: references must be a non-empty list"):
        metrics.sentence_bleu2(["a"], [[]])


def test_sbert_cosine_uses_the_offline_minilm_and_is_a_cosine():
    from sentence_transformers import SentenceTransformer

    preds = ["A new road was built.", "The lake shrank."]
    refs = [["A road has been built."], ["A forest was cleared.", "The lake is smaller."]]
    scores, info = metrics.sbert_cosine(preds, refs)
    assert info.model == "all-MiniLM-L6-v2" and "not available" in info.detail
    st = SentenceTransformer(metrics.minilm_path(), device="cpu")
    e = st.encode([preds[0], refs[0][0]], convert_to_tensor=True)
    import torch

    assert scores[0] == pytest.approx(float(torch.nn.functional.cosine_similarity(e[0], e[1], dim=0)), abs=1e-5)
    e = st.encode([preds[1], *refs[1]], convert_to_tensor=True, normalize_embeddings=True)
    assert scores[1] == pytest.approx(max(float(e[0] @ e[1]), float(e[0] @ e[2])), abs=1e-5)
    same, _ = metrics.sbert_cosine(["identical text"], [["identical text"]])
    assert same[0] == pytest.approx(1.0, abs=1e-5)


def test_bertscore_equals_bert_score_with_minilm_layer_6_and_empty_is_zero():
    import bert_score

    preds = ["A new road was built.", "", "Trees were cut down in the north."]
    refs = [["A road has been built."], ["Nothing changed."], ["A forest was cleared.", "Trees were removed."]]
    scores, info = metrics.bertscore_f1(preds, refs)
    assert "num_layers=6" in info.detail
    _, _, f1 = bert_score.score(
        [preds[0], preds[2]], [refs[0], refs[2]], model_type=metrics.minilm_path(), num_layers=6
    )
    assert scores[0] == pytest.approx(float(f1[0]), abs=1e-5)
    assert scores[2] == pytest.approx(float(f1[1]), abs=1e-5)
    assert scores[1] == 0.0


def test_coco_metrics_equal_pycocoevalcap_without_meteor():
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    preds = ["a new road is built .", "nothing has changed", "the trees are gone"]
    refs = [
        ["A new road was built.", "a road appears"],
        ["Nothing changed.", "no change", "the scene is the same"],
        ["the trees were cleared", "trees are gone"],
    ]
    got, unavailable, details = metrics.coco_caption_metrics(preds, refs, meteor=False)
    tok = PTBTokenizer()
    gts = tok.tokenize({i: [{"caption": r} for r in rs] for i, rs in enumerate(refs)})
    res = tok.tokenize({i: [{"caption": p}] for i, p in enumerate(preds)})
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    assert [got[f"bleu{n}"] for n in range(1, 5)] == pytest.approx(bleu)
    assert got["rougeL_coco"] == pytest.approx(Rouge().compute_score(gts, res)[0])
    assert got["cider_d"] == pytest.approx(Cider().compute_score(gts, res)[0])
    # never a made-up number: no METEOR, so no S*m either, and the output says why
    assert "meteor" not in got and "s_m" not in got
    assert set(unavailable) == {"meteor", "s_m"}
    assert "PTBTokenizer" in details["tokenizer"]


def test_coco_metrics_without_java_use_plain_tokens_and_skip_meteor(monkeypatch):
    monkeypatch.setattr(metrics, "java_available", lambda: False)
    got, unavailable, details = metrics.coco_caption_metrics(["A road."], [["a road"]], meteor=True)
    assert got["bleu1"] == pytest.approx(1.0)
    assert "Java" in unavailable["meteor"] and "no Java" in details["tokenizer"]


def test_bertscore_bf16_is_close_to_float32_and_says_so():
    preds = ["A new road was built in the north.", "Trees were cut down."]
    refs = [["A road has been built in the north."], ["A forest was cleared."]]
    exact, _ = metrics.bertscore_f1(preds, refs)
    fast, info = metrics.bertscore_f1(preds, refs, bf16=True)
    assert fast == pytest.approx(exact, abs=5e-3)
    assert "bfloat16" in info.detail


# --- one encoder pass for both: the same numbers as the libraries, within 1e-6 in float32 -------------------------

BERT_PREDS = ["A new road was built.", "", "Trees were cut down in the north."]
BERT_REFS = [["A road has been built."], ["Nothing changed."], ["A forest was cleared.", "Trees were removed."]]
SBERT_PREDS = ["A new road was built.", "The lake shrank.", "identical text"]
SBERT_REFS = [["A road has been built."], ["A forest was cleared.", "The lake is smaller."], ["identical text"]]


def _minilm_encoder(layer=6):
    from trainer.evaluation.shared_encoder import SharedEncoder, mean_pooling_max_length

    return SharedEncoder(metrics.minilm_path(), layer, mean_pooling_max_length(metrics.minilm_path()))


def test_default_models_share_one_encoder_and_others_do_not(tmp_path):
    from trainer.evaluation.metric_sets import EncoderOptions, shared_encoder_for

    assert shared_encoder_for(EncoderOptions()) == _minilm_encoder()
    assert (
        shared_encoder_for(EncoderOptions(bertscore_model=metrics.minilm_path(), bertscore_layers=4)).bertscore_layer
        == 4
    )
    # another sentence model than BERTScore's: each metric from its own library
    assert shared_encoder_for(EncoderOptions(sbert_model=str(tmp_path))) is None


def test_mean_pooling_is_recognised_and_other_poolings_are_not(tmp_path):
    import shutil

    from trainer.evaluation.shared_encoder import mean_pooling_max_length

    assert mean_pooling_max_length(metrics.minilm_path()) == 256
    copy = tmp_path / "cls"
    shutil.copytree(metrics.minilm_path(), copy, ignore=shutil.ignore_patterns("*.safetensors"))
    config = copy / "1_Pooling" / "config.json"
    config.write_text(config.read_text().replace('"pooling_mode_cls_token": false', '"pooling_mode_cls_token": true'))
    assert mean_pooling_max_length(copy) is None
    assert mean_pooling_max_length(tmp_path) is None  # not a sentence-transformers folder


@pytest.mark.parametrize("layer", [6, 4])
def test_one_pass_equals_bert_score_and_sentence_transformers(layer):
    import bert_score

    from trainer.evaluation.shared_encoder import score_both

    preds, refs = BERT_PREDS + SBERT_PREDS, BERT_REFS + SBERT_REFS
    bert, cos, seconds = score_both(preds, refs, _minilm_encoder(layer))
    expected, _ = metrics.bertscore_f1(preds, refs, model_type=metrics.minilm_path(), num_layers=layer)
    assert bert == pytest.approx(expected, abs=1e-6) and bert[1] == 0.0
    # and bert-score called directly, one row at a time (its batching plays no part)
    _, _, f1 = bert_score.score([preds[2]], [refs[2]], model_type=metrics.minilm_path(), num_layers=layer)
    assert bert[2] == pytest.approx(float(f1[0]), abs=1e-6)
    reference_cos, _ = metrics.sbert_cosine(preds, refs)
    assert cos == pytest.approx(reference_cos, abs=1e-6)
    assert set(seconds) == {"encoder", "bertscore_matching", "sbert_pooling"}


def test_a_sentence_longer_than_the_pooling_window_is_pooled_as_sentence_transformers_truncates_it():
    from trainer.evaluation.shared_encoder import score_both

    long = " ".join(["a wide new road was built between the northern fields and the river"] * 24)  # ~340 tokens
    preds, refs = [long, "a road was built"], [["a new road was built near the river"], [long]]
    bert, cos, _ = score_both(preds, refs, _minilm_encoder())
    expected_bert, _ = metrics.bertscore_f1(preds, refs)
    expected_cos, _ = metrics.sbert_cosine(preds, refs)
    assert bert == pytest.approx(expected_bert, abs=1e-6) and cos == pytest.approx(expected_cos, abs=1e-6)


def test_each_distinct_sentence_goes_through_the_encoder_once_in_length_sorted_batches():
    from trainer.evaluation import shared_encoder

    encoder = _minilm_encoder()
    _, model = shared_encoder._load(encoder.path, "fp32", "cpu")  # the cached model embed uses
    widths = []
    hook = model.register_forward_pre_hook(
        lambda _m, _a, kw: widths.append(tuple(kw["input_ids"].shape)), with_kwargs=True
    )
    try:
        refs = ["No change.", "A road was built in the north of the image.", "A lake grew."]
        # LEVIR-CC-like: rows repeat references, predictions repeat too
        emb = shared_encoder.embed(["No change.", "A lake grew.", *refs, *refs, "No change."], encoder, batch_size=2)
    finally:
        hook.remove()
    assert len(emb.index) == 3 and sum(rows for rows, _ in widths) == 3
    assert [width for _, width in widths] == sorted((width for _, width in widths), reverse=True)


def test_fast_precisions_stay_close_and_say_so():
    from trainer.evaluation.metric_sets import EncoderOptions, encoder_metrics

    preds, refs = BERT_PREDS + SBERT_PREDS, BERT_REFS + SBERT_REFS
    exact = encoder_metrics(preds, refs, EncoderOptions())
    assert "one encoder pass shared" in exact.models["bertscore_f1"]["detail"]
    # int8 quantizes activations too: up to ~0.1 off per row (measured in benchmarks/results/scoring.md)
    for precision, tolerance in (("int8", 0.15), ("bf16", 0.01)):
        fast = encoder_metrics(preds, refs, EncoderOptions(precision=precision))
        for key in ("bertscore_f1", "sbert_cosine"):
            assert fast.per_row[key] != exact.per_row[key], (precision, key)
            assert fast.per_row[key] == pytest.approx(exact.per_row[key], abs=tolerance), (precision, key)
            assert f"encoder in {precision}" in fast.models[key]["detail"]


# --- where the encoders run, and a stand-in encoder -----------------------------------------------------------------


def test_the_encoders_run_where_device_says_and_a_missing_cuda_device_is_an_error():
    import torch

    from trainer.evaluation.metric_sets import EncoderOptions

    assert not torch.cuda.is_available()
    assert metrics.encoder_device("auto") == "cpu" and metrics.encoder_device("CPU") == "cpu"
    assert metrics.encoder_device("auto", "int8") == "cpu"
    with pytest.raises(ValueError, match="'cuda': no such CUDA device"):
        metrics.encoder_device("cuda")
    with pytest.raises(ValueError, match="'gpu': choose auto, cpu, cuda or cuda:N"):
        metrics.encoder_device("gpu")
    with pytest.raises(ValueError, match="int8 runs on the CPU only"):
        metrics.encoder_device("cuda:0", "int8")
    with pytest.raises(ValueError, match="'cuda:1': no such CUDA device"):
        EncoderOptions(device="cuda:1")
    assert EncoderOptions().resolved_device == "cpu"


def test_the_tiny_encoder_is_read_as_the_libraries_read_the_minilm(tmp_path):
    from trainer.evaluation.metric_sets import EncoderOptions, encoder_metrics, shared_encoder_for
    from trainer.tiny.encoder import build_tiny_encoder

    preds, refs = BERT_PREDS + SBERT_PREDS, BERT_REFS + SBERT_REFS
    path = str(build_tiny_encoder(tmp_path / "encoder", [*preds, *(r for rs in refs for r in rs)]))
    options = EncoderOptions(sbert_model=path, bertscore_model=path, bertscore_layers=2, device="cpu")
    assert shared_encoder_for(options).pooling_max_length == 128
    shared = encoder_metrics(preds, refs, options)
    expected_bert, _ = metrics.bertscore_f1(preds, refs, model_type=path, num_layers=2, device="cpu")
    expected_cos, _ = metrics.sbert_cosine(preds, refs, model=path, device="cpu")
    assert shared.per_row["bertscore_f1"] == pytest.approx(expected_bert, abs=1e-6)
    assert shared.per_row["sbert_cosine"] == pytest.approx(expected_cos, abs=1e-6)
    for key in ("bertscore_f1", "sbert_cosine"):
        assert shared.models[key]["detail"].endswith(
            "one encoder pass shared by bertscore_f1 and sbert_cosine; encoder on cpu"
        )


def test_without_pycocoevalcap_the_levircc_metrics_are_reported_as_not_computed(monkeypatch):
    import sys

    from trainer.evaluation.metric_sets import LEVIRCC_KEYS, levircc_set

    monkeypatch.setitem(sys.modules, "pycocoevalcap.bleu.bleu", None)  # an import of it raises ImportError
    scored = levircc_set(["a road was built"], [["a road was built"]], meteor=False)
    assert scored.values == {} and set(scored.unavailable) == set(LEVIRCC_KEYS)
    assert all("pycocoevalcap" in why for why in scored.unavailable.values())
