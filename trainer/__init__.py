"""The model side of GeoLLaVA, one sub-package per stage.

- ``trainer.models``: model families, loading (training and inference), CCExpert's model classes.
- ``trainer.pruning``: pruning masks and their files, magnitude and Wanda, the pruned copy, the pruning callback.
- ``trainer.training``: configs, collator, callbacks, CCExpert's stages; ``trainer.sft`` is the entry point.
- ``trainer.evaluation``: generation, prediction, metrics, scoring, grounding and the evaluation report.
- ``trainer.tiny``: tiny random models and their vision pretraining, the embedded default's stand-in for real bases.
"""
