"""Linear CKA between two sets of representations of the same n examples.

Definitions (K = X Xᵀ, L = Y Yᵀ are the linear-kernel Gram matrices, H = I − 11ᵀ/n):

* biased HSIC (Gretton et al. 2005): ``HSIC_0(K, L) = tr(K H L H) / (n − 1)²``;
* unbiased HSIC (Song et al. 2007), with K̃, L̃ the Gram matrices with the diagonal zeroed::

      HSIC_1(K, L) = [ tr(K̃ L̃) + (1ᵀK̃1)(1ᵀL̃1) / ((n−1)(n−2)) − 2/(n−2) · 1ᵀK̃L̃1 ] / (n(n−3))

* ``CKA = HSIC(K, L) / sqrt(HSIC(K, K) · HSIC(L, L))``, "debiased CKA" when HSIC_1 is used
  (Kornblith et al. 2019; Nguyen et al. 2021).

Biased CKA lies in [0, 1] but is badly inflated when n ≪ d (independent Gaussian data of width
3584 and n = 40 gives ≈ 0.99), which is why debiased CKA is the default. Debiased CKA lies in
[−1, 1] and is ≈ 0 for independent data; small negative values are legitimate.

Both estimators are exactly invariant to translating either input, so features are centred first
(which keeps float64 round-off small for activations with large means). When n > max(d_x, d_y)
HSIC is computed from the d×d feature products (``‖YᵀX‖²_F`` …, cost O(n·d²)), otherwise from the
n×n Gram matrices (cost O(n²·d)); the two forms give the same value up to round-off.

Inputs are numpy arrays or torch tensors of shape [n, d]; computation is float64 torch on the
input tensor's device (numpy inputs on the CPU); results are Python floats.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Literal

import numpy as np
import torch

Form = Literal["auto", "feature", "gram"]
_FORMS = ("auto", "feature", "gram")


def as_float64_matrix(x: np.ndarray | torch.Tensor, name: str = "x") -> torch.Tensor:
    """Return ``x`` as a detached float64 torch tensor of shape [n, d], checking it is finite."""
    t = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if t.ndim != 2:
        raise ValueError(f"{name} must have shape [n, d]; got shape {tuple(t.shape)}")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {tuple(t.shape)}")
    t = t.to(torch.float64)
    # A finite sum implies finite entries; only a non-finite sum (possibly mere overflow) needs
    # the elementwise pass. This keeps the check cheap on large activations.
    if not math.isfinite(float(t.sum())) and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or inf values")
    return t


def _check_pair(x, y, min_n: int) -> tuple[torch.Tensor, torch.Tensor]:
    xt = as_float64_matrix(x, "x")
    yt = as_float64_matrix(y, "y")
    if xt.shape[0] != yt.shape[0]:
        raise ValueError(f"x and y must have the same number of rows; got {xt.shape[0]} and {yt.shape[0]}")
    n = xt.shape[0]
    if n < min_n:
        raise ValueError(f"need n >= {min_n} examples for this estimator; got n={n}")
    if yt.device != xt.device:
        yt = yt.to(xt.device)
    return xt, yt


def _resolve_form(form: str, n: int, dx: int, dy: int) -> str:
    if form not in _FORMS:
        raise ValueError(f"form must be one of {_FORMS}; got {form!r}")
    if form == "auto":
        return "feature" if n > max(dx, dy) else "gram"
    return form


def _hsic1_gram(kt: torch.Tensor, lt: torch.Tensor, k1: torch.Tensor, l1: torch.Tensor) -> torch.Tensor:
    """Unbiased HSIC (Song et al. 2007) of two n×n Gram matrices whose diagonals are already
    zeroed (K̃, L̃), given their row sums k1 = K̃1, l1 = L̃1."""
    n = kt.shape[0]
    trace_kl = torch.dot(kt.reshape(-1), lt.reshape(-1))  # tr(K̃ L̃) for symmetric matrices
    middle = k1.sum() * l1.sum() / ((n - 1) * (n - 2))
    right = 2.0 / (n - 2) * torch.dot(k1, l1)  # 1ᵀ K̃ L̃ 1 = (K̃1)ᵀ(L̃1)
    return (trace_kl + middle - right) / (n * (n - 3))


def _hsic1_feature(xty_sq: torch.Tensor, kd: torch.Tensor, ld: torch.Tensor, n: int) -> torch.Tensor:
    """Unbiased HSIC from features, for *centred* X, Y (so 1ᵀK1 = 0 and K1 = 0).

    With K = XXᵀ: tr(K̃L̃) = ‖YᵀX‖² − Σ kᵢᵢlᵢᵢ, 1ᵀK̃1 = −Σ kᵢᵢ, K̃1 = −diag(K), hence the
    bracket of the Gram formula is ‖YᵀX‖² − n/(n−2)·Σ kᵢᵢlᵢᵢ + Σkᵢᵢ·Σlᵢᵢ/((n−1)(n−2)).
    """
    bracket = xty_sq - n / (n - 2) * (kd @ ld) + kd.sum() * ld.sum() / ((n - 1) * (n - 2))
    return bracket / (n * (n - 3))


def _hsic_triplet(xc: torch.Tensor, yc: torch.Tensor, debiased: bool, form: str) -> tuple[float, float, float]:
    """(HSIC(K,L), HSIC(K,K), HSIC(L,L)) for centred features, in the requested form."""
    n = xc.shape[0]
    if form == "feature":
        xy = torch.linalg.matrix_norm(yc.T @ xc) ** 2
        xx = torch.linalg.matrix_norm(xc.T @ xc) ** 2
        yy = torch.linalg.matrix_norm(yc.T @ yc) ** 2
        if debiased:
            kd = (xc * xc).sum(dim=1)
            ld = (yc * yc).sum(dim=1)
            return (
                float(_hsic1_feature(xy, kd, ld, n)),
                float(_hsic1_feature(xx, kd, kd, n)),
                float(_hsic1_feature(yy, ld, ld, n)),
            )
    else:
        k = xc @ xc.T
        l_ = yc @ yc.T
        if debiased:
            k.fill_diagonal_(0.0)
            l_.fill_diagonal_(0.0)
            k1, l1 = k.sum(dim=1), l_.sum(dim=1)
            return (
                float(_hsic1_gram(k, l_, k1, l1)),
                float(_hsic1_gram(k, k, k1, k1)),
                float(_hsic1_gram(l_, l_, l1, l1)),
            )
        # Centred features give centred Gram matrices: tr(KHLH) = <K, L>_F.
        k, l_ = k.reshape(-1), l_.reshape(-1)
        xy, xx, yy = torch.dot(k, l_), torch.dot(k, k), torch.dot(l_, l_)
    scale = (n - 1) ** 2
    return float(xy) / scale, float(xx) / scale, float(yy) / scale


def _ratio(xy: float, xx: float, yy: float) -> float:
    if not (xx > 0.0 and yy > 0.0):
        raise ValueError(
            f"degenerate input: self-HSIC is not positive (HSIC(K,K)={xx:.3g}, HSIC(L,L)={yy:.3g}); CKA is undefined"
        )
    value = xy / math.sqrt(xx * yy)
    if not math.isfinite(value):
        raise ValueError("CKA is not finite (overflow in HSIC); rescale the inputs")
    return value


def hsic(
    x: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    debiased: bool = True,
    form: Form = "auto",
) -> float:
    """Linear-kernel HSIC of x [n, d_x] and y [n, d_y]: HSIC_1 (unbiased) or HSIC_0 (biased).

    HSIC_0 uses the 1/(n−1)² normalisation. The unbiased estimator needs n >= 4.
    """
    xt, yt = _check_pair(x, y, 4 if debiased else 2)
    xc = xt - xt.mean(dim=0, keepdim=True)
    yc = yt - yt.mean(dim=0, keepdim=True)
    chosen = _resolve_form(form, xt.shape[0], xt.shape[1], yt.shape[1])
    return _hsic_triplet(xc, yc, debiased, chosen)[0]


def linear_cka(
    x: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    debiased: bool = True,
    form: Form = "auto",
) -> float:
    """Linear CKA between x [n, d_x] and y [n, d_y] (same n examples, in the same order).

    Args:
        x, y: representations (numpy or torch, any float dtype); computed in float64.
        debiased: use the unbiased HSIC estimator (default; requires n >= 4). The biased
            estimator is inflated for n ≪ d and should never be reported alone.
        form: "feature" (d×d products), "gram" (n×n Gram matrices) or "auto" (feature form
            when n > max(d_x, d_y)); the value does not depend on it.

    Returns:
        CKA as a float: in [0, 1] (biased) or [−1, 1] (debiased).

    Raises:
        ValueError: shapes disagree, n too small, non-finite input, or a degenerate input
            (zero variance / non-positive self-HSIC) for which CKA is undefined.
    """
    xt, yt = _check_pair(x, y, 4 if debiased else 2)
    for name, t in (("x", xt), ("y", yt)):
        # Exact test: after centring, round-off would turn a constant input into tiny noise.
        if bool((t == t[0]).all()):
            raise ValueError(f"{name} has zero variance (all rows identical): CKA is undefined")
    xc = xt - xt.mean(dim=0, keepdim=True)
    yc = yt - yt.mean(dim=0, keepdim=True)
    chosen = _resolve_form(form, xt.shape[0], xt.shape[1], yt.shape[1])
    return _ratio(*_hsic_triplet(xc, yc, debiased, chosen))


class StreamingCKA:
    """Minibatch linear CKA (Nguyen et al. 2021, "Do wide and deep networks learn the same things?").

    ``CKA_mb = mean_b HSIC_1(K_b, L_b) / sqrt(mean_b HSIC_1(K_b, K_b) · mean_b HSIC_1(L_b, L_b))``
    with one unbiased HSIC per minibatch b (unweighted mean over batches, as in the paper). This
    is a different estimator from full-batch debiased CKA: it is consistent for the same
    population CKA and equals it exactly when there is a single batch. Memory is O(batch²)
    or O(d²); only three running sums are kept between batches.

    Usage: ``s = StreamingCKA(); for xb, yb in batches: s.update(xb, yb); s.compute()``.
    """

    def __init__(self, form: Form = "auto") -> None:
        if form not in _FORMS:
            raise ValueError(f"form must be one of {_FORMS}; got {form!r}")
        self.form = form
        self.reset()

    def reset(self) -> None:
        """Forget all batches seen so far."""
        self._sum_xy = 0.0
        self._sum_xx = 0.0
        self._sum_yy = 0.0
        self.n_batches = 0
        self.n_samples = 0

    def update(self, x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor) -> None:
        """Add one minibatch (x [b, d_x], y [b, d_y], b >= 4, same examples in the same order)."""
        xt, yt = _check_pair(x, y, 4)
        xc = xt - xt.mean(dim=0, keepdim=True)  # exact: HSIC_1 is translation invariant
        yc = yt - yt.mean(dim=0, keepdim=True)
        chosen = _resolve_form(self.form, xt.shape[0], xt.shape[1], yt.shape[1])
        xy, xx, yy = _hsic_triplet(xc, yc, True, chosen)
        self._sum_xy += xy
        self._sum_xx += xx
        self._sum_yy += yy
        self.n_batches += 1
        self.n_samples += xt.shape[0]

    def compute(self) -> float:
        """Minibatch CKA over all batches seen so far."""
        if self.n_batches == 0:
            raise ValueError("StreamingCKA.compute() called before any update()")
        b = self.n_batches
        return _ratio(self._sum_xy / b, self._sum_xx / b, self._sum_yy / b)


def minibatch_cka(
    xs_batches: Iterable[np.ndarray | torch.Tensor],
    ys_batches: Iterable[np.ndarray | torch.Tensor],
    form: Form = "auto",
) -> float:
    """Minibatch CKA (Nguyen et al. 2021) over paired batches; see :class:`StreamingCKA`."""
    s = StreamingCKA(form=form)
    for xb, yb in zip(xs_batches, ys_batches, strict=True):
        s.update(xb, yb)
    return s.compute()
