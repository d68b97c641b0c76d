"""Exact TopK SAE encode kernels (import name ``qscope_kernels``).

``topk_encode(x, W_enc, b_enc, k, impl=...)`` returns (values float32 [N, k], ids int64 [N, k]) with the
contract of ``qscope_data.sae.reference_encode``: value descending, id ascending on ties, value 0 / id -1
where fewer than k pre-activations are positive. W_enc in the Qwen-Scope orientation (d_sae, d_model).
"""

from __future__ import annotations

import torch

from qscope_kernels.canonical import PAD_ID
from qscope_kernels.dense import dense_topk_encode

__all__ = ["PAD_ID", "topk_encode", "dense_topk_encode"]


def topk_encode(x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, k: int, *, impl: str = "auto", **kwargs):
    if x.ndim != 2:
        raise ValueError(f"x must be [N, d_model], got {tuple(x.shape)}")
    if x.shape[0] == 0:
        return torch.zeros(0, k, dtype=torch.float32, device=x.device), torch.zeros(0, k, dtype=torch.long, device=x.device)
    if impl in ("auto", "dense", "blocked", "triton"):
        return dense_topk_encode(x, W_enc, b_enc, k, **kwargs)
    raise ValueError(f"unknown encode impl {impl!r}")
