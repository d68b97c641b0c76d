"""The canonical finish shared by every fast path: re-score candidates in float64, certify, pick top-k.

Fast paths (dense fp32, blocked, Triton) round differently, so each selects top-(k + margin) *candidates*
in its own arithmetic; this module re-scores them in float64 from the stored weights, so every path returns
the same values and ids. A row is certified when its k-th re-scored value is above what any non-candidate
could reach given the fast path's rounding error; uncertified rows (exact ties at the boundary, near-ties)
are recomputed exactly from the full float64 row. The result then equals the float64 reference.
"""

from __future__ import annotations

import torch

PAD_ID = -1
DEFAULT_MARGIN = 16


def candidate_count(k: int, d_sae: int, margin: int = DEFAULT_MARGIN) -> int:
    return min(d_sae, k + margin)


def error_bound(x: torch.Tensor, W_enc: torch.Tensor, compute_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Per-row bound on |fast pre-activation − exact| (a generous multiple of the statistical fp32 error)."""
    eps = torch.finfo(compute_dtype).eps
    d = x.shape[-1]
    x_norm = x.float().norm(dim=-1)
    w_norm = W_enc.float().norm(dim=-1).max()
    return 8.0 * (d ** 0.5) * eps * (x_norm * w_norm + 1.0)


def rescore(x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, cand: torch.Tensor, row_chunk: int = 32) -> torch.Tensor:
    """Exact float64 pre-activations of the candidate ids: [N, C]."""
    out = torch.empty(cand.shape, dtype=torch.float64, device=x.device)
    for start in range(0, x.shape[0], row_chunk):
        sl = slice(start, start + row_chunk)
        ids = cand[sl].long()
        rows = W_enc[ids].double()  # [n, C, d]
        out[sl] = torch.einsum("ncd,nd->nc", rows, x[sl].double()) + b_enc[ids].double()
    return out


def exact_rows(x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The float64 definition for a few rows (stable sort: ties in ascending id order)."""
    pre = torch.addmm(b_enc.double(), x.double(), W_enc.double().T)
    vals, idx = torch.sort(pre, dim=-1, descending=True, stable=True)
    return _pad(vals[:, :k], idx[:, :k])


def _pad(vals: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    positive = vals > 0
    values = torch.where(positive, vals, torch.zeros_like(vals)).float()
    ids = torch.where(positive, idx.long(), torch.full_like(idx, PAD_ID, dtype=torch.long))
    return values, ids


def finish(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    k: int,
    cand_ids: torch.Tensor,
    cand_vals: torch.Tensor,
    compute_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """From fast candidates [N, C] (ids and fast values) to the exact (values float32 [N, k], ids int64 [N, k])."""
    n, c = cand_ids.shape
    d_sae = W_enc.shape[0]
    exact = rescore(x, W_enc, b_enc, cand_ids)
    # Order by (value desc, id asc): sort by id first, then a stable sort by value.
    by_id, order = torch.sort(cand_ids.long(), dim=-1, stable=True)
    exact = torch.gather(exact, 1, order)
    vals, pos = torch.sort(exact, dim=-1, descending=True, stable=True)
    ids = torch.gather(by_id, 1, pos)
    kk = min(k, c)
    values, out_ids = _pad(vals[:, :kk], ids[:, :kk])
    if c < d_sae:
        # Non-candidates scored at most min(fast candidate value) in fast arithmetic.
        ceiling = cand_vals.float().min(dim=-1).values.double() + error_bound(x, W_enc, compute_dtype).double()
        kth = vals[:, kk - 1]
        n_pos = (vals[:, :kk] > 0).sum(-1)
        certified = (kth > ceiling) | ((n_pos < kk) & (ceiling <= 0)) | ((ceiling <= 0) & (kth > 0))
        bad = (~certified).nonzero().flatten()
        if bad.numel():
            fix_vals, fix_ids = exact_rows(x[bad], W_enc, b_enc, k)
            values[bad], out_ids[bad] = fix_vals, fix_ids
    if kk < k:  # k > candidates cannot happen (C ≥ k), kept for clarity on tiny dictionaries
        values = torch.nn.functional.pad(values, (0, k - kk))
        out_ids = torch.nn.functional.pad(out_ids, (0, k - kk), value=PAD_ID)
    return values, out_ids
