"""The ``openai`` annotator: the paper's GPT-4o-mini descriptions through any OpenAI-compatible endpoint.

``annotator`` plans each pair and records its answer; ``client`` asks Chat Completions, ``batch`` the Batch API;
``cache`` keeps every paid answer; ``cost`` prices, caps and reports a run; ``config`` holds the options.
See docs/annotation.md.
"""
