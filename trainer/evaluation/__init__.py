"""Evaluation and inference: generation, prediction, metrics, scoring, grounding, the report, checkpoint selection."""
