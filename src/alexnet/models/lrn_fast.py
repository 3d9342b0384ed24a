"""Dispatch for the LRN computation: the plain tensor formulation (any device, autograd).

Issue 6 adds fused kernels here; the plain path stays the fallback and the reference.
"""

from __future__ import annotations

import torch

from alexnet.models.layers import lrn_sum_of_squares


def local_response_norm(x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    # §3.3: b = a / (k + alpha * sum a^2) ** beta, alpha already in its effective form.
    return x * (k + alpha * lrn_sum_of_squares(x, size)).pow(-beta)
