"""The training split's statistics of a prepared dataset (``stats.safetensors``, read by
:meth:`alexnet.data.format.PreparedDataset.stats`): the per-pixel mean image that §2 subtracts,
and the eigenvalues and eigenvectors of the RGB covariance that §4.1's colour augmentation
(PCA lighting) uses.

(The statistics of experiment results, confidence intervals and the decision rule, are
:mod:`alexnet.experiments.stats`.)
"""

from __future__ import annotations

import numpy as np
import torch

from alexnet.data.format import DatasetError

PIXELS_PER_IMAGE = 256  # pixels sampled per training image for the RGB covariance (§4.1's PCA)
STATS_SEED = 0


class StatsAccumulator:
    """Streams the training split's statistics: the per-pixel mean (0–255) and the RGB covariance
    ([0, 1] scale) of ``pixels_per_image`` pixels sampled from each image. The one computation of
    them: every writer of a prepared dataset (``prepare``'s workers,
    :func:`alexnet.data.writer.write_arrays`, the benchmark fixtures) goes through :meth:`add`.

    The pixels of the image at position ``ordinal`` in its split are drawn by a generator seeded
    with ``[seed, ordinal]``, so the statistics depend on the images and their order only, not
    on which writer made the dataset, how it cut the work into chunks, or where a resumed run
    continued. Chunks accumulated apart (in worker processes) are added up with :meth:`add_sums`.
    """

    def __init__(self, image_size: tuple[int, int], pixels_per_image: int = PIXELS_PER_IMAGE,
                 seed: int = STATS_SEED) -> None:
        h, w = image_size
        self.sum = np.zeros((h, w, 3), dtype=np.float64)
        self.n = 0
        self.rgb_sum = np.zeros(3, dtype=np.float64)
        self.rgb_outer = np.zeros((3, 3), dtype=np.float64)
        self.rgb_n = 0
        self.pixels_per_image = pixels_per_image
        self.seed = seed

    def add(self, img_hwc: np.ndarray, ordinal: int | None = None) -> None:
        """Add one uint8 H×W×3 image; ``ordinal`` is its position in the split (default: the
        number of images added so far)."""
        self.sum += img_hwc
        flat = img_hwc.reshape(-1, 3)  # H×W×3 -> HW×3
        if len(flat) > self.pixels_per_image:
            rng = np.random.default_rng([self.seed, self.n if ordinal is None else ordinal])
            flat = flat[rng.integers(0, len(flat), self.pixels_per_image)]
        self.n += 1
        px = flat.astype(np.float64) / 255.0
        self.rgb_sum += px.sum(0)
        self.rgb_outer += px.T @ px
        self.rgb_n += len(px)

    def sums(self) -> tuple[np.ndarray, int, np.ndarray, np.ndarray, int]:
        """What :meth:`add_sums` takes: (pixel sum, images, RGB sum, RGB outer-product sum, pixels)."""
        return self.sum, self.n, self.rgb_sum, self.rgb_outer, self.rgb_n

    def add_sums(self, pixel_sum: np.ndarray, n: int, rgb_sum: np.ndarray, rgb_outer: np.ndarray, rgb_n: int) -> None:
        """Add the :meth:`sums` of another accumulator (e.g. a worker process's, over a chunk)."""
        self.sum += pixel_sum
        self.n += int(n)
        self.rgb_sum += rgb_sum
        self.rgb_outer += rgb_outer
        self.rgb_n += int(rgb_n)

    def state(self) -> dict[str, np.ndarray]:
        """The sums as arrays (for a checkpoint); :meth:`load_state` restores them."""
        return {"sum": self.sum, "n": np.int64(self.n), "rgb_sum": self.rgb_sum, "rgb_outer": self.rgb_outer,
                "rgb_n": np.int64(self.rgb_n)}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        if state["sum"].shape != self.sum.shape:
            raise ValueError(f"statistics of {state['sum'].shape} images, expected {self.sum.shape}")
        self.sum = state["sum"].astype(np.float64)
        self.n = int(state["n"])
        self.rgb_sum = state["rgb_sum"].astype(np.float64)
        self.rgb_outer = state["rgb_outer"].astype(np.float64)
        self.rgb_n = int(state["rgb_n"])

    def finish(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.n == 0:
            raise DatasetError("no training images to compute the mean image from")
        mean = torch.from_numpy(self.sum / self.n).permute(2, 0, 1).float()  # H×W×3 -> 3×H×W
        mu = self.rgb_sum / self.rgb_n
        cov = self.rgb_outer / self.rgb_n - np.outer(mu, mu)
        eigval, eigvec = np.linalg.eigh(cov)
        order = np.argsort(eigval)[::-1]  # largest first, as the paper lists them
        return mean, torch.from_numpy(eigval[order].copy()).float(), torch.from_numpy(eigvec[:, order].copy()).float()
