"""Evaluation metrics (definitions: ``docs/reference.md#metrics``)."""
