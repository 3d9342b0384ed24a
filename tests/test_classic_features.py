"""The SIFT + Fisher vector pipeline (Perronnin, Sánchez & Mensink 2010; Sánchez & Perronnin 2011):
the Fisher vector of known descriptors under a known GMM against its closed-form gradients written
out term by term (and against scikit-image's implementation); the improved Fisher kernel's power and
L2 normalisation; the dense grid and the spatial pyramid; dense SIFT's shape; and the whole pipeline
learning the built-in data far better than chance."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from alexnet.experiments import classic_features as cf

pytest.importorskip("cv2")
pytest.importorskip("sklearn")


def _gmm(rng: np.random.Generator, k: int, d: int):  # a GaussianMixture with set parameters
    from sklearn.mixture import GaussianMixture

    g = GaussianMixture(n_components=k, covariance_type="diag")
    w = rng.uniform(0.5, 2.0, k)
    g.weights_ = w / w.sum()
    g.means_ = rng.normal(0, 1, (k, d))
    g.covariances_ = rng.uniform(0.3, 2.0, (k, d))
    g.precisions_cholesky_ = 1 / np.sqrt(g.covariances_)
    return g


def _closed_form(x: np.ndarray, w: np.ndarray, mu: np.ndarray, var: np.ndarray) -> np.ndarray:
    """Perronnin et al. 2010, eqs. 2–3, one descriptor, Gaussian and dimension at a time; the
    posteriors from Bayes' rule with the diagonal Gaussian densities."""
    t, d = x.shape
    k = len(w)
    dens = np.array([[w[j] * np.prod(np.exp(-0.5 * (x[i] - mu[j]) ** 2 / var[j]) / np.sqrt(2 * math.pi * var[j]))
                      for j in range(k)] for i in range(t)])
    gamma = dens / dens.sum(1, keepdims=True)
    g_mu = np.zeros((k, d))
    g_sigma = np.zeros((k, d))
    for j in range(k):
        for i in range(t):
            for e in range(d):
                u = (x[i, e] - mu[j, e]) / math.sqrt(var[j, e])
                g_mu[j, e] += gamma[i, j] * u
                g_sigma[j, e] += gamma[i, j] * (u * u - 1)
        g_mu[j] /= t * math.sqrt(w[j])
        g_sigma[j] /= t * math.sqrt(2 * w[j])
    return np.concatenate([g_mu.ravel(), g_sigma.ravel()])


def test_fisher_vector_is_the_closed_form_gradient() -> None:
    rng = np.random.default_rng(0)
    k, d, t = 3, 4, 7
    g = _gmm(rng, k, d)
    x = rng.normal(0, 1.2, (2, t, d))  # two images of 7 descriptors
    gamma = g.predict_proba(x.reshape(-1, d)).reshape(2, t, k)
    fv = cf.fisher_vectors(x, g.weights_, g.means_, g.covariances_, gamma)
    assert fv.shape == (2, 2 * k * d)
    for i in range(2):
        np.testing.assert_allclose(fv[i], _closed_form(x[i], g.weights_, g.means_, g.covariances_), rtol=1e-9, atol=1e-12)


def test_fisher_vector_agrees_with_scikit_image() -> None:
    """scikit-image's ``fisher_vector`` (unnormalised) holds the weights' gradient first, then the
    same means' gradient, then the variances' with the opposite sign."""
    from skimage.feature import fisher_vector

    rng = np.random.default_rng(1)
    k, d, t = 4, 3, 25
    g = _gmm(rng, k, d)
    x = rng.normal(0, 1, (t, d))
    ours = cf.fisher_vectors(x[None], g.weights_, g.means_, g.covariances_, g.predict_proba(x)[None])[0]
    theirs = fisher_vector(x, g, improved=False)
    np.testing.assert_allclose(ours[:k * d], theirs[k:k + k * d], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ours[k * d:], -theirs[k + k * d:], rtol=1e-9, atol=1e-12)


def test_power_and_l2_normalisation() -> None:
    z = np.array([[4.0, -9.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.25, 0.0, 0.0, -1.0]])
    out = cf.power_l2(z)
    np.testing.assert_allclose(out[0], np.array([2.0, -3.0, 0.0, 0.0]) / math.sqrt(13))  # signed square root, then L2
    assert (out[1] == 0).all()  # an empty row stays empty, no NaN
    np.testing.assert_allclose(np.linalg.norm(out[[0, 2]], axis=1), 1.0)
    np.testing.assert_allclose(cf.power_l2(z, alpha=1.0)[2], np.array([0.25, 0, 0, -1]) / math.sqrt(1.0625))


def test_dense_grid_and_pyramid_strips() -> None:
    grid = cf.sift_grid(32, 32, cf.SMALL_PATCHES, cf.SMALL_STEP)
    assert len(grid) == 49 + 36 + 25 + 9  # patches 8, 12, 16, 24 every 4 px
    assert grid[:, :2].min() >= 3.5 and grid[:, :2].max() <= 27.5  # every window inside the image
    masks = cf.strips(grid, 32)
    assert len(masks) == 4 and masks[0].all()  # 1×1, then three strips
    np.testing.assert_array_equal(masks[1].astype(int) + masks[2] + masks[3], 1)  # the strips partition the grid
    top = grid[masks[1], 1]
    assert top.max() < 32 / 3 <= grid[masks[2], 1].min()
    assert cf.sift_layout(256, 256) == (cf.LARGE_PATCHES, cf.LARGE_STEP)
    with pytest.raises(ValueError, match="no SIFT patch"):
        cf.sift_grid(6, 6, (8,), 4)


def test_dense_sift_describes_gradients() -> None:
    yy, xx = np.mgrid[0:32, 0:32]
    ramp = np.repeat((xx * 8).astype(np.uint8)[None, ..., None], 3, axis=3)  # a horizontal gradient
    flat = np.full((1, 32, 32, 3), 128, np.uint8)
    desc, grid = cf.dense_sift(np.concatenate([ramp, flat]))
    assert desc.shape == (2, len(grid), 128) and desc.dtype == np.uint8
    assert desc[0].sum() > 0 and desc[1].sum() == 0  # a constant image has no gradient to histogram
    np.testing.assert_array_equal(desc, cf.dense_sift(np.concatenate([ramp, flat]))[0])  # deterministic


def test_fisher_encoder_dimensions_and_norms() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (12, 32, 32, 3), dtype=np.uint8)
    desc, grid = cf.dense_sift(images)
    enc = cf.FisherEncoder(grid, 32, pca_dims=8, gaussians=4).fit(desc, seed=0)
    fv = enc.transform(desc, batch=5)
    assert fv.shape == (12, 4 * 2 * 4 * 8) == (12, enc.dims)
    per_region = fv.reshape(12, 4, -1)
    np.testing.assert_allclose(np.linalg.norm(per_region, axis=2), 1.0, rtol=1e-5)  # each region L2-normalised


def test_sift_fisher_svm_learns_the_built_in_data(tmp_path: Path) -> None:
    """Ten synthetic classes, 60 training images each: the whole pipeline (PCA, GMM, FV, SGD SVM) must
    beat chance (90% error) by at least 25 points (it measured 58.5% at this commit's constants; HOG +
    SVM is near 70% on this data)."""
    from alexnet.data.sources import synthetic
    from alexnet.experiments.baselines import read_images

    root = synthetic.build(tmp_path / "syn", size=36, train_per_class=60, val_per_class=20)
    xtr, ytr = read_images(root, "train", np.arange(600))
    xva, yva = read_images(root, "val", np.arange(200))
    dtr, grid = cf.dense_sift(xtr)
    dva, _ = cf.dense_sift(xva)
    enc = cf.FisherEncoder(grid, 36).fit(dtr, seed=0)
    svm = cf.sgd_svm(enc.transform(dtr), ytr, 1e-4, seed=0)
    err = float(np.mean(cf.ranked(svm, enc.transform(dva))[:, 0] != yva))
    assert err < 0.65, err
