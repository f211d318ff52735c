"""Membership-inference (MIA) scores from per-token answer log-probs, ROC-AUC and PrivLeak.

Convention: every score is HIGHER for examples that look MORE like training members, and
:func:`mia_auc` labels members 1, so AUC ≈ 1 means the forget set is still recognisable,
≈ 0.5 means it is indistinguishable from the holdout set. (open-unlearning stores the negated
scores and labels the holdout set 1; the resulting AUC is the same number.)

Per-example inputs: ``logprobs`` is a 1-D array of log p(y_t | y_<t, x) over the answer tokens
(natural log, every value <= 0). Min-K%++ also needs, per answer position, the mean and standard
deviation of log p under the model's full next-token distribution; get all three from the logits
with :func:`token_stats_from_logits`.

Score definitions (NLL = −mean(logprobs), the answer-token mean negative log-likelihood):

* LOSS:      ``−NLL`` (Yeom et al. 2018).
* ZLib:      ``−NLL / len(zlib.compress(text.encode("utf-8")))`` — mean NLL (the log-perplexity)
  over the zlib-compressed length in bytes of the answer text, default compression level, as
  Carlini et al. 2021 and open-unlearning define it. ``reduction="sum"`` uses the summed NLL.
* Min-K%:    mean of the ``max(1, floor(k·T))`` lowest token log-probs (Shi et al. 2024), k = 0.4.
* Min-K%++:  ``(log p_t − μ_t) / σ_t`` per token, then the same lowest-k mean (Zhang et al. 2024);
  σ_t is floored at ``sigma_floor`` (default 1e-3, i.e. open-unlearning's variance clamp 1e-6)
  so a near-deterministic position cannot divide by zero.
* Reference: ``−(NLL − NLL_ref)`` with NLL_ref from a reference model (Carlini et al. 2021).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

ArrayLike = np.ndarray | torch.Tensor | Sequence[float]
MiaMethod = Literal["loss", "zlib", "mink", "minkpp", "reference"]
MIA_METHODS: tuple[str, ...] = ("loss", "zlib", "mink", "minkpp", "reference")

# Log-probs above this are not log-probabilities (a common bug: passing NLLs instead).
_MAX_LOGPROB = 1e-4


def _as_1d(values: ArrayLike, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        arr = values.detach().to(device="cpu", dtype=torch.float64).numpy()
    else:
        arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D; got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty (an example with no answer tokens has no MIA score)")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or inf values")
    return arr


def _logprobs(values: ArrayLike) -> np.ndarray:
    arr = _as_1d(values, "logprobs")
    if arr.max() > _MAX_LOGPROB:
        raise ValueError(f"logprobs must be <= 0 (log-probabilities); got max {arr.max():.4g} — NLLs passed instead?")
    return arr


def _n_lowest(n_tokens: int, k: float) -> int:
    if not 0.0 < k <= 1.0:
        raise ValueError(f"k must be a fraction in (0, 1]; got {k!r}")
    # The 1e-9 keeps floor(k·T) from losing one to float error (e.g. 0.29·100 = 28.999…).
    return max(1, math.floor(n_tokens * k + 1e-9))


def loss_score(logprobs: ArrayLike) -> float:
    """LOSS attack: −(mean answer-token NLL) = mean token log-prob."""
    return float(_logprobs(logprobs).mean())


def zlib_score(logprobs: ArrayLike, text: str, reduction: Literal["mean", "sum"] = "mean") -> float:
    """ZLib attack: −NLL / len(zlib.compress(text.encode("utf-8"))), NLL the mean (default) or
    summed answer-token NLL and ``text`` the answer text those tokens encode."""
    lp = _logprobs(logprobs)
    if reduction == "mean":
        nll = -lp.mean()
    elif reduction == "sum":
        nll = -lp.sum()
    else:
        raise ValueError(f"reduction must be 'mean' or 'sum'; got {reduction!r}")
    # zlib output always has a header, so the length is >= 8 even for empty text.
    return float(-nll / len(zlib.compress(text.encode("utf-8"))))


def mink_score(logprobs: ArrayLike, k: float = 0.4) -> float:
    """Min-K%: mean of the lowest ``max(1, floor(k·T))`` token log-probs (k = 0.4 → 40%)."""
    lp = _logprobs(logprobs)
    m = _n_lowest(lp.size, k)
    return float(np.sort(lp)[:m].mean())


def minkpp_score(
    logprobs: ArrayLike, mu: ArrayLike, sigma: ArrayLike, k: float = 0.4, sigma_floor: float = 1e-3
) -> float:
    """Min-K%++: z_t = (log p_t − μ_t) / max(σ_t, sigma_floor), then the mean of the lowest k.

    μ_t, σ_t: mean and std of log p over the model's next-token distribution at position t.
    """
    lp = _logprobs(logprobs)
    mu_ = _as_1d(mu, "mu")
    sg = _as_1d(sigma, "sigma")
    if not (lp.shape == mu_.shape == sg.shape):
        raise ValueError(f"logprobs, mu, sigma must have equal length; got {lp.size}, {mu_.size}, {sg.size}")
    if sigma_floor <= 0:
        raise ValueError(f"sigma_floor must be > 0; got {sigma_floor!r}")
    z = (lp - mu_) / np.maximum(sg, sigma_floor)
    m = _n_lowest(z.size, k)
    return float(np.sort(z)[:m].mean())


def reference_score(nll: float, nll_ref: float) -> float:
    """Reference attack: −(NLL − NLL_ref), the target model's mean NLL calibrated by a
    reference model's mean NLL on the same example."""
    if not (math.isfinite(nll) and math.isfinite(nll_ref)):
        raise ValueError(f"nll and nll_ref must be finite; got {nll!r}, {nll_ref!r}")
    return float(-(nll - nll_ref))


def token_stats_from_logits(
    logits: torch.Tensor | np.ndarray,
    targets: torch.Tensor | np.ndarray,
    chunk_size: int = 128,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-position (log p(target), μ, σ) from next-token logits, in float64.

    ``logits[..., t, :]`` must already be the distribution that predicts ``targets[..., t]``
    (shift causal-LM logits by one first). μ_t = Σ_v p_v log p_v and
    σ_t = sqrt(Σ_v p_v (log p_v)² − μ_t²) (clamped at 0 against round-off); vocabulary entries
    with p_v = 0 (logit −inf) contribute 0, never NaN. Positions are processed ``chunk_size`` at
    a time so the float64 copies stay small for large vocabularies. Returns tensors of shape
    ``targets.shape`` on the logits' device.
    """
    lg = logits if isinstance(logits, torch.Tensor) else torch.as_tensor(np.asarray(logits))
    tg = targets if isinstance(targets, torch.Tensor) else torch.as_tensor(np.asarray(targets))
    if lg.ndim < 2 or lg.shape[:-1] != tg.shape:
        raise ValueError(
            f"logits must have shape [..., T, V] and targets [..., T]; got {tuple(lg.shape)} and {tuple(tg.shape)}"
        )
    if tg.dtype.is_floating_point or tg.dtype == torch.bool:
        raise ValueError(f"targets must be integer token ids; got dtype {tg.dtype}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1; got {chunk_size!r}")
    vocab = lg.shape[-1]
    tg = tg.to(device=lg.device, dtype=torch.long)
    if tg.numel() and (int(tg.min()) < 0 or int(tg.max()) >= vocab):
        raise ValueError(f"targets must be token ids in [0, {vocab}); mask padding/ignore ids first")
    flat_logits = lg.detach().reshape(-1, vocab)
    flat_targets = tg.reshape(-1)
    outs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    for start in range(0, flat_targets.numel(), chunk_size):
        logp = torch.log_softmax(flat_logits[start : start + chunk_size].to(torch.float64), dim=-1)
        p = logp.exp()
        safe = torch.where(p > 0, logp, torch.zeros_like(logp))  # 0·(−inf) would be NaN
        mu = (p * safe).sum(dim=-1)
        second = (p * safe * safe).sum(dim=-1)
        sigma = (second - mu * mu).clamp(min=0.0).sqrt()
        target_lp = logp.gather(-1, flat_targets[start : start + chunk_size, None]).squeeze(-1)
        outs.append((target_lp, mu, sigma))
    if not outs:
        empty = torch.zeros(tg.shape, dtype=torch.float64, device=lg.device)
        return empty, empty.clone(), empty.clone()
    return tuple(torch.cat(parts).reshape(tg.shape) for parts in zip(*outs, strict=True))  # type: ignore[return-value]


def mia_scores(
    method: MiaMethod,
    logprobs: Sequence[ArrayLike],
    *,
    texts: Sequence[str] | None = None,
    mu: Sequence[ArrayLike] | None = None,
    sigma: Sequence[ArrayLike] | None = None,
    ref_logprobs: Sequence[ArrayLike] | None = None,
    k: float = 0.4,
) -> np.ndarray:
    """One score per example for ``method`` in MIA_METHODS (higher = more member-like).

    ``texts`` is required for "zlib", ``mu``/``sigma`` for "minkpp", and ``ref_logprobs`` (the
    reference model's answer-token log-probs) for "reference"; each aligned with ``logprobs``.
    """
    if method not in MIA_METHODS:
        raise ValueError(f"unknown MIA method {method!r}; valid: {', '.join(MIA_METHODS)}")
    needed = {"zlib": ("texts", texts), "minkpp": ("mu", mu), "reference": ("ref_logprobs", ref_logprobs)}
    extra = [needed[method]] if method in needed else []
    if method == "minkpp":
        extra.append(("sigma", sigma))
    for name, seq in extra:
        if seq is None:
            raise ValueError(f"method {method!r} needs {name}")
        if len(seq) != len(logprobs):
            raise ValueError(f"{name} has {len(seq)} entries but logprobs has {len(logprobs)}")
    out = np.empty(len(logprobs), dtype=np.float64)
    for i, lp in enumerate(logprobs):
        if method == "loss":
            out[i] = loss_score(lp)
        elif method == "zlib":
            out[i] = zlib_score(lp, texts[i])
        elif method == "mink":
            out[i] = mink_score(lp, k)
        elif method == "minkpp":
            out[i] = minkpp_score(lp, mu[i], sigma[i], k)
        else:
            out[i] = reference_score(-loss_score(lp), -loss_score(ref_logprobs[i]))
    return out


def mia_auc(member_scores: ArrayLike, nonmember_scores: ArrayLike) -> float:
    """ROC-AUC of separating members (label 1) from non-members (label 0) by score
    (higher = member). 0.5 = indistinguishable; ties count one half."""
    m = _as_1d(member_scores, "member_scores")
    nm = _as_1d(nonmember_scores, "nonmember_scores")
    labels = np.concatenate([np.ones(m.size), np.zeros(nm.size)])
    return float(roc_auc_score(labels, np.concatenate([m, nm])))


def privleak(auc: float, auc_retain_model: float) -> float:
    """PrivLeak (MUSE, Shi et al. 2024) in percent (``docs/reference.md#privleak``):

    ``((1 − AUC) − (1 − AUC_r)) / (1 − AUC_r) · 100``, with both AUCs from :func:`mia_auc`
    (members = forget set labelled 1) for the unlearned model and for a model trained without
    the forget set. 0 = as private as retraining; strongly negative (→ −100 when AUC → 1 with
    AUC_r = 0.5) = the forget set is still recognisable (under-unlearning); positive = the
    forget set looks *less* member-like than holdout data (over-unlearning).

    Raises ValueError when AUC_r = 1 (division by zero: the retain model itself separates the
    sets perfectly, so the normalisation is meaningless) or when an AUC is outside [0, 1].
    """
    for name, v in (("auc", auc), ("auc_retain_model", auc_retain_model)):
        try:
            ok = math.isfinite(float(v)) and 0.0 <= float(v) <= 1.0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"{name} must be a finite number in [0, 1]; got {v!r}")
    auc, auc_retain_model = float(auc), float(auc_retain_model)
    denom = 1.0 - auc_retain_model
    if denom <= 0.0:
        raise ValueError(
            "privleak is undefined when auc_retain_model == 1 (it divides by 1 − AUC_r = 0): the "
            "retain model already separates forget from holdout perfectly; check the data split"
        )
    return float(((1.0 - auc) - denom) / denom * 100.0)
