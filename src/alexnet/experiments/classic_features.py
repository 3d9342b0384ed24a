"""The pre-2012 image classifier the paper's Tables 1–2 compare against: dense SIFT → PCA → Fisher
vectors of a diagonal-covariance GMM → signed square root and L2 normalisation → spatial pyramid →
one-vs-rest linear SVMs trained by SGD. This is the "SIFT + FVs" pipeline of Perronnin, Sánchez &
Mensink (ECCV 2010, "Improving the Fisher kernel for large-scale image classification", the improved
Fisher kernel) and Sánchez & Perronnin (CVPR 2011, "High-dimensional signature compression for
large-scale image classification"), the ILSVRC-2011 winner and the 2012 runner-up.

The libraries do the heavy parts: OpenCV's SIFT computes the descriptors (on a dense grid of
keypoints we place), scikit-learn's PCA and ``GaussianMixture`` fit the projection and the GMM (its
EM), scikit-learn's ``SGDClassifier`` trains the SVMs. What is left here is the Fisher vector's
closed form (vectorised over images; ``tests/test_classic_features.py`` checks it against the
formula written out and against scikit-image's ``fisher_vector``).

What differs from the papers, and why: the images here are 28–36 pixels a side, not ~300, so the
patches, the grid step, the PCA dimension and the number of Gaussians are scaled down (each constant
below says how); Fashion-MNIST is grey, so the papers' colour descriptors are left out; and with at
most 60,000 training images the signatures fit in memory uncompressed (the CVPR 2011 paper's product
quantisation is there to fit 1.2 million of them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

# The descriptor: OpenCV's SIFT is 4×4 cells × 8 orientations = 128 dimensions, as Lowe's and the
# papers'. A keypoint of OpenCV "size" s spans 4 cells of 1.5·s pixels (``calcSIFTDescriptor``:
# cell width SIFT_DESCR_SCL_FCTR · size / 2 with SIFT_DESCR_SCL_FCTR = 3), so a patch of side P
# pixels is a keypoint of size P / 6.
SIFT_WINDOW_PER_SIZE = 6.0
# Sánchez & Perronnin (2011): 24×24 patches every 4 pixels at 5 scales (a factor √2 apart) on images
# of about 100k pixels. On 28–36 pixel images a 24-pixel patch is nearly the whole image, so the
# scales go down by √2 steps from there to 8 pixels (a 2×2-pixel cell, the smallest that still
# holds a gradient histogram): four scales, every 4 pixels, as the paper's step. 119 descriptors on
# a 32×32 image (49 + 36 + 25 + 9), 1 + 9 + 16 + 36 more on 36×36.
SMALL_PATCHES = (8, 12, 16, 24)
SMALL_STEP = 4
# Large (≥ 224-pixel) images: the paper's five scales, every 8 pixels (half the paper's density, to
# keep a CPU run's descriptors in memory).
LARGE_PATCHES = (24, 34, 48, 68, 96)
LARGE_STEP = 8
# PCA: both papers reduce SIFT to 64 dimensions. Patches of 8–24 pixels hold less detail than the
# papers' 24–96 (their 128 SIFT dimensions are more correlated), so 32 dimensions here; PCA
# decorrelates them so that a diagonal GMM fits (Perronnin et al. 2010, §2).
PCA_DIMS = 32
# Gaussians: 256 in the ECCV 2010 paper, 256–1024 in CVPR 2011, with thousands of descriptors per
# image. With ~120 descriptors per image most of 256 Gaussians would get no posterior mass in a
# given image (and its FV blocks would be zero); 32 keeps about 4 descriptors per Gaussian.
GAUSSIANS = 32
# Descriptors (a random sample of the training images') that PCA and the GMM are fitted on; the
# papers fit them on a sample too (1M descriptors); 60,000 × 32 dimensions keep EM to seconds.
FIT_DESCRIPTORS = 60_000
# The improved Fisher kernel (Perronnin et al. 2010, §3.1–3.2): power normalisation z ← sign(z)|z|^α
# with α = 0.5 ("signed square root"), then L2 normalisation.
POWER = 0.5
# Spatial pyramid: the whole image and three horizontal strips (top, middle, bottom), "1×1 + 3×1"
# (Sánchez & Perronnin 2011; Perronnin et al. 2010, §3.3). Each region's FV is normalised on its own,
# then the four are concatenated: 4 × 2 × 32 × 32 = 8,192 dimensions.
PYRAMID_STRIPS = (1, 3)
# The SVMs: one-vs-rest, hinge loss, trained by SGD (Sánchez & Perronnin 2011, §4: SGD "for its
# scalability"); the regularisation λ is chosen on held-out data (the paper: by cross-validation).
SGD_ALPHAS_QUICK = (1e-5, 1e-4, 1e-3)
SGD_ALPHAS_FULL = (1e-6, 1e-5, 1e-4, 1e-3)
# Passes over the training set: the papers' SGD runs a few epochs over 1.2M images; 15 here.
SGD_MAX_EPOCHS = 15


def sift_layout(height: int, width: int) -> tuple[tuple[int, ...], int]:
    """The patch sides and the grid step for images of this size (see the constants above)."""
    if min(height, width) >= 224:
        return LARGE_PATCHES, LARGE_STEP
    return tuple(p for p in SMALL_PATCHES if p <= min(height, width)), SMALL_STEP


def sift_grid(height: int, width: int, patches: Sequence[int], step: int) -> np.ndarray:
    """M×3 float array of (x, y, patch side): every patch of each side whose window lies inside the
    image, top-left corners every ``step`` pixels; (x, y) is the window's centre in OpenCV's pixel
    coordinates (pixel i's centre at i)."""
    rows = []
    for p in patches:
        for top in range(0, height - p + 1, step):
            for left in range(0, width - p + 1, step):
                rows.append((left + (p - 1) / 2, top + (p - 1) / 2, p))
    if not rows:
        raise ValueError(f"no SIFT patch of sides {list(patches)} fits a {height}×{width} image")
    return np.asarray(rows, dtype=np.float64)


def dense_sift(images: np.ndarray, patches: Sequence[int] | None = None, step: int | None = None,
               ) -> tuple[np.ndarray, np.ndarray]:
    """Dense SIFT of uint8 N×H×W×3 (or N×H×W) images: N×M×128 uint8 descriptors (OpenCV's SIFT at
    the keypoints of :func:`sift_grid`, upright: orientation 0, as dense SIFT is in the papers) and
    the M×3 grid. Colour images are converted to grey first."""
    import cv2  # optional (the baselines extra), and slow to import

    h, w = images.shape[1:3]
    if patches is None or step is None:
        patches, step = sift_layout(h, w)
    grid = sift_grid(h, w, patches, step)
    keypoints = [cv2.KeyPoint(float(x), float(y), float(p) / SIFT_WINDOW_PER_SIZE, 0.0) for x, y, p in grid]
    # OpenCV's defaults (Lowe's: 3 layers per octave, σ 1.6; the thresholds only affect detection,
    # unused here), uint8 descriptors (a quarter of float32's memory).
    sift = cv2.SIFT_create(0, 3, 0.04, 10, 1.6, cv2.CV_8U)
    out = np.empty((len(images), len(keypoints), 128), np.uint8)
    for i, im in enumerate(images):
        grey = cv2.cvtColor(np.ascontiguousarray(im), cv2.COLOR_RGB2GRAY) if im.ndim == 3 else np.ascontiguousarray(im)
        kept, desc = sift.compute(grey, keypoints)
        if desc is None or len(kept) != len(keypoints):  # OpenCV drops none of the given keypoints today
            raise RuntimeError(f"OpenCV's SIFT returned {0 if desc is None else len(kept)} of {len(keypoints)} descriptors")
        out[i] = desc
    return out, grid


def strips(grid: np.ndarray, height: int, levels: Sequence[int] = PYRAMID_STRIPS) -> list[np.ndarray]:
    """The spatial pyramid's regions as boolean masks over the grid's descriptors: for each level L,
    L horizontal strips of equal height, a descriptor belonging to the strip holding its centre."""
    y = grid[:, 1]
    masks = []
    for n in levels:
        band = np.minimum((y * n / height).astype(int), n - 1)
        masks.extend(band == i for i in range(n))
    return masks


def fisher_vectors(x: np.ndarray, weights: np.ndarray, means: np.ndarray, variances: np.ndarray,
                   posteriors: np.ndarray) -> np.ndarray:
    """The Fisher vectors of N images of T descriptors each, ``x`` N×T×D, under a diagonal GMM
    (``weights`` K, ``means`` and ``variances`` K×D) with the descriptors' posteriors γ (N×T×K):
    N×2KD, the gradients with respect to the means and then the variances, each normalised by the
    diagonal closed-form Fisher information (Perronnin et al. 2010, eqs. 2–3; no power or L2
    normalisation here):

        G_μ,k = 1 / (T √w_k) Σ_t γ_t(k) (x_t − μ_k) / σ_k
        G_σ,k = 1 / (T √(2 w_k)) Σ_t γ_t(k) [ (x_t − μ_k)² / σ_k² − 1 ]
    """
    x = x.astype(np.float64, copy=False)
    t = x.shape[1]
    s0 = posteriors.sum(1)  # N×K: Σ_t γ_t(k)
    gt = posteriors.transpose(0, 2, 1)
    s1 = gt @ x  # N×K×D: Σ_t γ_t(k) x_t
    s2 = gt @ (x * x)  # Σ_t γ_t(k) x_t²
    sigma = np.sqrt(variances)
    g_mu = (s1 - s0[..., None] * means) / (t * np.sqrt(weights)[:, None] * sigma)
    # Σ γ (x − μ)² = S2 − 2μ S1 + μ² S0
    sq = s2 - 2 * means * s1 + means ** 2 * s0[..., None]
    g_sigma = (sq / variances - s0[..., None]) / (t * np.sqrt(2 * weights)[:, None])
    return np.concatenate([g_mu.reshape(len(x), -1), g_sigma.reshape(len(x), -1)], axis=1)


def power_l2(z: np.ndarray, alpha: float = POWER) -> np.ndarray:
    """The improved Fisher kernel's normalisation of each row: sign(z)|z|^α, then unit L2 norm (a
    zero row stays zero)."""
    z = np.sign(z) * np.abs(z) ** alpha
    norm = np.linalg.norm(z, axis=1, keepdims=True)
    return z / np.where(norm > 0, norm, 1.0)


@dataclass
class FisherEncoder:
    """PCA and a diagonal GMM fitted on training descriptors, then :meth:`transform`: each image's
    spatial-pyramid Fisher vector, power- and L2-normalised region by region."""

    grid: np.ndarray  # M×3, from dense_sift
    height: int
    pca_dims: int = PCA_DIMS
    gaussians: int = GAUSSIANS
    fit_descriptors: int = FIT_DESCRIPTORS
    alpha: float = POWER
    levels: tuple[int, ...] = PYRAMID_STRIPS
    pca: Any = field(default=None, repr=False)
    gmm: Any = field(default=None, repr=False)

    def fit(self, descriptors: np.ndarray, seed: int = 0) -> "FisherEncoder":
        """``descriptors``: N×M×128 of the training images; PCA and the GMM (scikit-learn's EM, k-means
        initialisation) on a random sample of at most ``fit_descriptors`` of them."""
        from sklearn.decomposition import PCA
        from sklearn.mixture import GaussianMixture

        flat = descriptors.reshape(-1, descriptors.shape[-1])
        rng = np.random.default_rng(seed)
        if len(flat) > self.fit_descriptors:
            flat = flat[np.sort(rng.choice(len(flat), self.fit_descriptors, replace=False))]
        flat = flat.astype(np.float64)
        dims = min(self.pca_dims, flat.shape[1], len(flat))
        self.pca = PCA(n_components=dims, random_state=seed).fit(flat)
        reduced = self.pca.transform(flat)
        k = min(self.gaussians, len(reduced))
        self.gmm = GaussianMixture(n_components=k, covariance_type="diag", max_iter=100, random_state=seed,
                                   reg_covar=1e-6 * float(reduced.var(0).mean())).fit(reduced)
        return self

    @property
    def dims(self) -> int:
        return len(strips(self.grid, self.height, self.levels)) * 2 * self.gmm.n_components * self.pca.n_components_

    def transform(self, descriptors: np.ndarray, batch: int = 500) -> np.ndarray:
        """N×M×128 descriptors -> N×(regions·2KD) float32 signatures."""
        masks = strips(self.grid, self.height, self.levels)
        g = self.gmm
        out = np.empty((len(descriptors), self.dims), np.float32)
        for i in range(0, len(descriptors), batch):
            d = descriptors[i:i + batch]
            n, m, _ = d.shape
            x = self.pca.transform(d.reshape(n * m, -1).astype(np.float64))
            gamma = g.predict_proba(x).reshape(n, m, -1)
            x = x.reshape(n, m, -1)
            parts = [power_l2(fisher_vectors(x[:, r], g.weights_, g.means_, g.covariances_, gamma[:, r]), self.alpha)
                     for r in masks]
            out[i:i + batch] = np.concatenate(parts, axis=1)
        return out


def sgd_svm(features: np.ndarray, labels: np.ndarray, alpha: float, seed: int = 0, n_jobs: int | None = None) -> Any:
    """One-vs-rest linear SVMs (hinge loss, L2 regularisation λ = ``alpha``) trained by scikit-learn's
    SGD, as Sánchez & Perronnin (2011) train theirs; ``n_jobs`` threads train the classes' SVMs
    side by side. Stops after :data:`SGD_MAX_EPOCHS` passes (without a warning: the held-out
    selection of λ, not the optimiser's tolerance, decides what is good enough)."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import SGDClassifier

    svm = SGDClassifier(loss="hinge", alpha=alpha, max_iter=SGD_MAX_EPOCHS, tol=1e-4, random_state=seed, n_jobs=n_jobs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return svm.fit(features, labels)


def ranked(svm: Any, features: np.ndarray) -> np.ndarray:
    """Classes ranked best first by each image's one-vs-rest margins (N×C)."""
    scores = svm.decision_function(features)
    if scores.ndim == 1:  # two classes: one margin, positive = classes_[1]
        scores = np.stack([-scores, scores], 1)
    return svm.classes_[np.argsort(-scores, axis=1)]


__all__ = ["FisherEncoder", "dense_sift", "fisher_vectors", "power_l2", "ranked", "sgd_svm", "sift_grid",
           "sift_layout", "strips"]
