"""Evaluation metrics (SPEC §5)."""
