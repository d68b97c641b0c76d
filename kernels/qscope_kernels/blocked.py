"""Blocked encode: never holds a full-width row block; scratch is bounded by the tile sizes whatever d_sae is.

The dictionary is visited one tile of `dict_tile` features at a time (outer loop, so a W_enc tile is read
from memory once and, for half-precision weights, cast to fp32 once); each token tile's pre-activations go
into one preallocated fp32 scratch buffer with `torch.addmm(..., out=)` (bias fused). On the CPU with fp32/fp64
tensors each tile streams once through a compiled per-row min-heap of the C = k + margin best
(`numba_cpu.merge_tile`); otherwise the tile's per-row top-C is found through group maxima (`tile_topk`) and
merged exactly into a running top-C per token by `topk` over [running | tile's C]. Anything dropped along the
way is ≤ the row's final C-th fast value, which is therefore the ceiling the canonical finish certifies against.

Peak extra memory ≈ token_tile·dict_tile·4 B (scratch) + N·C·12 B (running candidates; the torch merge adds
token_tile·C·(4 + 8)·16 B of gathered group members) + the finish's bounded chunks; with half weights, + the fp32
cast of one W_enc tile (the tile is narrowed to keep that under CAST_BUDGET_BYTES).
"""

from __future__ import annotations

import torch

from qscope_kernels import numba_cpu
from qscope_kernels.canonical import DEFAULT_MARGIN, candidate_count, fast_bias, finish

TOKEN_TILE = 2048
DICT_TILE = 4096
CAST_BUDGET_BYTES = 32 << 20
GROUP = 16


def _dict_tile(dict_tile: int, d_sae: int, d_model: int, half_weights: bool) -> int:
    tn = min(dict_tile, d_sae)
    if half_weights:
        tn = min(tn, max(256, CAST_BUDGET_BYTES // (4 * d_model)))
    return max(1, tn)


def blocked_topk_encode(
    x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, k: int, *, margin: int = DEFAULT_MARGIN,
    token_tile: int = TOKEN_TILE, dict_tile: int = DICT_TILE, x_offset: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    n, d = x.shape
    d_sae = W_enc.shape[0]
    compute = torch.float32
    c = candidate_count(k, d_sae, margin)
    tm = min(token_tile, n)
    tn = _dict_tile(dict_tile, d_sae, d, W_enc.dtype != compute)
    scratch = torch.empty(tm * tn, dtype=compute, device=x.device)
    compiled = numba_cpu.supports(x, W_enc)
    if compiled:  # per-row min-heaps, one streaming pass per tile
        run_v, run_i = numba_cpu.new_heap(n, c, compute)
        merge = numba_cpu.merge_tile
    else:
        run_v = torch.full((n, c), float("-inf"), dtype=compute, device=x.device)
        run_i = torch.full((n, c), -1, dtype=torch.long, device=x.device)
        merge = _merge
    w_max = torch.zeros((), dtype=compute, device=x.device)
    b32 = fast_bias(W_enc, b_enc, x_offset)
    for j0 in range(0, d_sae, tn):
        j1 = min(d_sae, j0 + tn)
        w = W_enc[j0:j1].to(compute)
        w_max = torch.maximum(w_max, w.norm(dim=-1).max())
        for i0 in range(0, n, tm):
            i1 = min(n, i0 + tm)
            tile = scratch[: (i1 - i0) * (j1 - j0)].view(i1 - i0, j1 - j0)
            torch.addmm(b32[j0:j1], x[i0:i1].to(compute), w.T, out=tile)
            merge(tile, j0, run_v[i0:i1], run_i[i0:i1])
    stats = (float(w_max), float(b32.abs().max()) if d_sae else 0.0)
    del scratch, w  # the finish's buffers take their place (same size): peak = max(tile phase, finish phase)
    return finish(x, W_enc, b_enc, k, run_i, run_v, compute_dtype=compute, stats=stats, x_offset=x_offset,
                  budget_bytes=tm * tn * 4 if not x.is_cuda else None)


def _merge(tile: torch.Tensor, offset: int, run_v: torch.Tensor, run_i: torch.Tensor) -> None:
    """Fold one [m, w] tile of fast pre-activations into the running top-C (in place, kept sorted descending)."""
    c = run_v.shape[1]
    add_v, add_c = tile_topk(tile, c)
    vals, pos = torch.topk(torch.cat([run_v, add_v], 1), c, dim=-1)
    run_i.copy_(torch.gather(torch.cat([run_i, add_c.add_(offset)], 1), 1, pos))
    run_v.copy_(vals)


def tile_topk(tile: torch.Tensor, c: int, group: int = GROUP) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-c of each row of a tile (values, column ids), through group maxima when the tile is wide.

    Columns are cut into `w / group` strided groups {g, g + w/group, …}; the top-c elements of a row lie in
    its c groups with the largest maxima (each such element's group has a max ≥ it, and at most c groups can
    hold one), and anything dropped is ≤ the c-th kept value. The group maxima are one vectorised pass
    (`amax` over a middle dimension), so the selection reads the tile about once instead of a full `topk`.
    """
    m, w = tile.shape
    n_groups = w // group
    if w % group or n_groups < 2 * c:
        return torch.topk(tile, min(c, w), dim=-1)
    maxima = tile.view(m, group, n_groups).amax(1)
    _, best = torch.topk(maxima, c, dim=-1, sorted=False)
    cols = (best.unsqueeze(-1) + torch.arange(group, device=tile.device) * n_groups).view(m, c * group)
    vals, pos = torch.topk(torch.gather(tile, 1, cols), c, dim=-1)
    return vals, torch.gather(cols, 1, pos)
