import numpy as np
import pytest
import torch

from alexnet.data.augment import Augment, sample_keys, uniform


def make_aug(h=12, crop=8, **kw):
    torch.manual_seed(0)
    mean = torch.rand(3, h, h) * 255
    eigvec = torch.linalg.qr(torch.randn(3, 3))[0]
    return Augment(mean, torch.tensor([0.2, 0.02, 0.005]), eigvec, crop, **kw)


def images(n=6, h=12):
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (n, 3, h, h), dtype=torch.uint8, generator=g)


def test_randomness_is_a_pure_function_of_seed_epoch_index():
    aug = make_aug()
    x = images()
    idx = torch.arange(100, 106)
    full = aug.train(x, idx, epoch=3)
    # the same samples in another batch composition / order give the same output
    part = aug.train(x[[4, 1]], idx[[4, 1]], epoch=3)
    assert torch.equal(full[[4, 1]], part)
    assert not torch.equal(aug.train(x, idx, epoch=4), full)
    assert not torch.equal(make_aug(seed=1).train(x, idx, epoch=3), full)
    k1 = sample_keys(1, 3, idx)
    k0 = sample_keys(0, 3, idx)
    assert not torch.equal(k0, k1)


def test_uniforms_look_uniform():
    u = uniform(sample_keys(0, 0, torch.arange(20000)), 0).numpy()
    assert 0 <= u.min() and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.01 and abs(u.std() - (1 / 12) ** 0.5) < 0.01
    hist = np.histogram(u, bins=10, range=(0, 1))[0]
    assert hist.min() > 1800


def test_crop_and_flip_geometry():
    aug = make_aug(pca_std=0.0)
    x = images(64)
    idx = torch.arange(64)
    out = aug.train(x, idx, epoch=0)
    p, _ = aug.params(idx, 0)
    for i in range(64):
        y0, x0, f = int(p.oy[i]), int(p.ox[i]), bool(p.flip[i])
        ref = x[i, :, y0 : y0 + 8, x0 : x0 + 8].float() - aug.mean[:, y0 : y0 + 8, x0 : x0 + 8]
        if f:
            ref = ref.flip(-1)
        assert torch.allclose(out[i], ref, atol=1e-4)
    assert p.flip.any() and (~p.flip).any() and len(set(p.oy.tolist())) == 5  # 12-8+1 offsets


def test_pca_noise_is_per_image_constant_along_eigenvectors():
    aug = make_aug(pca_std=0.1)
    plain = make_aug(pca_std=0.0)
    x, idx = images(), torch.arange(6)
    d = aug.train(x, idx, 0) - plain.train(x, idx, 0)  # same crops: only the noise differs
    per_image = d.mean(dim=(2, 3))  # N×3
    assert torch.allclose(d, per_image[:, :, None, None].expand_as(d), atol=1e-3)
    # noise = 255 * eigvec @ (alpha * eigval): solve for alpha and check its scale
    alpha = torch.linalg.solve(aug.eigvec, per_image.T / 255.0).T / aug.eigval
    assert alpha.abs().max() < 1.0 and alpha.abs().max() > 1e-3


def test_ten_crop_geometry():
    aug = make_aug(h=12, crop=8)
    x = images(2)
    v = aug.ten_crop(x)
    assert v.shape == (10, 2, 3, 8, 8)
    sub = x.float() - aug.mean
    corners = [(0, 0), (0, 4), (4, 0), (4, 4), (2, 2)]
    for j, (y0, x0) in enumerate(corners):
        assert torch.allclose(v[j], sub[:, :, y0 : y0 + 8, x0 : x0 + 8], atol=1e-4)
        assert torch.allclose(v[5 + j], sub[:, :, y0 : y0 + 8, x0 : x0 + 8].flip(-1), atol=1e-4)
    assert torch.allclose(aug.center(x), v[4])


def test_padding_crop_reads_mean_outside():
    aug = make_aug(h=8, crop=8, crop_padding=2, pca_std=0.0, flip=False)
    x = images(32, 8)
    out = aug.train(x, torch.arange(32), 0)
    p, _ = aug.params(torch.arange(32), 0)
    assert (p.oy < 0).any() and (p.oy > 0).any()
    i = int(torch.nonzero(p.oy < 0)[0])
    rows_outside = -int(p.oy[i])
    assert torch.all(out[i, :, :rows_outside] == 0)


def test_padding_stays_the_mean_under_pca_noise():
    # §4.1's colour noise changes the image's pixels; the padding around a 32×32 image is no pixel
    # of it and reads as the mean (zero), with or without the noise.
    aug = make_aug(h=8, crop=8, crop_padding=2, pca_std=0.5, flip=False)
    x = images(32, 8)
    out = aug.train(x, torch.arange(32), 0)
    p, noise = aug.params(torch.arange(32), 0)
    i = int(torch.nonzero(p.oy < 0)[0])
    assert noise[i].abs().max() > 1.0
    assert torch.all(out[i, :, :-int(p.oy[i])] == 0)
    assert (out[i, :, -int(p.oy[i]):] != 0).any()


def test_mean_std_normalisation():
    aug = make_aug(h=8, crop=8, pca_std=0.0, flip=False, input_norm="mean_std", random_crop=False)
    x = torch.full((1, 3, 8, 8), 255, dtype=torch.uint8)
    out = aug.train(x, torch.arange(1), 0)
    expect = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(out[0, :, 0, 0], expect, atol=1e-5)


def test_too_small_images_are_refused():
    from alexnet.errors import UserError

    with pytest.raises(UserError, match="smaller than the model input"):
        make_aug(h=12, crop=16)


def _pinned_aug():
    eigvec = torch.tensor([[0.6, 0.8, 0.0], [-0.8, 0.6, 0.0], [0.0, 0.0, 1.0]])
    return Augment(torch.zeros(3, 12, 12), torch.tensor([0.2, 0.02, 0.005]), eigvec, 8, seed=5, crop_padding=1)


PINNED_IDX = [0, 1, 7, 123456, 2**31 + 5]


def test_parameters_are_pinned_for_their_keys():
    # Values computed before the parameters moved to the device: the same (seed, epoch, index)
    # must keep giving the same crop, flip and colour noise (resumed runs and old results rely on it).
    p, noise = _pinned_aug().params(torch.tensor(PINNED_IDX), 3)
    assert p.oy.tolist() == [-1, 2, 3, 4, 1]
    assert p.ox.tolist() == [0, 4, 1, 0, 4]
    assert p.flip.tolist() == [True, True, False, True, True]
    expect = torch.tensor([[-3.849523752, 5.072010059, -0.077183868], [-3.09111315, 3.311146826, -0.109313787],
                           [-4.614146197, 5.776638504, 0.201190337], [-7.722818878, 11.373477031, -0.059818327],
                           [-0.547872463, -0.290642517, -0.081107866]], dtype=torch.float64)
    assert torch.allclose(noise, expect, atol=1e-8, rtol=0)


def test_training_step_builds_nothing_on_the_host():
    # On a GPU, every host tensor the augmentation made would be a blocking host-to-device copy
    # stalling the stream. The "meta" device stands in for the GPU: every op of a step is recorded,
    # and the only host tensor allowed is the indices, copied once without blocking.
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.host_ops, self.copies = [], []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            tensors = [a for a in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
            out = func(*args, **kwargs)
            outs = [o for o in torch.utils._pytree.tree_leaves(out) if isinstance(o, torch.Tensor)]
            if any(t.device.type == "cpu" for t in tensors) and any(o.device.type == "meta" for o in outs):
                self.copies.append((func, tuple(t.shape for t in tensors), kwargs.get("non_blocking", False)))
            elif any(t.device.type == "cpu" for t in tensors + outs):
                self.host_ops.append(func)
            return out

    for kw in ({}, {"crop_padding": 2}, {"input_norm": "mean_image_std"}):
        aug = make_aug(**kw)
        x = images(6).to("meta")
        idx = torch.arange(100, 106)
        aug.train(x, idx, epoch=1)  # the first step puts the mean image etc. on the device once
        with Record() as rec:
            out = aug.train(x, idx, epoch=2)
        assert out.device.type == "meta" and out.shape == (6, 3, 8, 8)
        assert rec.host_ops == []
        assert len(rec.copies) == 1, rec.copies
        func, shapes, non_blocking = rec.copies[0]
        assert shapes == ((6,),) and non_blocking  # the indices, queued without waiting
        with Record() as rec:
            aug.center(x)
            aug.ten_crop(x)
        assert rec.host_ops == [] and rec.copies == []



def _crop_gather_fp32(aug, images, p, noise, dtype):
    """The gather path fp32 all the way and cast at the end: the reference for the bits."""
    sub, scale, _, _ = aug._consts(images.device)
    n, _, h, w = images.shape
    ar = torch.arange(aug.crop)
    rows, cols = p.oy[:, None] + ar, p.ox[:, None] + ar
    cols = torch.where(p.flip[:, None], cols.flip(1), cols)
    lin = (rows.clamp(0, h - 1)[:, :, None] * w + cols.clamp(0, w - 1)[:, None, :]).view(n, 1, -1)
    x = images.reshape(n, 3, h * w).gather(2, lin.expand(n, 3, -1)).float()
    x -= sub.reshape(1, 3, h * w).expand(n, -1, -1).gather(2, lin.expand(n, 3, -1))
    if noise is not None:  # the image's pixels only: the padding stays the mean
        x.add_(noise.float()[:, :, None])
    if aug.pad:
        valid = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
        x *= valid.view(n, 1, -1)
    x = x.view(n, 3, aug.crop, aug.crop)
    x.mul_(scale.view(1, 3, 1, 1))
    return x.to(dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("kw", [{}, {"crop_padding": 2}, {"input_norm": "mean_image_std"}, {"input_norm": "mean_std"}])
def test_the_gather_writes_the_compute_dtype_with_the_bits_of_fp32_then_cast(dtype, kw):
    aug = make_aug(**kw)
    x, idx = images(16), torch.arange(40, 56)
    p, noise = aug.params(idx, 3)
    sub, scale, _, _ = aug._consts(x.device)
    got = aug._crop_gather(x, p, sub, scale, noise, dtype)
    assert got.dtype == dtype and got.shape == (16, 3, 8, 8)
    assert torch.equal(got, _crop_gather_fp32(aug, x, p, noise, dtype))
    if not kw:  # and the CPU's slicing path agrees with the gather
        assert torch.equal(aug.train(x, idx, 3, dtype=dtype), got)
