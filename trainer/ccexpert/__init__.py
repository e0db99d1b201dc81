"""Kept for the documented command ``python -m trainer.ccexpert.convert``; the code is in trainer.models.ccexpert."""
