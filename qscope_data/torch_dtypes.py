"""Parsing dtype names given on the command line or in configs."""

from __future__ import annotations

import torch

from qscope_data.errors import UsageError

DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "float64": torch.float64,
}


def parse_dtype(name: str | None, default: torch.dtype | None = None) -> torch.dtype | None:
    if name is None or name == "auto":
        return default
    try:
        return DTYPES[name.lower()]
    except KeyError:
        raise UsageError(f"unknown dtype {name!r} (choose from {', '.join(sorted(DTYPES))})") from None
