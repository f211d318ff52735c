"""Representation diagnostics: linear CKA and PCA comparisons (``docs/reference.md#representation-diagnostics``)."""

from forgetlab.probe.cka import StreamingCKA, hsic, linear_cka, minibatch_cka
from forgetlab.probe.pca import eigengap, pca_shift, pca_similarity, principal_cosines

__all__ = [
    "StreamingCKA",
    "eigengap",
    "hsic",
    "linear_cka",
    "minibatch_cka",
    "pca_shift",
    "pca_similarity",
    "principal_cosines",
]
