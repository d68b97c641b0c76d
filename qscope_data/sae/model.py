"""The one SparseAutoencoder type every stage uses, and the reference encode every faster path is tested against.

Orientation is the Qwen-Scope release's: W_enc (d_sae, d_model), W_dec (d_model, d_sae), b_enc (d_sae,),
b_dec (d_model,). Suites that subtract b_dec before encoding (EleutherAI sparsify, SAELens with
`apply_b_dec_to_input`) set `input_bias`; Qwen-Scope does not.

Encode contract (all implementations): values float32 [N, k] in descending order, ties broken by ascending id;
slots left over when fewer than k pre-activations are positive hold value 0 and id -1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

EncodeImpl = Literal["auto", "reference", "dense", "blocked", "triton"]
PAD_ID = -1


@dataclass
class SparseAutoencoder:
    W_enc: torch.Tensor
    b_enc: torch.Tensor
    W_dec: torch.Tensor
    b_dec: torch.Tensor
    k: int
    layer: int | None = None
    hook: str = "resid_post"
    source: str = ""
    format: str = "qscope"
    input_bias: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def d_sae(self) -> int:
        return int(self.W_enc.shape[0])

    @property
    def d_model(self) -> int:
        return int(self.W_enc.shape[1])

    @property
    def dtype(self) -> torch.dtype:
        return self.W_enc.dtype

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "SparseAutoencoder":
        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device=device, dtype=dtype)

        return SparseAutoencoder(
            move(self.W_enc), move(self.b_enc), move(self.W_dec), move(self.b_dec), self.k, self.layer,
            self.hook, self.source, self.format, self.input_bias, dict(self.extra),
        )

    def describe(self) -> dict:
        return {
            "format": self.format,
            "source": self.source,
            "d_model": self.d_model,
            "d_sae": self.d_sae,
            "k": self.k,
            "layer": self.layer,
            "hook": self.hook,
            "dtype": str(self.dtype).removeprefix("torch."),
            "input_bias": self.input_bias,
        }

    # -- encode / decode -------------------------------------------------------------------------------------
    def encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        """x as the encoder sees it (b_dec subtracted for suites that do so), in x's own dtype."""
        if self.input_bias:
            return x - self.b_dec.to(x.dtype)
        return x

    def pre_activations(self, x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Dense x · W_encᵀ + b_enc. Materialises [N, d_sae]: for references, SASFT baselines and small inputs."""
        xe = self.encoder_input(x.to(dtype))
        return torch.addmm(self.b_enc.to(dtype), xe, self.W_enc.to(dtype).T)

    def encode(self, x: torch.Tensor, impl: EncodeImpl = "auto") -> tuple[torch.Tensor, torch.Tensor]:
        """ReLU(TopK_k(pre)) as (values float32 [N, k], ids int64 [N, k])."""
        if x.ndim != 2 or x.shape[-1] != self.d_model:
            raise ValueError(f"encode expects [N, {self.d_model}] activations, got {tuple(x.shape)}")
        if impl == "reference":
            return reference_encode(self.encoder_input(x.double()), self.W_enc, self.b_enc, self.k)
        from qscope_kernels import topk_encode

        # The input bias goes to the kernel, which subtracts it exactly (as the reference does in float64).
        offset = self.b_dec if self.input_bias else None
        return topk_encode(x, self.W_enc, self.b_enc, self.k, impl=impl, x_offset=offset)

    def decode(self, values: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """x̂ = W_dec · z + b_dec from the sparse (values, ids) form; padding slots contribute nothing."""
        W = self.W_dec.float()
        safe_ids = ids.clamp_min(0).long()
        # [N, k, d_model] gather would be large; index columns instead and contract over k.
        cols = W.T[safe_ids]  # [N, k, d_model]
        vals = torch.where(ids >= 0, values.float(), torch.zeros_like(values, dtype=torch.float32))
        return torch.einsum("nk,nkd->nd", vals, cols) + self.b_dec.float()

    def reconstruction_metrics(self, x: torch.Tensor, impl: EncodeImpl = "auto") -> dict[str, float]:
        """MSE, explained variance and mean L0 of encode→decode on x."""
        values, ids = self.encode(x, impl=impl)
        x32 = x.float()
        x_hat = self.decode(values, ids)
        err = (x32 - x_hat).pow(2).sum()
        total = (x32 - x32.mean(0, keepdim=True)).pow(2).sum().clamp_min(1e-12)
        return {
            "mse": float((x32 - x_hat).pow(2).mean()),
            "explained_variance": float(1.0 - err / total),
            "l0": float((values > 0).sum(-1).float().mean()),
        }


def reference_encode(
    x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The straightforward definition, in float64, materialising every pre-activation. Slow; exact.

    A stable descending sort puts equal values in ascending id order, which is the tie rule of the contract.
    """
    pre = torch.addmm(b_enc.double(), x.double(), W_enc.double().T)
    vals, idx = torch.sort(pre, dim=-1, descending=True, stable=True)
    vals, idx = vals[:, :k], idx[:, :k]
    positive = vals > 0
    values = torch.where(positive, vals, torch.zeros_like(vals)).float()
    ids = torch.where(positive, idx, torch.full_like(idx, PAD_ID))
    return values, ids
