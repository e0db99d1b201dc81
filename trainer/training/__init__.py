"""Training: option dataclasses, the collator, callbacks, pruning, CCExpert's stages (``trainer.sft`` runs them)."""
