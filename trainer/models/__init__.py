"""Model definitions: families, loading for training and inference, CCExpert.

Importing this package registers CCExpert with the transformers Auto classes and the family registry, so every
entry point that loads a model through it (train, eval, predict, the Space) loads ``ccexpert`` checkpoints with no
``trust_remote_code``.
"""

from trainer.models import ccexpert  # noqa: F401  (registers the CCExpert config/model and family)
