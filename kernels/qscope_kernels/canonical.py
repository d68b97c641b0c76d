"""The canonical finish shared by every fast path: re-score candidates in float64, certify, pick top-k.

Fast paths (dense fp32, blocked, Triton) round differently, so each selects top-(k + margin) *candidates*
in its own fp32 arithmetic and reports a per-row *ceiling*: an upper bound on the fast value of every feature it
did not keep. This module re-scores the candidates in float64 from the stored weights and certifies each row:
when the k-th re-scored value is above ceiling + error bound (or the bound is ≤ 0, so no non-candidate can be
positive), no feature outside the candidates can enter the top-k, and the answer equals the float64 reference.
Uncertified rows (exact ties or near-ties at the boundary) are recomputed exactly from the full float64 row,
one dictionary tile at a time. Every path therefore returns the same values and ids.

Cost: only *contenders* are re-scored (about k per row, see `finish`), by gathering their W_enc rows — a
memory-bound step that is the price of exactness (the benchmark's "usual" row shows it). Memory: re-scoring
works in row chunks under a byte budget and the fallback in dictionary tiles, so beyond its [N, C] inputs the
finish holds a bounded amount whatever d_sae is.
"""

from __future__ import annotations

import importlib.util
import math

import torch

from qscope_kernels import numba_cpu

PAD_ID = -1
DEFAULT_MARGIN = 16
RESCORE_BUDGET_BYTES = 32 << 20  # CPU: cache-friendly chunks
GPU_RESCORE_BUDGET_BYTES = 1 << 30  # GPU: few, large launches
EXACT_TILE_BYTES = 16 << 20
# Higham & Mary (2019) probabilistic bound: with probability ≥ 1 − 2·exp(−λ²/2) an n-term fp32 inner product
# errs by at most ≈ λ·√n·u·Σ|xᵢwᵢ| (round-to-nearest, errors mean-independent). λ = 16 → failure ≤ 2·e⁻¹²⁸ per dot product.
ERROR_LAMBDA = 16.0


def candidate_count(k: int, d_sae: int, margin: int = DEFAULT_MARGIN) -> int:
    """C = k + margin candidates (at most the whole dictionary)."""
    return min(d_sae, k + margin)


def weight_stats(W_enc: torch.Tensor, b_enc: torch.Tensor, chunk_rows: int = 4096) -> tuple[float, float]:
    """(max row norm of W_enc, max |b_enc|) in fp32, chunked so a half-precision W is never cast whole."""
    w_max = 0.0
    for start in range(0, W_enc.shape[0], chunk_rows):
        w_max = max(w_max, float(W_enc[start:start + chunk_rows].float().norm(dim=-1).max()))
    b_max = float(b_enc.float().abs().max()) if b_enc.numel() else 0.0
    return w_max, b_max


def fast_bias(
    W_enc: torch.Tensor, b_enc: torch.Tensor, x_offset: torch.Tensor | None = None, chunk_rows: int = 2048
) -> torch.Tensor:
    """The fp32 bias a fast path adds to x · W_encᵀ: b_enc, or b_enc − W_enc · x_offset (from float64) for SAEs
    that subtract an input bias (b_dec) before encoding. Folding the offset into the bias lets the fast path use
    x as given (half inputs stay half); the canonical finish re-scores (x − x_offset) · w + b in float64."""
    if x_offset is None:
        return b_enc.float()
    off = x_offset.double()
    out = torch.empty(W_enc.shape[0], dtype=torch.float32, device=W_enc.device)
    for start in range(0, W_enc.shape[0], chunk_rows):
        stop = start + chunk_rows
        out[start:stop] = (b_enc[start:stop].double() - W_enc[start:stop].double() @ off).float()
    return out


def _shifted(x: torch.Tensor, x_offset: torch.Tensor | None) -> torch.Tensor:
    """x − x_offset in float64 (what the reference encode sees)."""
    return x.double() if x_offset is None else x.double() - x_offset.double()


def error_bound(
    x: torch.Tensor, w_norm_max: float, b_abs_max: float, compute_dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Per-row bound [N] (float64) on |fast pre-activation − exact| for any feature.

    Each pre-activation is a (d+1)-term fp32 sum (d products, exact for half inputs, and the fp32 bias);
    Σ|xᵢwᵢ| + |b| ≤ ‖x‖·max‖w‖ + max|b| by Cauchy–Schwarz. The factor is the larger of the probabilistic
    λ·√n·u (round-to-nearest) and n·u/4, which covers tensor cores that truncate (≤ ~4u per 16-term MMA step).
    """
    u = torch.finfo(compute_dtype).eps / 2
    n = x.shape[-1] + 1
    factor = u * max(ERROR_LAMBDA * math.sqrt(n), n / 4.0)
    return factor * (row_norms(x) * (1.0 + 1e-5) * w_norm_max + b_abs_max)


def row_norms(x: torch.Tensor, chunk_rows: int = 1024) -> torch.Tensor:
    """‖x_n‖ as float64 [N], cast chunk by chunk (a half-precision x is never copied whole)."""
    out = torch.empty(x.shape[0], dtype=torch.float64, device=x.device)
    for start in range(0, x.shape[0], chunk_rows):
        out[start:start + chunk_rows] = x[start:start + chunk_rows].float().norm(dim=-1).double()
    return out


def rescore(
    x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, cand: torch.Tensor,
    widths: torch.Tensor | None = None, *, x_offset: torch.Tensor | None = None,
    budget_bytes: int = RESCORE_BUDGET_BYTES,
) -> torch.Tensor:
    """Exact float64 pre-activations of the candidate ids: [N, C].

    With `widths` [N], only each row's first widths[n] candidates are needed (the rest score −inf); ids < 0
    (padding) score −inf. On CUDA one Triton kernel reads the rows in their stored dtype (triton_rescore); on the
    CPU with fp32/fp64 tensors one compiled loop streams each row once (numba_cpu.rescore_rows); otherwise W rows are gathered chunk by chunk into two reused buffers (native dtype, float64), so the cost is
    one gather + one batched float64 mat-vec per chunk, never a float64 copy of W_enc.
    """
    n, c = cand.shape
    d = x.shape[-1]
    out = torch.full((n, c), float("-inf"), dtype=torch.float64, device=x.device)
    if n == 0 or c == 0:
        return out
    if widths is None:
        widths = torch.full((n,), c, dtype=torch.long, device=x.device)
    width = max(1, int(widths.max()))
    ids = cand[:, :width].long()
    keep = (ids >= 0) & (torch.arange(width, device=x.device) < widths.unsqueeze(1))
    if x.is_cuda and importlib.util.find_spec("triton") is not None:
        from qscope_kernels.triton_rescore import rescore_triton

        s = rescore_triton(x, W_enc, b_enc, ids, x_offset)
        out[:, :width] = torch.where(keep, s, torch.full_like(s, float("-inf")))
        return out
    if numba_cpu.supports(x, W_enc) and W_enc.is_contiguous():
        out[:, :width] = numba_cpu.rescore_rows(x, W_enc, b_enc, torch.where(keep, ids, -1), widths, x_offset)
        return out
    per_row = width * d * (8 + (W_enc.element_size() if W_enc.dtype != torch.float64 else 0))
    rows = max(1, min(n, budget_bytes // per_row))
    buf64 = torch.empty(rows * width * d, dtype=torch.float64, device=x.device)
    buf_w = torch.empty(rows * width * d, dtype=W_enc.dtype, device=x.device) if W_enc.dtype != torch.float64 else buf64
    safe = ids.clamp_min(0)
    dots = torch.empty((n, width, 1), dtype=torch.float64, device=x.device)
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        size = (stop - start) * width * d
        w = torch.index_select(W_enc, 0, safe[start:stop].flatten(), out=buf_w[:size].view(-1, d))
        w64 = buf64[:size].view(stop - start, width, d)
        if w64.data_ptr() != w.data_ptr():
            w64.copy_(w.view(stop - start, width, d))
        torch.bmm(w64, _shifted(x[start:stop], x_offset).unsqueeze(-1), out=dots[start:stop])
    s = dots.squeeze(-1) + b_enc.double()[safe]
    out[:, :width] = torch.where(keep, s, torch.full_like(s, float("-inf")))
    return out


def exact_rows(
    x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, k: int, *, x_offset: torch.Tensor | None = None,
    tile_bytes: int = EXACT_TILE_BYTES,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The float64 definition for a few rows, one dictionary tile at a time (never a full-width row block).

    Tiles are visited in ascending id order and the running top-k is kept sorted (value desc, id asc), so a
    stable descending sort of [running | tile] keeps equal values in ascending id order: the contract's tie rule.
    """
    n, d = x.shape
    d_sae = W_enc.shape[0]
    kk = min(k, d_sae)
    xd = _shifted(x, x_offset)
    b64 = b_enc.double()
    tile = max(kk, tile_bytes // max(1, d * 8))
    run_v = torch.empty((n, 0), dtype=torch.float64, device=x.device)
    run_i = torch.empty((n, 0), dtype=torch.long, device=x.device)
    for start in range(0, d_sae, tile):
        stop = min(d_sae, start + tile)
        pre = torch.addmm(b64[start:stop], xd, W_enc[start:stop].double().T)
        ids = torch.arange(start, stop, device=x.device).expand(n, -1)
        vals, pos = torch.sort(torch.cat([run_v, pre], 1), dim=-1, descending=True, stable=True)
        run_v = vals[:, :kk]
        run_i = torch.gather(torch.cat([run_i, ids], 1), 1, pos[:, :kk])
    values, out_ids = _pad(run_v, run_i)
    return _widen(values, out_ids, k)


def _pad(vals: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    positive = vals > 0
    values = torch.where(positive, vals, torch.zeros_like(vals)).float()
    ids = torch.where(positive, idx.long(), torch.full_like(idx, PAD_ID, dtype=torch.long))
    return values, ids


def _widen(values: torch.Tensor, ids: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    if values.shape[1] < k:
        values = torch.nn.functional.pad(values, (0, k - values.shape[1]))
        ids = torch.nn.functional.pad(ids, (0, k - ids.shape[1]), value=PAD_ID)
    return values, ids


def finish(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    k: int,
    cand_ids: torch.Tensor,
    cand_vals: torch.Tensor,
    *,
    ceiling: torch.Tensor | None = None,
    compute_dtype: torch.dtype = torch.float32,
    stats: tuple[float, float] | None = None,
    x_offset: torch.Tensor | None = None,
    budget_bytes: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """From fast candidates (ids, fast values) [N, C] to the exact (values float32 [N, k], ids int64 [N, k]).

    `ceiling` [N] bounds the fast value of every non-candidate; by default it is the smallest fast candidate
    value (right for any path that keeps its top-C by fast value). `stats` = weight_stats(W_enc, fast bias), if
    the caller has it. With `x_offset` the pre-activation is (x − x_offset) · w + b (see fast_bias).
    `budget_bytes` bounds the re-scoring buffers (default by device; the blocked path on the CPU passes the size
    of its freed scratch).
    Only *contenders* are re-scored: with ε the row's error bound and f_k the k-th fast value, a candidate with
    fast value < f_k − 2ε is exactly below at least k others, so it cannot be in the answer.
    """
    n, c = cand_ids.shape
    d_sae = W_enc.shape[0]
    kk = min(k, c)
    if n == 0 or kk == 0:
        return _widen(torch.zeros((n, 0), device=x.device), torch.zeros((n, 0), dtype=torch.long, device=x.device), k)
    cand_vals = cand_vals.float()
    if ceiling is None:
        ceiling = cand_vals.min(dim=-1).values
    fast, order = torch.sort(cand_vals, dim=-1, descending=True)
    cand_ids = torch.gather(cand_ids.long(), 1, order)
    w_max, b_max = stats if stats is not None else weight_stats(W_enc, fast_bias(W_enc, b_enc, x_offset))
    eps = error_bound(x, w_max, b_max, compute_dtype)
    contender = fast.double() >= fast[:, kk - 1:kk].double() - 2 * eps.unsqueeze(1)
    widths = contender.sum(-1).clamp_min(kk)
    if budget_bytes is None:
        budget_bytes = GPU_RESCORE_BUDGET_BYTES if x.is_cuda else RESCORE_BUDGET_BYTES
    exact = rescore(x, W_enc, b_enc, cand_ids, widths, x_offset=x_offset, budget_bytes=budget_bytes)
    # Order by (value desc, id asc): sort by id first, then a stable sort by value.
    by_id, order = torch.sort(cand_ids, dim=-1, stable=True)
    exact = torch.gather(exact, 1, order)
    vals, pos = torch.sort(exact, dim=-1, descending=True, stable=True)
    ids = torch.gather(by_id, 1, pos)
    values, out_ids = _widen(*_pad(vals[:, :kk], ids[:, :kk]), k)
    covered = c >= d_sae and bool((cand_ids >= 0).all())
    if not covered:
        bound = ceiling.double() + eps
        kth = vals[:, kk - 1]
        # No non-candidate can be positive, or every one ranks strictly below the k-th candidate.
        certified = (bound <= 0) | (kth > bound)
        bad = (~certified).nonzero().flatten()
        if bad.numel():
            fix_vals, fix_ids = exact_rows(x[bad], W_enc, b_enc, k, x_offset=x_offset)
            values[bad], out_ids[bad] = fix_vals, fix_ids
    return values, out_ids
