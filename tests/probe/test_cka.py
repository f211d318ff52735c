"""Linear CKA against naive, formula-by-formula reference implementations written here."""

import itertools

import numpy as np
import pytest
import torch

from forgetlab.probe import StreamingCKA, hsic, linear_cka, minibatch_cka

# ---- naive references (numpy, no centring tricks, straight from the definitions) ----


def naive_hsic0(k: np.ndarray, l_: np.ndarray) -> float:
    n = k.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    return float(np.trace(k @ h @ l_ @ h)) / (n - 1) ** 2


def naive_hsic1(k: np.ndarray, l_: np.ndarray) -> float:
    """Song et al. 2007 unbiased HSIC, diagonal zeroed, on the raw (uncentred) Gram matrices."""
    n = k.shape[0]
    kt, lt = k.copy(), l_.copy()
    np.fill_diagonal(kt, 0.0)
    np.fill_diagonal(lt, 0.0)
    one = np.ones(n)
    term1 = np.trace(kt @ lt)
    term2 = (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
    term3 = 2.0 / (n - 2) * (one @ kt @ lt @ one)
    return float(term1 + term2 - term3) / (n * (n - 3))


def ustat_hsic(k: np.ndarray, l_: np.ndarray) -> float:
    """HSIC = E[k_ij l_ij] + E[k_ij l_qr] − 2 E[k_ij l_iq] as a U-statistic over distinct 4-tuples."""
    n = k.shape[0]
    total, count = 0.0, 0
    for i, j, q, r in itertools.permutations(range(n), 4):
        total += k[i, j] * l_[i, j] + k[i, j] * l_[q, r] - 2 * k[i, j] * l_[i, q]
        count += 1
    return total / count


def naive_cka(x: np.ndarray, y: np.ndarray, debiased: bool) -> float:
    k, l_ = x @ x.T, y @ y.T
    f = naive_hsic1 if debiased else naive_hsic0
    return f(k, l_) / np.sqrt(f(k, k) * f(l_, l_))


def correlated(rng, n, dx, dy, noise=1.0):
    x = rng.normal(size=(n, dx)) + rng.normal(size=dx) * 3  # non-zero mean on purpose
    y = np.tanh(x @ rng.normal(size=(dx, dy)) / np.sqrt(dx)) + noise * rng.normal(size=(n, dy))
    return x, y


# ---- tests ----


@pytest.mark.parametrize("debiased", [True, False])
@pytest.mark.parametrize(("n", "dx", "dy"), [(12, 40, 30), (60, 7, 5), (25, 25, 9), (9, 3, 50)])
def test_matches_naive_formula_both_forms(debiased, n, dx, dy):
    rng = np.random.default_rng(n * 1000 + dx)
    x, y = correlated(rng, n, dx, dy)
    expected = naive_cka(x, y, debiased)
    for form in ("auto", "feature", "gram"):
        assert linear_cka(x, y, debiased=debiased, form=form) == pytest.approx(expected, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("debiased", [True, False])
def test_hsic_value_matches_naive(debiased):
    rng = np.random.default_rng(1)
    x, y = correlated(rng, 15, 6, 20)
    k, l_ = x @ x.T, y @ y.T
    expected = naive_hsic1(k, l_) if debiased else naive_hsic0(k, l_)
    for form in ("feature", "gram"):
        assert hsic(x, y, debiased=debiased, form=form) == pytest.approx(expected, rel=1e-10)


def test_unbiased_hsic_is_the_u_statistic():
    # Independent derivation of Song et al.'s closed form: brute-force U-statistic, n = 7.
    rng = np.random.default_rng(2)
    x, y = correlated(rng, 7, 3, 4)
    expected = ustat_hsic(x @ x.T, y @ y.T)
    assert hsic(x, y, debiased=True, form="gram") == pytest.approx(expected, rel=1e-9)
    assert hsic(x, y, debiased=True, form="feature") == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("debiased", [True, False])
def test_invariances_and_self_similarity(debiased):
    rng = np.random.default_rng(3)
    x, y = correlated(rng, 50, 10, 8)
    base = linear_cka(x, y, debiased=debiased)
    q, _ = np.linalg.qr(rng.normal(size=(10, 10)))
    assert linear_cka(x @ q, y, debiased=debiased) == pytest.approx(base, rel=1e-10)
    assert linear_cka(3.7 * x, 0.02 * y, debiased=debiased) == pytest.approx(base, rel=1e-10)
    assert linear_cka(x + 100.0, y - 7.0, debiased=debiased) == pytest.approx(base, rel=1e-8)
    assert linear_cka(y, x, debiased=debiased) == pytest.approx(base, rel=1e-12)
    assert linear_cka(x, x, debiased=debiased) == pytest.approx(1.0, abs=1e-12)
    wide = rng.normal(size=(10, 300))  # d > n: Gram form
    assert linear_cka(wide, wide, debiased=debiased) == pytest.approx(1.0, abs=1e-12)


def test_torch_and_numpy_inputs_agree_and_return_float():
    rng = np.random.default_rng(4)
    x, y = correlated(rng, 20, 5, 6)
    a = linear_cka(x, y)
    b = linear_cka(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.bfloat16))
    assert isinstance(a, float) and isinstance(b, float)
    assert b == pytest.approx(a, abs=2e-2)  # bf16 input rounding only
    assert linear_cka(torch.tensor(x), torch.tensor(y)) == pytest.approx(a, rel=1e-12)


def test_biased_cka_inflated_when_n_much_smaller_than_d():
    """docs/reference.md#cka: independent data, n = 40, d = 3584: biased CKA ≈ 0.99, debiased ≈ 0.

    Debiased CKA has a sampling sd of ≈ 0.025 here, so the test averages 5 seeds.
    """
    debiased, biased = [], []
    for seed in range(5):
        rng = np.random.default_rng(seed)
        x, y = rng.normal(size=(40, 3584)), rng.normal(size=(40, 3584))
        debiased.append(linear_cka(x, y, debiased=True))
        biased.append(linear_cka(x, y, debiased=False))
    assert abs(np.mean(debiased)) < 0.05
    assert max(abs(v) for v in debiased) < 0.15
    assert min(biased) > 0.9


def test_errors_never_nan():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(6, 3))
    with pytest.raises(ValueError, match="n=3"):
        linear_cka(x[:3], x[:3], debiased=True)
    assert linear_cka(x[:3], x[:3] * 2, debiased=False) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="zero variance"):
        linear_cka(np.ones((6, 3)), x)
    with pytest.raises(ValueError, match="zero variance"):
        linear_cka(x, np.zeros((6, 2)), debiased=False)
    with pytest.raises(ValueError, match="zero variance"):
        linear_cka(np.full((7, 3), 0.1), rng.normal(size=(7, 2)))  # centring leaves round-off only
    with pytest.raises(ValueError, match="same number of rows"):
        linear_cka(x, x[:5])
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        linear_cka(bad, x)
    with pytest.raises(ValueError, match="shape"):
        linear_cka(x[:, 0], x)
    with pytest.raises(ValueError, match="form"):
        linear_cka(x, x, form="fast")


def test_streaming_single_batch_equals_full_debiased():
    rng = np.random.default_rng(6)
    x, y = correlated(rng, 30, 12, 4)
    s = StreamingCKA()
    s.update(x, y)
    assert s.compute() == pytest.approx(linear_cka(x, y, debiased=True), rel=1e-12)


def test_streaming_is_exactly_the_per_batch_average_definition():
    rng = np.random.default_rng(7)
    x, y = correlated(rng, 90, 6, 40)
    batches = [(x[i : i + 30], y[i : i + 30]) for i in range(0, 90, 30)]
    hxy = np.mean([naive_hsic1(a @ a.T, b @ b.T) for a, b in batches])
    hxx = np.mean([naive_hsic1(a @ a.T, a @ a.T) for a, _ in batches])
    hyy = np.mean([naive_hsic1(b @ b.T, b @ b.T) for _, b in batches])
    expected = hxy / np.sqrt(hxx * hyy)
    s = StreamingCKA()
    for a, b in batches:
        s.update(torch.tensor(a), b)
    assert s.n_batches == 3 and s.n_samples == 90
    assert s.compute() == pytest.approx(expected, rel=1e-10)
    xs, ys = [a for a, _ in batches], [b for _, b in batches]
    assert minibatch_cka(xs, ys) == pytest.approx(expected, rel=1e-10)


def test_minibatch_close_to_full_for_large_n():
    rng = np.random.default_rng(8)
    x, y = correlated(rng, 4000, 16, 12, noise=0.5)
    full = linear_cka(x, y, debiased=True)
    mb = minibatch_cka(np.split(x, 20), np.split(y, 20))
    assert 0.2 < full < 0.95  # a non-trivial similarity
    assert mb == pytest.approx(full, abs=0.02)


def test_streaming_errors():
    s = StreamingCKA()
    with pytest.raises(ValueError, match="before any update"):
        s.compute()
    with pytest.raises(ValueError, match="n=3"):
        s.update(np.eye(3), np.eye(3))
    with pytest.raises(ValueError):
        minibatch_cka([np.eye(4)], [np.eye(4), np.eye(4)])
    s.update(np.ones((5, 3)), np.eye(5))  # constant batch: self-HSIC 0
    with pytest.raises(ValueError, match="degenerate"):
        s.compute()
