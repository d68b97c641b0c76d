"""IEEE fp32 matmuls for the exact kernels, whatever the caller set.

The canonical finish certifies a fast path's candidates with an error bound that assumes IEEE fp32 accumulation.
TF32 on CUDA (`torch.backends.cuda.matmul.allow_tf32`, `set_float32_matmul_precision("high")`) rounds matmul
inputs to 10 mantissa bits, and the same setting lets oneDNN on a CPU compute fp32 matmuls in TF32 or bf16
("medium"): either breaks the bound silently. So every exact encode runs inside `ieee_fp32()`, on every device.

PyTorch ≥ 2.9 keeps two views of this state — the legacy one (`allow_tf32`, `get_float32_matmul_precision`) and
per-backend `fp32_precision` leaves — and raises when code reads the legacy view of a state set through both. The
guard therefore enters through `set_float32_matmul_precision("highest")` (which sets both views consistently) and
restores the caller's exact state: the legacy precision first, then the per-backend leaves. cuDNN is left alone:
no convolution or RNN is on the encode path, and switching it through either API would leave the other view
mixed for code running after the encode.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

_MATMUL_BACKENDS = (torch.backends.cuda.matmul, torch.backends.mkldnn.matmul)


def matmul_precision() -> tuple[str, ...]:
    """The per-backend fp32 matmul precision (CUDA, oneDNN): "ieee", "tf32", "bf16" or "none" (inherit)."""
    return tuple(b.fp32_precision for b in _MATMUL_BACKENDS)


@contextmanager
def ieee_fp32() -> Iterator[None]:
    """fp32 matmuls in IEEE fp32 inside the block (every backend); the caller's settings are restored after."""
    leaves = matmul_precision()
    try:
        legacy = torch.get_float32_matmul_precision()
    except RuntimeError:  # the caller set precision through the per-backend API; the legacy view is its default
        legacy = "highest"
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(legacy)
        for backend, value in zip(_MATMUL_BACKENDS, leaves):
            backend.fp32_precision = value
