"""Exact TopK SAE encode kernels (import name ``qscope_kernels``).

``topk_encode(x, W_enc, b_enc, k, impl=...)`` returns (values float32 [N, k], ids int64 [N, k]) with the
contract of ``qscope_data.sae.reference_encode``: value descending, id ascending on ties, value 0 / id -1
where fewer than k pre-activations are positive. W_enc in the Qwen-Scope orientation (d_sae, d_model);
x, W_enc and b_enc may be fp32, bf16 or fp16 (accumulation is fp32). Every implementation ends in the same
canonical finish (float64 re-score + certificate), so all of them return identical values and ids.

Implementations: ``dense`` (one full-width matmul; the baseline), ``blocked`` (tiles over tokens and the
dictionary, scratch independent of d_sae; CPU and GPU), ``triton`` (fused CUDA kernel; the interpreter runs
it on the CPU when TRITON_INTERPRET=1). ``auto`` picks triton for CUDA tensors when triton imports, else blocked.
"""

from __future__ import annotations

import importlib.util
from typing import Literal

import torch

from qscope_kernels.blocked import blocked_topk_encode
from qscope_kernels.canonical import PAD_ID
from qscope_kernels.dense import dense_topk_encode
from qscope_kernels.precision import ieee_fp32

__all__ = ["PAD_ID", "Impl", "blocked_topk_encode", "dense_topk_encode", "ieee_fp32", "resolve_impl", "topk_encode"]

Impl = Literal["auto", "dense", "blocked", "triton"]
IMPLS = ("auto", "dense", "blocked", "triton")


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def resolve_impl(impl: str, x: torch.Tensor) -> str:
    """The implementation `impl` means for an input on x's device."""
    if impl not in IMPLS:
        raise ValueError(f"unknown encode impl {impl!r}; expected one of {', '.join(IMPLS)}")
    if impl == "auto":
        return "triton" if x.is_cuda and triton_available() else "blocked"
    return impl


def topk_encode(
    x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, k: int, *, impl: str = "auto",
    x_offset: torch.Tensor | None = None, **kwargs
) -> tuple[torch.Tensor, torch.Tensor]:
    """ReLU(TopK_k((x − x_offset) · W_encᵀ + b_enc)) as (values float32 [N, k], ids int64 [N, k]).

    `x_offset` (d_model,) is an input bias subtracted before encoding (sparsify / SAELens b_dec), computed
    exactly like the reference (in float64), never by rounding x − x_offset to x's dtype. Tiling kwargs
    (token_tile, dict_tile, block_m, …) go to the implementation.
    """
    if x.ndim != 2:
        raise ValueError(f"x must be [N, d_model], got {tuple(x.shape)}")
    if W_enc.ndim != 2 or W_enc.shape[1] != x.shape[1] or b_enc.shape != (W_enc.shape[0],):
        raise ValueError(
            f"shapes do not fit: x {tuple(x.shape)}, W_enc {tuple(W_enc.shape)} (d_sae, d_model), b_enc {tuple(b_enc.shape)}"
        )
    if x_offset is not None and x_offset.shape != (x.shape[1],):
        raise ValueError(f"x_offset must be ({x.shape[1]},), got {tuple(x_offset.shape)}")
    if not 1 <= k <= W_enc.shape[0]:
        raise ValueError(f"k must be in 1..d_sae={W_enc.shape[0]}, got {k}")
    chosen = resolve_impl(impl, x)
    with ieee_fp32():  # the certificate's error bound assumes IEEE fp32 (see precision.py)
        return _dispatch(chosen, x, W_enc, b_enc, k, x_offset, **kwargs)


def _dispatch(chosen: str, x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, k: int,
              x_offset: torch.Tensor | None, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    if x.shape[0] == 0:
        return (torch.zeros(0, k, dtype=torch.float32, device=x.device),
                torch.zeros(0, k, dtype=torch.long, device=x.device))
    if chosen == "dense":
        return dense_topk_encode(x, W_enc, b_enc, k, x_offset=x_offset, **kwargs)
    if chosen == "blocked":
        return blocked_topk_encode(x, W_enc, b_enc, k, x_offset=x_offset, **kwargs)
    if not triton_available():
        raise RuntimeError("impl='triton' needs the triton package (pip install 'qscope-data[triton]')")
    from qscope_kernels.triton_topk import triton_topk_encode

    return triton_topk_encode(x, W_enc, b_enc, k, x_offset=x_offset, **kwargs)
