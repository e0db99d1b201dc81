"""The model side of GeoLLaVA, one sub-package per stage.

- ``trainer.models``: model families, loading (training and inference), pruning masks, CCExpert's model classes.
- ``trainer.training``: configs, collator, callbacks, pruning, CCExpert's stages; ``trainer.sft`` is the entry point.
- ``trainer.evaluation``: generation, prediction, metrics, scoring, grounding and the evaluation report.
- ``trainer.tiny``: tiny random models and their vision pretraining, the embedded default's stand-in for real bases.
"""
