"""PCA-based comparisons of two models' features on the same probe set.

Each model's PCA is fitted on its own features (centred; eigen-decomposition of the sample
covariance with the 1/(n−1) normalisation, computed in float64 from whichever of XᵀX (d×d) or
XXᵀ (n×n) is smaller). Principal directions have an arbitrary sign, so every comparison here is
sign-invariant. A direction is only identifiable when its eigenvalue is separated from the next
one: report :func:`eigengap` next to :func:`pca_similarity` (``docs/reference.md#pca-similarity``).

Inputs are numpy arrays or torch tensors of shape [n, d]; results are Python floats.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from forgetlab.probe.cka import as_float64_matrix


def _pca(t: torch.Tensor, k: int, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean [d], eigenvalues [min(n, d)] descending, top-k principal directions [d, k])."""
    n, d = t.shape
    if n < 2:
        raise ValueError(f"{name} needs at least 2 rows for a covariance; got n={n}")
    if bool((t == t[0]).all()):  # exact; centring would leave round-off "variance"
        raise ValueError(f"{name} has zero variance: principal directions are undefined")
    mean = t.mean(dim=0)
    xc = t - mean
    if n > d:
        w, v = torch.linalg.eigh(xc.T @ xc / (n - 1))
        w, v = w.flip(0), v.flip(1)
        dirs = v[:, :k]
    else:
        w, u = torch.linalg.eigh(xc @ xc.T / (n - 1))
        w, u = w.flip(0), u.flip(1)
        # Right singular vectors from left ones: v_j = Xcᵀ u_j / ‖Xcᵀ u_j‖ (needs λ_j > 0).
        dirs = xc.T @ u[:, :k]
    w = w.clamp(min=0.0)
    tol = float(w[0]) * max(n, d) * torch.finfo(torch.float64).eps
    if float(w[0]) == 0.0:
        raise ValueError(f"{name} has zero variance: principal directions are undefined")
    if k > w.shape[0] or float(w[k - 1]) <= tol:
        raise ValueError(
            f"k={k} exceeds the rank of {name}'s covariance (n={n}, d={d}): the k-th principal direction is undefined"
        )
    dirs = dirs / torch.linalg.vector_norm(dirs, dim=0, keepdim=True)
    return mean, w, dirs


def _check_k(k: int, d: int) -> None:
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer; got {k!r}")
    if k > d:
        raise ValueError(f"k={k} exceeds the feature dimension d={d}")


def _pair(x_ref, x_upd, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    a = as_float64_matrix(x_ref, "x_ref")
    b = as_float64_matrix(x_upd, "x_upd")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"x_ref and x_upd must have the same feature dimension d; got {a.shape[1]} and {b.shape[1]}")
    _check_k(k, a.shape[1])
    return a, b.to(a.device)


def principal_cosines(x_ref: np.ndarray | torch.Tensor, x_upd: np.ndarray | torch.Tensor, k: int = 1) -> list[float]:
    """Cosines of the k principal angles between the top-k PC subspaces (descending, in [0, 1])."""
    a, b = _pair(x_ref, x_upd, k)
    _, _, va = _pca(a, k, "x_ref")
    _, _, vb = _pca(b, k, "x_upd")
    cos = torch.linalg.svdvals(va.T @ vb).clamp(0.0, 1.0)
    return [float(c) for c in cos]


def pca_similarity(x_ref: np.ndarray | torch.Tensor, x_upd: np.ndarray | torch.Tensor, k: int = 1) -> float:
    """Sign-invariant similarity of the two models' top-k principal directions, in [0, 1].

    k = 1: ``|cos(u₁, v₁)|`` of the two top PCs. k > 1: the mean squared cosine of the principal
    angles between the two top-k subspaces, ``‖UᵀV‖²_F / k`` (1 = same subspace, 0 = orthogonal;
    invariant to any rotation inside either subspace). Note that the k > 1 formula applied to
    k = 1 would give cos², not |cos|; use :func:`principal_cosines` for the raw cosines.
    Requires the same feature dimension d; n may differ.
    """
    cos = principal_cosines(x_ref, x_upd, k)
    if k == 1:
        return cos[0]
    return min(1.0, sum(c * c for c in cos) / k)


def pca_shift(x_ref: np.ndarray | torch.Tensor, x_upd: np.ndarray | torch.Tensor, k: int = 1) -> float:
    """Whitened displacement of x_upd's centroid along x_ref's top-k principal directions.

    ``z_j = (mean(x_upd) − mean(x_ref)) · u_j / sqrt(λ_j)`` for x_ref's PCs u_j with covariance
    eigenvalues λ_j (1/(n−1) normalisation), j = 1..k; returns ``‖z‖₂`` — the shift in units of
    x_ref's standard deviation along those PCs (sign-invariant). 0 for identical centroids.
    """
    a, b = _pair(x_ref, x_upd, k)
    mean_a, w, va = _pca(a, k, "x_ref")
    delta = b.mean(dim=0) - mean_a
    z = (va.T @ delta) / torch.sqrt(w[:k])
    return float(torch.linalg.vector_norm(z))


def eigengap(x: np.ndarray | torch.Tensor, k: int = 1, relative: bool = False) -> float:
    """Gap ``λ_k − λ_{k+1}`` between x's k-th and (k+1)-th covariance eigenvalues (1-indexed).

    With ``relative=True`` returns ``(λ_k − λ_{k+1}) / λ_k`` in [0, 1]. Eigenvalues beyond
    min(n, d) are 0. A small gap means the k-th principal direction is not well defined, so a
    low :func:`pca_similarity` may just be a swap of nearly equal PCs.
    """
    t = as_float64_matrix(x, "x")
    n, d = t.shape
    if not isinstance(k, int) or k < 1 or k >= d:
        raise ValueError(f"k must be an integer with 1 <= k < d={d}; got {k!r}")
    if n < 2:
        raise ValueError(f"x needs at least 2 rows for a covariance; got n={n}")
    if bool((t == t[0]).all()):
        if relative:  # constant input: every eigenvalue is exactly 0
            raise ValueError(f"λ_{k} = 0 (x is constant): the relative gap is undefined")
        return 0.0
    xc = t - t.mean(dim=0)
    # The non-zero eigenvalues of XcᵀXc and XcXcᵀ coincide: decompose the smaller one.
    gram = xc.T @ xc if n > d else xc @ xc.T
    w = torch.linalg.eigvalsh(gram / (n - 1)).flip(0).clamp(min=0.0)
    # Eigenvalues at round-off level (rank deficiency, e.g. n <= k) are exact zeros.
    w = torch.where(w > w[0] * max(n, d) * torch.finfo(torch.float64).eps, w, torch.zeros_like(w))
    lam = [float(v) for v in w] + [0.0, 0.0]
    lam_k, lam_k1 = lam[k - 1], lam[k]
    gap = max(0.0, lam_k - lam_k1)
    if not relative:
        return gap
    if lam_k == 0.0:
        raise ValueError(f"λ_{k} = 0 (rank of x's covariance < {k}): the relative gap is undefined")
    value = gap / lam_k
    if not math.isfinite(value):
        raise ValueError("relative eigengap is not finite")
    return value
