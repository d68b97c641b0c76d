"""Triton encode for CUDA: one kernel does matmul tile + bias + per-row candidate selection; a small merge follows.

Each program owns BLOCK_M tokens × BLOCK_N features (launched in grouped order for L2 reuse of W_enc). It accumulates the tile with `tl.dot` in fp32 (half inputs
go to the tensor cores as they are — their products are exact in fp32; fp32 inputs use IEEE fp32, never TF32,
so the canonical error bound holds), adds the bias, and extracts the tile's C_TILE largest pre-activations per
row by repeated max-extraction, writing them to [N, n_tiles, C_TILE]. It also writes the largest value it did
*not* extract (the tile's residual maximum). The merge takes top-C over the n_tiles·C_TILE candidates with
`torch.topk`; every feature left out is ≤ max(C-th merged value, residual maxima), the ceiling the canonical
finish certifies against. A row whose top-k crowds more than C_TILE features into one tile just fails the
certificate and is recomputed exactly (with d_sae/BLOCK_N tiles and k ≈ 100 that is vanishingly rare).

ReLU is not applied before selection: the finish needs the raw ceiling to certify rows with fewer than k
positive pre-activations without a fallback; the output contract's ReLU/padding is applied by the finish.

Runs on the CPU under the Triton interpreter (`TRITON_INTERPRET=1` set before triton is imported) for tests.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from qscope_kernels.canonical import DEFAULT_MARGIN, candidate_count, fast_bias, finish, weight_stats

BLOCK_M = 128
BLOCK_N = 128
BLOCK_K = None  # 64 for half inputs, 32 for fp32 (shared memory per stage)
C_TILE = 8
GROUP_M = 8
NUM_WARPS = 8
NUM_STAGES = 3
TOKEN_CHUNK = 8192


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@triton.jit
def _encode_tile_kernel(
    x_ptr, w_ptr, b_ptr, cand_v_ptr, cand_i_ptr, resid_ptr,
    N, D, S, stride_xn, stride_xd, stride_wn, stride_wd, n_tiles,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, C_TILE: tl.constexpr,
    GROUP_M: tl.constexpr, HALF_DOT: tl.constexpr,
):
    # Grouped launch order (as in Triton's matmul tutorial): GROUP_M token blocks walk the dictionary tiles
    # together, so a W_enc tile is fetched from HBM once per group and served from L2 to the others.
    pid = tl.program_id(0)
    n_blocks_m = tl.cdiv(N, BLOCK_M)
    per_group = GROUP_M * n_tiles
    first_m = (pid // per_group) * GROUP_M
    group_size = tl.minimum(n_blocks_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_size
    pid_n = (pid % per_group) // group_size
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, D, BLOCK_K):
        kk = k0 + rk
        a = tl.load(x_ptr + rm[:, None] * stride_xn + kk[None, :] * stride_xd,
                    mask=(rm[:, None] < N) & (kk[None, :] < D), other=0.0)
        b = tl.load(w_ptr + rn[None, :] * stride_wn + kk[:, None] * stride_wd,
                    mask=(rn[None, :] < S) & (kk[:, None] < D), other=0.0)
        if HALF_DOT:
            acc = tl.dot(a, b, acc)
        else:
            acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    bias = tl.load(b_ptr + rn, mask=rn < S, other=0.0).to(tl.float32)
    acc = acc + bias[None, :]
    acc = tl.where(rn[None, :] < S, acc, float("-inf"))
    cols = tl.arange(0, BLOCK_N)
    out = (rm * n_tiles + pid_n) * C_TILE
    for c in range(C_TILE):
        best = tl.max(acc, axis=1)
        where = tl.argmax(acc, axis=1, tie_break_left=True)
        ids = tl.where(best == float("-inf"), -1, pid_n * BLOCK_N + where)
        tl.store(cand_v_ptr + out + c, best, mask=rm < N)
        tl.store(cand_i_ptr + out + c, ids, mask=rm < N)
        acc = tl.where(cols[None, :] == where[:, None], float("-inf"), acc)
    tl.store(resid_ptr + rm * n_tiles + pid_n, tl.max(acc, axis=1), mask=rm < N)


def triton_topk_encode(
    x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, k: int, *, margin: int = DEFAULT_MARGIN,
    block_m: int = BLOCK_M, block_n: int = BLOCK_N, block_k: int | None = BLOCK_K, c_tile: int = C_TILE,
    group_m: int = GROUP_M, token_chunk: int = TOKEN_CHUNK, x_offset: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    if not x.is_cuda and not interpreting():
        raise RuntimeError(
            "impl='triton' needs a CUDA tensor (or TRITON_INTERPRET=1 set before triton is imported, for tests); "
            "use impl='blocked' on the CPU"
        )
    n, d = x.shape
    d_sae = W_enc.shape[0]
    c = candidate_count(k, d_sae, margin)
    n_tiles = triton.cdiv(d_sae, block_n)
    # Enough per-tile candidates that the tiles together always offer at least C real ones.
    c_tile = min(c, block_n, max(c_tile, math.ceil(2 * c / n_tiles)))
    bias = fast_bias(W_enc, b_enc, x_offset)
    half_dot = x.dtype == W_enc.dtype and x.dtype in (torch.float16, torch.bfloat16)
    block_k = block_k or (64 if half_dot else 32)
    cand_ids = torch.empty((n, c), dtype=torch.long, device=x.device)
    cand_vals = torch.empty((n, c), dtype=torch.float32, device=x.device)
    ceiling = torch.empty((n,), dtype=torch.float32, device=x.device)
    for start in range(0, n, token_chunk):
        stop = min(n, start + token_chunk)
        xs = x[start:stop]
        m = stop - start
        tile_v = torch.empty((m, n_tiles, c_tile), dtype=torch.float32, device=x.device)
        tile_i = torch.empty((m, n_tiles, c_tile), dtype=torch.int32, device=x.device)
        resid = torch.empty((m, n_tiles), dtype=torch.float32, device=x.device)
        grid = (triton.cdiv(m, block_m) * n_tiles,)
        _encode_tile_kernel[grid](
            xs, W_enc, bias, tile_v, tile_i, resid,
            m, d, d_sae, xs.stride(0), xs.stride(1), W_enc.stride(0), W_enc.stride(1), n_tiles,
            BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, C_TILE=c_tile, GROUP_M=group_m,
            HALF_DOT=half_dot, num_warps=NUM_WARPS, num_stages=NUM_STAGES,
        )
        vals, pos = torch.topk(tile_v.view(m, -1), c, dim=-1)
        cand_vals[start:stop] = vals
        cand_ids[start:stop] = torch.gather(tile_i.view(m, -1), 1, pos).long()
        ceiling[start:stop] = torch.maximum(vals[:, -1], resid.amax(dim=1))
    return finish(x, W_enc, b_enc, k, cand_ids, cand_vals, ceiling=ceiling, compute_dtype=torch.float32,
                  stats=weight_stats(W_enc, bias), x_offset=x_offset)
