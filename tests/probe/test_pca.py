"""PCA similarity / shift / eigengap on data whose principal axes are known by construction."""

import numpy as np
import pytest
import torch

from forgetlab.probe import eigengap, pca_shift, pca_similarity, principal_cosines

STDS = np.array([5.0, 2.0, 1.0, 0.5, 0.3, 0.2])


def axis_data(seed: int, n: int = 400, stds=STDS, rotation: np.ndarray | None = None) -> np.ndarray:
    """Gaussian data with variances stds² along a known orthonormal basis (rows of ``rotation``)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, len(stds)))
    z = (z - z.mean(0)) / z.std(0, ddof=1)  # exact unit sample variance per axis
    z = np.linalg.qr(z)[0] * np.sqrt(n - 1)  # and exactly uncorrelated axes
    x = z * stds
    return x if rotation is None else x @ rotation


def test_identical_sign_flips_and_range():
    x = axis_data(0)
    for k in (1, 2, 3):
        assert pca_similarity(x, x, k) == pytest.approx(1.0, abs=1e-12)
        assert pca_similarity(x, -x, k) == pytest.approx(1.0, abs=1e-12)
    flipped = x.copy()
    flipped[:, 0] *= -1  # flip the coordinate along PC1 (the data's own sign of that PC)
    assert pca_similarity(x, flipped, 1) == pytest.approx(1.0, abs=1e-12)
    rng = np.random.default_rng(1)
    for _ in range(5):
        a, b = rng.normal(size=(30, 8)), rng.normal(size=(50, 8))
        for k in (1, 3):
            v = pca_similarity(a, b, k)
            assert 0.0 <= v <= 1.0


def test_rotation_by_90_degrees_in_top_plane():
    x = axis_data(2)
    rot = np.eye(6)
    rot[:2, :2] = [[0.0, 1.0], [-1.0, 0.0]]  # 90° in the (PC1, PC2) plane
    y = x @ rot
    assert pca_similarity(x, y, 1) == pytest.approx(0.0, abs=1e-10)
    assert pca_similarity(x, y, 2) == pytest.approx(1.0, abs=1e-10)  # same top-2 subspace
    # 30° rotation: |cos| of the top PCs is cos 30°
    t = np.pi / 6
    rot[:2, :2] = [[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]]
    assert pca_similarity(x, x @ rot, 1) == pytest.approx(np.cos(t), abs=1e-10)


def test_subspace_mean_squared_cosine():
    # Top-2 of x = span(e1, e2); top-2 of y = span(e1, e3) -> cosines (1, 0) -> mean cos² = 0.5.
    x = axis_data(3)
    perm = np.eye(6)[[0, 2, 1, 3, 4, 5]]  # swap axes 2 and 3
    y = x @ perm
    assert principal_cosines(x, y, 2) == pytest.approx([1.0, 0.0], abs=1e-10)
    assert pca_similarity(x, y, 2) == pytest.approx(0.5, abs=1e-10)


def test_wide_features_n_less_than_d():
    # Three strong directions in d = 200 plus faint noise; n = 30 (Gram path) vs n = 400 (d×d path).
    rng = np.random.default_rng(4)
    basis = np.linalg.qr(rng.normal(size=(200, 200)))[0][:, :3]

    def sample(n):
        return (rng.normal(size=(n, 3)) * [10.0, 4.0, 2.0]) @ basis.T + 1e-3 * rng.normal(size=(n, 200))

    wide, tall = sample(30), sample(400)
    assert pca_similarity(wide, torch.tensor(-wide), 2) == pytest.approx(1.0, abs=1e-10)
    assert pca_similarity(wide, tall, 3) == pytest.approx(1.0, abs=1e-5)
    assert pca_similarity(wide, tall, 1) > 0.95


def test_pca_shift_known_values():
    x = axis_data(6)
    assert pca_shift(x, x, 1) == pytest.approx(0.0, abs=1e-12)
    # Shift by 3 along PC1 (std 5) and 4 along PC2 (std 2): z = (0.6, 2.0).
    delta = np.zeros(6)
    delta[0], delta[1] = 3.0, 4.0
    assert pca_shift(x, x + delta, 1) == pytest.approx(0.6, rel=1e-10)
    assert pca_shift(x, x + delta, 2) == pytest.approx(np.hypot(0.6, 2.0), rel=1e-10)
    # A shift orthogonal to the top-2 PCs is invisible at k = 2.
    ortho = np.zeros(6)
    ortho[4] = 10.0
    assert pca_shift(x, x + ortho, 2) == pytest.approx(0.0, abs=1e-10)
    # Only centroids matter, and x_upd may have another n: half of x has centroid m != 0.
    m = x[:200].mean(0)
    assert pca_shift(x, x[:200], 2) == pytest.approx(np.linalg.norm(m[:2] / STDS[:2]), rel=1e-10)
    assert pca_shift(x, -x + delta, 1) == pytest.approx(0.6, rel=1e-10)  # x is centred


def test_eigengap():
    x = axis_data(7)
    assert eigengap(x, 1) == pytest.approx(25.0 - 4.0, rel=1e-10)
    assert eigengap(x, 2) == pytest.approx(4.0 - 1.0, rel=1e-10)
    assert eigengap(x, 1, relative=True) == pytest.approx(21.0 / 25.0, rel=1e-10)
    wide = np.random.default_rng(8).normal(size=(3, 4))  # covariance rank 2 after centring
    assert eigengap(wide, 3) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="relative gap"):
        eigengap(wide, 3, relative=True)


def test_errors():
    x = axis_data(9)
    with pytest.raises(ValueError, match="same feature dimension"):
        pca_similarity(x, x[:, :5])
    with pytest.raises(ValueError, match="k="):
        pca_similarity(x, x, 7)
    with pytest.raises(ValueError, match="zero variance"):
        pca_similarity(np.ones((5, 6)), x)
    with pytest.raises(ValueError, match="zero variance"):
        pca_shift(np.full((50, 6), 0.1), x)
    assert eigengap(np.full((50, 6), 0.1)) == 0.0
    with pytest.raises(ValueError, match="constant"):
        eigengap(np.full((50, 6), 0.1), relative=True)
    with pytest.raises(ValueError, match="rank"):
        pca_shift(x[:3], x, 3)  # 3 rows -> covariance rank 2
    with pytest.raises(ValueError, match="k must"):
        eigengap(x, 6)
