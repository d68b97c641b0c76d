"""The canonical finish's float64 re-score as one Triton kernel, for CUDA tensors.

On a GPU the torch re-score (gather W rows, cast to float64, batched mat-vec) moves ~20 bytes per weight and
would cost more than the encode's matmul. Here each program takes one token and BLOCK_C of its candidates,
reads their W_enc rows in the stored dtype straight from global memory, and accumulates (x − x_offset)·w + b
in float64 — the same arithmetic as the reference, so values agree with the torch path to float64 rounding.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_C = 16
BLOCK_D = 128


@triton.jit
def _rescore_kernel(
    x_ptr, off_ptr, w_ptr, b_ptr, ids_ptr, out_ptr,
    D, width, stride_xn, stride_xd, stride_wn, stride_wd,
    HAS_OFFSET: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr,
):
    n = tl.program_id(0)
    rc = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    in_row = rc < width
    ids = tl.load(ids_ptr + n * width + rc, mask=in_row, other=-1)
    valid = in_row & (ids >= 0)
    safe = tl.where(valid, ids, 0).to(tl.int64)
    acc = tl.zeros((BLOCK_C,), dtype=tl.float64)
    for d0 in range(0, D, BLOCK_D):
        rd = d0 + tl.arange(0, BLOCK_D)
        in_d = rd < D
        xv = tl.load(x_ptr + n * stride_xn + rd * stride_xd, mask=in_d, other=0.0).to(tl.float64)
        if HAS_OFFSET:
            xv = xv - tl.load(off_ptr + rd, mask=in_d, other=0.0).to(tl.float64)
        w = tl.load(w_ptr + safe[:, None] * stride_wn + rd[None, :] * stride_wd,
                    mask=valid[:, None] & in_d[None, :], other=0.0).to(tl.float64)
        acc += tl.sum(w * xv[None, :], axis=1)
    acc += tl.load(b_ptr + safe, mask=valid, other=0.0).to(tl.float64)
    tl.store(out_ptr + n * width + rc, tl.where(valid, acc, float("-inf")), mask=in_row)


def rescore_triton(
    x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, ids: torch.Tensor,
    x_offset: torch.Tensor | None = None,
) -> torch.Tensor:
    """Exact float64 pre-activations [N, width] of the ids [N, width] (ids < 0 score −inf)."""
    n, width = ids.shape
    out = torch.empty((n, width), dtype=torch.float64, device=x.device)
    if n == 0 or width == 0:
        return out
    ids = ids.to(torch.int64).contiguous()
    offset = x_offset if x_offset is not None else b_enc  # any tensor: unused unless HAS_OFFSET
    grid = (n, triton.cdiv(width, BLOCK_C))
    _rescore_kernel[grid](
        x, offset, W_enc, b_enc, ids, out, x.shape[1], width,
        x.stride(0), x.stride(1), W_enc.stride(0), W_enc.stride(1),
        HAS_OFFSET=x_offset is not None, BLOCK_C=BLOCK_C, BLOCK_D=BLOCK_D,
    )
    return out
