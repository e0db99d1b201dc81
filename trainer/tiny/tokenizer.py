"""The offline tokenizer of the tiny models: byte-level BPE trained on the prompts and synthetic captions."""

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from dataset_builder.prompts import ANNOTATION_PROMPT, PROMPT_TEMPLATES
from dataset_builder.synthetic.describe import describe_corpus
from trainer.models.ccexpert.template import CCEXPERT_PROMPT


SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<image>", "<video>"]
QWEN_TOKENS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
#: The Qwen2 tokenizers' padding (and end-of-text) token, added after the vocabulary by :func:`chatml_tokenizer`.
QWEN2_PAD = "<|endoftext|>"


def tokenizer_corpus(size: int = 3000, seed: int = 0) -> list[str]:
    """Text the tiny tokenizers are trained on: the prompt templates and synthetic captions."""
    chat = ["USER: ASSISTANT:", "user assistant system You are a helpful assistant."]
    return [*PROMPT_TEMPLATES, ANNOTATION_PROMPT, CCEXPERT_PROMPT, *chat, *describe_corpus(size, seed)]


def build_tokenizer(corpus: list[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``corpus``: whole words of the corpus become single tokens.

    Byte-level, so any text (a user's own prompt) still tokenizes and every caption decodes back exactly.
    """
    specials = SPECIAL_TOKENS + QWEN_TOKENS
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>", "video_token": "<video>"},
        padding_side="left",
        model_max_length=4096,
    )


def token_ids(tokenizer) -> dict:
    """The ids of the special tokens the tiny configs need (pad, bos, eos, the visual placeholders)."""
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS + QWEN_TOKENS}
    return {
        "pad_token_id": ids["<pad>"],
        "bos_token_id": ids["<s>"],
        "eos_token_id": ids["</s>"],
        "image": ids["<image>"],
        "video": ids["<video>"],
        **{k: v for k, v in ids.items() if k.startswith("<|")},
    }


def chatml_tokenizer(
    tokenizer: PreTrainedTokenizerFast, *, qwen2: bool = False, **placeholders: str
) -> PreTrainedTokenizerFast:
    """The same tokenizer with ``<|im_end|>`` as EOS and the named visual placeholders (ChatML families).

    With ``qwen2``, the special tokens take the roles they have in the Qwen2 tokenizers of LLaVA-OneVision and
    Qwen2.5-VL: no BOS, ``<|endoftext|>`` (added at the end of the vocabulary) as the padding token.
    """
    # ChatML families end a turn with <|im_end|>: it must be the EOS so that generation stops there. The Qwen
    # processor looks its placeholders up on the tokenizer by attribute name (image_token, vision_start_token, ...).
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())  # a copy: the shared one stays as it is
    if qwen2:
        backend.add_special_tokens([QWEN2_PAD])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        bos_token=None if qwen2 else "<s>",
        eos_token="<|im_end|>",
        pad_token=QWEN2_PAD if qwen2 else "<pad>",
        extra_special_tokens=placeholders,
        padding_side="left",
        model_max_length=4096,
    )


def chatml_ids(tokenizer: PreTrainedTokenizerFast, ids: dict) -> dict:
    """``ids`` with the padding and BOS ids of a :func:`chatml_tokenizer` (Qwen2 configs use ``<|endoftext|>``)."""
    pad = tokenizer.pad_token_id
    return {**ids, "pad_token_id": pad, "bos_token_id": tokenizer.bos_token_id if tokenizer.bos_token else pad}
