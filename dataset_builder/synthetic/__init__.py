"""Synthetic worlds whose true changes are known: fMoW-format scenes (``geollava-synth``) and LEVIR-CC pairs.

The embedded default's stand-in for real fMoW and LEVIR-CC: the builder reads their trees like real ones, and only
the ``synthetic`` annotator (looked up by name, never imported by the real builder) reads their ground truth.
"""
