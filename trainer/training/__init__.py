"""Training: option dataclasses, the collator, the callback registry, CCExpert's stages (``trainer.sft`` runs them)."""
