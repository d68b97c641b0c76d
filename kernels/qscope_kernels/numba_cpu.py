"""Compiled CPU loops for the exact encode: the blocked path's running top-C and the finish's float64 re-score.

Why compiled: in torch ops both steps materialise what they only need to stream. Selecting a tile's top-C
with `topk` reads the tile several times and re-sorts [running | tile] per tile; re-scoring gathers every
candidate's W_enc row into a buffer, copies it to float64 and only then takes the dot products (≈ 56 bytes of
memory traffic per weight, more than the GEMM itself at d_sae = 32,768). Here:

- `merge_tile` keeps a per-row min-heap of the C best (value, id): one pass over the tile, a comparison per
  element, a heap update only for the few values above the row's current C-th (≈ C·ln(d_sae/C) per row over the
  whole dictionary). Values equal to the heap minimum are dropped, which keeps the ceiling valid: everything
  dropped is ≤ the final minimum.
- `rescore_rows` accumulates (x − x_offset)·w + b in float64 straight from the stored rows (products of fp32
  numbers are exact in float64), rows in parallel; no buffers beyond the [N, C] output. (Visiting the pairs in
  feature order, so a W_enc row shared by several rows is read once, measured no faster at 2,048 × 32,768.)

Both take float32 (or float64) arrays; other dtypes (bf16/fp16) keep the torch paths. Signatures are compiled
eagerly and cached on disk (`cache=True`), so a call never pays for compilation: the first import after an install
compiles (~9 s on the 2-core dev VM), later imports load the cache (~1 s, on top of torch). Threads follow torch's
setting, and torch's setting survives the call (see `_torch_threads`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numba
import numpy as np
import torch
from numba import float32, float64, int64, prange, void


def _restore_torch_threads(n: int) -> None:
    """Put torch's thread count back to `n`. Why: numba's OpenMP layer, once started (by importing the parallel loops
    below or by their first call), may set the process-wide OpenMP thread count to NUMBA_NUM_THREADS — every core —
    and torch reads that count: a `torch.set_num_threads(1)` made before the first encode silently became 2 on the
    dev VM, and every forward after it ran oversubscribed."""
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


# Compiling (or loading from the cache) the parallel loops below can start numba's OpenMP layer, at import.
_TORCH_THREADS_AT_IMPORT = torch.get_num_threads()

_MERGE_SIG = [void(t[:, ::1], int64, t[:, ::1], int64[:, ::1]) for t in (float32, float64)]


@numba.njit(_MERGE_SIG, parallel=True, cache=True, nogil=True)
def _merge_tile(tile, offset, heap_v, heap_i):  # pragma: no cover - compiled
    m, w = tile.shape
    c = heap_v.shape[1]
    for r in prange(m):
        hv = heap_v[r]
        hi = heap_i[r]
        row = tile[r]
        floor = hv[0]
        for j in range(w):
            v = row[j]
            if v > floor:
                # replace the root (the row's current C-th) and sift down
                pos = 0
                while True:
                    child = 2 * pos + 1
                    if child >= c:
                        break
                    if child + 1 < c and hv[child + 1] < hv[child]:
                        child += 1
                    if hv[child] >= v:
                        break
                    hv[pos] = hv[child]
                    hi[pos] = hi[child]
                    pos = child
                hv[pos] = v
                hi[pos] = offset + j
                floor = hv[0]


_RESCORE_SIG = [
    void(xt[:, ::1], wt[:, ::1], float64[::1], float64[::1], int64[:, ::1], int64[::1], float64[:, ::1])
    for xt in (float32, float64) for wt in (float32, float64)
]


@numba.njit(_RESCORE_SIG, parallel=True, cache=True, nogil=True, fastmath=True)
def _rescore_rows(x, w, b64, offset, ids, widths, out):  # pragma: no cover - compiled
    n, d = x.shape
    for r in prange(n):
        xr = np.empty(d, dtype=np.float64)
        for i in range(d):
            xr[i] = np.float64(x[r, i]) - offset[i]
        for j in range(widths[r]):
            f = ids[r, j]
            if f < 0:
                continue
            acc = 0.0
            for i in range(d):
                acc += xr[i] * np.float64(w[f, i])
            out[r, j] = acc + b64[f]


_restore_torch_threads(_TORCH_THREADS_AT_IMPORT)

COMPILED = (torch.float32, torch.float64)


def supports(*tensors: torch.Tensor) -> bool:
    """True when every tensor is a CPU fp32/fp64 tensor (what the compiled loops take)."""
    return all(not t.is_cuda and t.dtype in COMPILED for t in tensors)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


@contextmanager
def _torch_threads() -> Iterator[None]:
    """Run numba's loops on as many threads as torch, and leave torch's count as it was."""
    n = torch.get_num_threads()
    numba.set_num_threads(max(1, min(numba.config.NUMBA_NUM_THREADS, n)))
    try:
        yield
    finally:
        _restore_torch_threads(n)


def new_heap(n: int, c: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """An empty running top-C: values −inf, ids −1 (a valid min-heap)."""
    return torch.full((n, c), float("-inf"), dtype=dtype), torch.full((n, c), -1, dtype=torch.long)


def merge_tile(tile: torch.Tensor, offset: int, heap_v: torch.Tensor, heap_i: torch.Tensor) -> None:
    """Fold a contiguous [m, w] tile (columns = features offset…offset+w−1) into the rows' min-heaps in place."""
    with _torch_threads():
        _merge_tile(tile.numpy(), offset, heap_v.numpy(), heap_i.numpy())


def rescore_rows(
    x: torch.Tensor, W_enc: torch.Tensor, b64: torch.Tensor, ids: torch.Tensor, widths: torch.Tensor,
    offset: torch.Tensor | None,
) -> torch.Tensor:
    """[N, width] float64: (x − offset)·W_enc[id] + b for each row's first widths[n] ids; −inf elsewhere and for ids < 0."""
    n, width = ids.shape
    out = torch.full((n, width), float("-inf"), dtype=torch.float64)
    off = torch.zeros(x.shape[1], dtype=torch.float64) if offset is None else offset.double()
    with _torch_threads():
        _rescore_rows(_np(x), _np(W_enc), _np(b64.double()), _np(off), _np(ids.long()), _np(widths.long()), out.numpy())
    return out
