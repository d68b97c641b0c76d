"""The usual encode: one fp32 matmul over the whole dictionary, then top-(k + margin) and the canonical finish.

Materialises [N, d_sae]; it is the baseline the blocked and Triton paths are measured against.
"""

from __future__ import annotations

import torch

from qscope_kernels.canonical import candidate_count, finish


def dense_topk_encode(x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, k: int, *, margin: int = 16):
    compute = torch.float32
    pre = torch.addmm(b_enc.to(compute), x.to(compute), W_enc.to(compute).T)
    cand_vals, cand_ids = torch.topk(pre, candidate_count(k, W_enc.shape[0], margin), dim=-1)
    return finish(x, W_enc, b_enc, k, cand_ids, cand_vals, compute)
