"""Unstructured pruning of the language model's linear weights, from the training config.

``masks``: the masks and their files; ``methods``: how they are computed (magnitude, Wanda); ``pruned_copy``: the
pruned full-precision copy a quantized base is loaded from; ``callback``: the training callback. See docs/pruning.md.
"""
