"""Benchmark data: the MLLMU-Bench-format loader and the embedded synthetic benchmark."""

from forgetlab.data.schema import (
    FORGET_RATIOS,
    Sample,
    forget_split,
    retain_split,
)

__all__ = ["FORGET_RATIOS", "Sample", "forget_split", "retain_split"]
