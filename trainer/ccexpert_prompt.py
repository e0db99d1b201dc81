"""CCExpert's fixed prompt (authors' code, ``preprocess_qwen``), kept apart so the tokenizer corpus can use it."""

CCEXPERT_PROMPT = (
    "This is the Image1 <image>. This is the second Image2 <image>.\nWhat difference happened from Image1 to Image2?"
)
