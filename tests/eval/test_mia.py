"""MIA scores: hand-computed values, direct vocabulary computations and AUC behaviour."""

import math
import zlib

import numpy as np
import pytest
import torch

from forgetlab.eval.mia import (
    loss_score,
    mia_auc,
    mia_scores,
    mink_score,
    minkpp_score,
    privleak,
    reference_score,
    token_stats_from_logits,
    zlib_score,
)

LP = [-1.0, -2.0, -3.0, -4.0, -5.0]


def test_loss_and_reference():
    assert loss_score(LP) == pytest.approx(-3.0)
    assert loss_score(torch.tensor(LP, dtype=torch.float32)) == pytest.approx(-3.0)
    assert reference_score(2.5, 1.0) == pytest.approx(-1.5)  # worse than the reference model
    assert reference_score(1.0, 2.5) == pytest.approx(1.5)


def test_zlib_formula():
    text = "Alice was born in Paris. Alice was born in Paris."
    length = len(zlib.compress(text.encode("utf-8")))
    assert length < len(text)  # repetitive text compresses
    assert zlib_score(LP, text) == pytest.approx(-3.0 / length)  # mean NLL = 3
    assert zlib_score(LP, text, reduction="sum") == pytest.approx(-15.0 / length)
    assert math.isfinite(zlib_score([-0.5], ""))  # empty text: zlib header, no division by zero
    with pytest.raises(ValueError, match="reduction"):
        zlib_score(LP, text, reduction="max")


def test_mink_hand_example():
    assert mink_score(LP, k=0.4) == pytest.approx(-4.5)  # floor(0.4·5) = 2 lowest: -5, -4
    assert mink_score(LP, k=0.2) == pytest.approx(-5.0)
    assert mink_score(LP, k=1.0) == pytest.approx(-3.0)
    assert mink_score([-0.7], k=0.4) == pytest.approx(-0.7)  # at least one token
    assert mink_score(np.arange(100) * -0.01, k=0.29) == pytest.approx(np.mean(np.arange(71, 100) * -0.01))
    with pytest.raises(ValueError, match="k must"):
        mink_score(LP, k=0.0)


def test_minkpp_hand_example():
    mu = [-1.0, -1.0, -2.0, -1.0, -1.0]
    sigma = [1.0, 0.5, 1.0, 2.0, 0.0]  # last: floored to 1e-3
    # z = [0, -2, -1, -1.5, -4000]; lowest 2: -4000, -2
    assert minkpp_score(LP, mu, sigma, k=0.4) == pytest.approx((-4000.0 - 2.0) / 2)
    assert minkpp_score(LP, mu, sigma, k=0.4, sigma_floor=0.5) == pytest.approx((-8.0 - 2.0) / 2)
    with pytest.raises(ValueError, match="equal length"):
        minkpp_score(LP, mu[:4], sigma)


def test_token_stats_match_direct_vocabulary_sums():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 7)) * 3
    logits[2, 4] = -np.inf  # a masked vocabulary entry must not produce NaN
    targets = np.array([0, 3, 6, 1, 2])
    lp, mu, sigma = token_stats_from_logits(torch.tensor(logits), torch.tensor(targets))
    for t in range(5):
        z = [math.exp(v) if math.isfinite(v) else 0.0 for v in logits[t]]
        total = sum(z)
        p = [v / total for v in z]
        logp = [math.log(v) if v > 0 else None for v in p]
        m = sum(pv * lv for pv, lv in zip(p, logp, strict=True) if pv > 0)
        var = sum(pv * (lv - m) ** 2 for pv, lv in zip(p, logp, strict=True) if pv > 0)
        assert lp[t].item() == pytest.approx(logp[targets[t]], rel=1e-12)
        assert mu[t].item() == pytest.approx(m, rel=1e-12)
        assert sigma[t].item() == pytest.approx(math.sqrt(var), rel=1e-10)
    assert lp.dtype == torch.float64 and lp.shape == (5,)


def test_token_stats_batched_chunked_and_degenerate():
    rng = np.random.default_rng(1)
    logits = torch.tensor(rng.normal(size=(2, 6, 11)))
    targets = torch.tensor(rng.integers(0, 11, size=(2, 6)))
    full = token_stats_from_logits(logits, targets, chunk_size=1000)
    chunked = token_stats_from_logits(logits, targets, chunk_size=5)
    for a, b in zip(full, chunked, strict=True):
        assert a.shape == (2, 6)
        torch.testing.assert_close(a, b)
    one_hot = torch.full((1, 4), -torch.inf)
    one_hot[0, 2] = 0.0  # deterministic next token
    lp, mu, sigma = token_stats_from_logits(one_hot, torch.tensor([2]))
    assert lp.item() == 0.0 and mu.item() == 0.0 and sigma.item() == 0.0
    with pytest.raises(ValueError, match="token ids"):
        token_stats_from_logits(logits, torch.full((2, 6), -100))
    with pytest.raises(ValueError, match="shape"):
        token_stats_from_logits(logits, targets[:, :5])


def test_auc_identical_and_separated():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=4000), rng.normal(size=4000)
    assert abs(mia_auc(a, b) - 0.5) < 0.05
    assert mia_auc(a + 5, b) > 0.99
    assert mia_auc(a - 5, b) < 0.01  # members scoring lower -> AUC near 0
    assert mia_auc([2.0, 3.0], [0.0, 1.0]) == 1.0
    assert mia_auc([1.0], [1.0]) == 0.5  # ties count one half


def test_mia_scores_end_to_end_members_detected():
    # Members: confident answers (high log-probs); non-members: less confident.
    rng = np.random.default_rng(3)
    members = [-np.abs(rng.normal(0.2, 0.1, size=rng.integers(5, 20))) for _ in range(200)]
    nonmembers = [-np.abs(rng.normal(1.5, 0.5, size=rng.integers(5, 20))) for _ in range(200)]
    for method in ("loss", "mink"):
        auc = mia_auc(mia_scores(method, members), mia_scores(method, nonmembers))
        assert auc > 0.95
    texts = ["some answer text"] * 200
    s = mia_scores("zlib", members, texts=texts)
    assert s[0] == pytest.approx(zlib_score(members[0], texts[0]))
    mu = [np.full(len(x), -1.0) for x in members]
    sigma = [np.ones(len(x)) for x in members]
    s = mia_scores("minkpp", members, mu=mu, sigma=sigma)
    assert s[1] == pytest.approx(minkpp_score(members[1], mu[1], sigma[1]))
    s = mia_scores("reference", members, ref_logprobs=nonmembers)
    assert s[2] == pytest.approx(-((-members[2].mean()) - (-nonmembers[2].mean())))
    with pytest.raises(ValueError, match="needs texts"):
        mia_scores("zlib", members)
    with pytest.raises(ValueError, match="unknown MIA method"):
        mia_scores("gradnorm", members)


def test_input_validation_no_nan():
    with pytest.raises(ValueError, match="empty"):
        loss_score([])
    with pytest.raises(ValueError, match="NaN"):
        mink_score([-1.0, float("nan")])
    with pytest.raises(ValueError, match="NLLs"):
        loss_score([1.2, 0.5])  # positive: NLLs, not log-probs
    with pytest.raises(ValueError, match="1-D"):
        loss_score(np.zeros((2, 2)) - 1)
    with pytest.raises(ValueError, match="empty"):
        mia_auc([], [0.1])


def test_privleak():
    assert privleak(0.5, 0.5) == pytest.approx(0.0)
    assert privleak(1.0, 0.5) == pytest.approx(-100.0)  # still fully recognisable
    assert privleak(0.3, 0.5) == pytest.approx(40.0)  # ((0.7 - 0.5) / 0.5) · 100: over-unlearning
    assert privleak(0.75, 0.6) == pytest.approx(((0.25 - 0.4) / 0.4) * 100)
    assert privleak(np.float32(0.5), np.float64(0.5)) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="auc_retain_model == 1"):
        privleak(0.9, 1.0)
    with pytest.raises(ValueError, match="finite"):
        privleak(float("nan"), 0.5)
    with pytest.raises(ValueError, match="finite"):
        privleak(1.2, 0.5)
