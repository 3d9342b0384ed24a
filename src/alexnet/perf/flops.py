"""FLOPs of a training step, and what a throughput means against the hardware: TFLOP/s, MFU, hours
for 90 epochs of ImageNet."""

from __future__ import annotations

from typing import Any

from alexnet.models.flops import flops_per_image, grouped_conv_backward_flop  # noqa: F401  (the one FLOP count)

# 90 epochs of ImageNet-1k's training set (1,281,167 images): 115.3M images.
IMAGES_90_EPOCHS = 90 * 1_281_167
# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from NVIDIA's data sheets, matched against the
# device name, most specific first.
SPEC_PEAK_BF16 = (("h100 pcie", 756.0), ("h100 nvl", 835.0), ("h100", 989.0), ("gh200", 989.0), ("h200", 989.0),
                  ("a100", 312.0))
# The practical ceiling: the bf16 rate of a large matmul measured on the device (TFLOP/s), with where
# it was measured.
MEASURED_PEAK_BF16 = (("h100 80gb hbm3", 806.0, "a large bf16 matmul measured on an H100 SXM (HBM3) machine"),)


def peaks(device_name: str) -> tuple[float | None, float | None, str | None]:
    """(spec dense bf16 peak, measured practical ceiling, its source) in TFLOP/s for a device name."""
    name = device_name.lower()
    spec = next((p for key, p in SPEC_PEAK_BF16 if key in name), None)
    meas = next(((p, src) for key, p, src in MEASURED_PEAK_BF16 if key in name), (None, None))
    return spec, meas[0], meas[1]


def derived(img_per_s: float, flops_per_img: float | None, device_name: str | None) -> dict[str, Any]:
    """Hours for 90 epochs of ImageNet at ``img_per_s``; with a FLOP count, TFLOP/s, and with a known
    GPU (``device_name``), MFU against its spec peak and its measured ceiling."""
    out: dict[str, Any] = {"hours_90_epochs": round(IMAGES_90_EPOCHS / img_per_s / 3600, 2)}
    if flops_per_img:
        spec, meas, src = peaks(device_name) if device_name else (None, None, None)
        tf = img_per_s * flops_per_img / 1e12
        out.update(gflop_per_img=round(flops_per_img / 1e9, 3), tflop_per_s=round(tf, 1), peak_tflops_spec=spec,
                   mfu_spec=round(tf / spec, 4) if spec else None, peak_tflops_measured=meas,
                   peak_measured_source=src, mfu_measured_peak=round(tf / meas, 4) if meas else None)
    return out


__all__ = ["IMAGES_90_EPOCHS", "derived", "flops_per_image", "grouped_conv_backward_flop", "peaks"]
