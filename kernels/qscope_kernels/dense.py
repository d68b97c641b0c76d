"""The usual encode: one fp32 matmul over the whole dictionary, then top-(k + margin) and the canonical finish.

Materialises [N, d_sae] (320 KiB per token at d_sae = 81,920); it is the baseline the blocked and Triton paths
are measured against, and the simplest path to trust.
"""

from __future__ import annotations

import torch

from qscope_kernels.canonical import DEFAULT_MARGIN, candidate_count, fast_bias, finish, weight_stats


def dense_topk_encode(
    x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, k: int, *, margin: int = DEFAULT_MARGIN,
    x_offset: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    compute = torch.float32
    bias = fast_bias(W_enc, b_enc, x_offset)
    pre = torch.addmm(bias, x.to(compute), W_enc.to(compute).T)
    cand_vals, cand_ids = torch.topk(pre, candidate_count(k, W_enc.shape[0], margin), dim=-1)
    del pre
    return finish(x, W_enc, b_enc, k, cand_ids, cand_vals, compute_dtype=compute,
                  stats=weight_stats(W_enc, bias), x_offset=x_offset)
