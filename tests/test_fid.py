"""FID (progan_jax.metrics.fid): the Fréchet distance, streamed statistics, the weights file.

The Inception port: test_inception.py and test_fid_reference.py; the weight converters:
test_convert_fid_weights.py.
"""

import numpy as np
import pytest

from progan_jax.metrics import fid


def test_frechet_distance_of_known_gaussians():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    var1, var2 = rng.uniform(0.5, 2, 5), rng.uniform(0.5, 2, 5)
    # Commuting (diagonal) covariances: sum((mu1-mu2)^2) + sum((sqrt(v1) - sqrt(v2))^2).
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
    got = fid.frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2))
    assert got == pytest.approx(expected, rel=1e-9)
    # Rotating both Gaussians together changes nothing.
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    rotated = fid.frechet_distance(
        q @ mu1, q @ np.diag(var1) @ q.T, q @ mu2, q @ np.diag(var2) @ q.T
    )
    assert rotated == pytest.approx(expected, rel=1e-6)
    assert fid.frechet_distance(mu1, np.diag(var1), mu1, np.diag(var1)) == pytest.approx(
        0, abs=1e-9
    )


def test_statistics_of_samples_approach_the_distribution():
    rng = np.random.default_rng(1)
    feats = rng.normal(loc=2.0, scale=3.0, size=(20000, 4))
    mu, sigma = fid.statistics(np.array_split(feats, 7))
    np.testing.assert_allclose(mu, 2.0, atol=0.1)
    np.testing.assert_allclose(sigma, 9.0 * np.eye(4), atol=0.3)


def test_streamed_statistics_equal_those_of_all_features_at_once():
    """Minibatches of float32 features (of unequal sizes, with a large common offset, as pool
    features have) give np.mean and np.cov of the whole set, as the previous code computed."""
    rng = np.random.default_rng(2)
    feats = (1e3 + rng.gamma(2.0, size=(1000, 6)) @ rng.normal(size=(6, 6))).astype(np.float32)
    batches = np.split(feats, [64, 128, 500, 999])
    mu, sigma = fid.statistics(iter(batches))
    all_at_once = feats.astype(np.float64)
    np.testing.assert_allclose(mu, all_at_once.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(all_at_once, rowvar=False), rtol=1e-9, atol=1e-12)


def test_missing_weights_say_how_to_get_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="convert_fid_weights"):
        fid.load_weights(tmp_path / "nowhere.npz")
