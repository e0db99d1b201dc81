"""A tiny random sentence encoder: BERT with mean pooling, in the sentence-transformers folder layout.

A stand-in for the metric encoders (BERTScore and the SBERT cosine read it as they read all-MiniLM-L6-v2) where the
real weights cannot travel, as on an offline GPU node. Its scores mean nothing; where it runs and what it computes
can be checked. See docs/gpu-check.md.
"""

import json
import re
from pathlib import Path

import torch
from transformers import BertConfig, BertModel, BertTokenizerFast


SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
#: sentence-transformers' modules: the transformer at the folder's root, mean pooling, unit length.
MODULES = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
]


def build_tiny_encoder(
    out_dir: str | Path, corpus: list[str], hidden: int = 32, layers: int = 2, max_length: int = 128, seed: int = 0
) -> Path:
    """Write a random BERT encoder whose WordPiece vocabulary holds every lower-cased word of ``corpus``.

    Args:
        out_dir: The folder to write (created).
        corpus: Sentences whose words become whole tokens (anything else falls back to characters or ``[UNK]``).
        hidden: Width of the encoder.
        layers: Transformer layers (BERTScore's layer is one of ``1..layers``).
        max_length: Longest input, in tokens (the pooling's ``max_seq_length`` too).
        seed: Seed of the random weights.

    Returns:
        ``out_dir``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    words = sorted({w for text in corpus for w in re.findall(r"\w+|[^\w\s]", text.lower())})
    characters = sorted({c for w in words for c in w})
    vocab = list(dict.fromkeys([*SPECIAL_TOKENS, *characters, *(f"##{c}" for c in characters), *words]))
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(out / "vocab.txt"), do_lower_case=True, model_max_length=max_length)
    tokenizer.save_pretrained(out)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=max_length,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(out)
    (out / "modules.json").write_text(json.dumps(MODULES, indent=2))
    (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_length, "do_lower_case": False}))
    pooling = {"word_embedding_dimension": hidden, "pooling_mode_mean_tokens": True}
    pooling |= dict.fromkeys(
        ("pooling_mode_cls_token", "pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens"), False
    )
    (out / "1_Pooling").mkdir(exist_ok=True)
    (out / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2))
    (out / "2_Normalize").mkdir(exist_ok=True)
    return out
