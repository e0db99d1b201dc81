"""Training, evaluation and prediction for GeoLLaVA-style change captioning.

Importing the package registers CCExpert with the transformers Auto classes and the family registry, so every CLI
(train, eval, predict) and the Space load ``ccexpert`` checkpoints with no ``trust_remote_code``.
"""

import trainer.ccexpert  # noqa: F401  (registers the CCExpert config/model and family)
