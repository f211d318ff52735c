"""Unlearning methods: losses over forget/retain batches, registered in :data:`METHODS`.

Importing this package registers every method module below.
"""

from forgetlab.methods import ga, ga_diff, kl_min, mmunlearner, npo, relearn, rlabel, rmu, salun, simnpo  # noqa: F401
from forgetlab.methods.base import METHODS, LossOutput, MethodConfig, UnlearnMethod, build_method
from forgetlab.methods.salun import saliency_mask

__all__ = ["METHODS", "LossOutput", "MethodConfig", "UnlearnMethod", "build_method", "saliency_mask"]
