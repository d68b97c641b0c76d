"""SparseAutoencoder.encode gives the reference answer through every implementation (triton: test_kernels.py,
under the interpreter in a subprocess), for fp32 and half SAEs, half inputs, and SAEs that subtract b_dec."""

from __future__ import annotations

import pytest
import torch

from qscope_data.sae import SparseAutoencoder

IMPLS = ["auto", "dense", "blocked"]


def make_sae(d_model: int = 48, d_sae: int = 700, k: int = 24, *, input_bias: bool = False, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    W_enc = torch.randn(d_sae, d_model, generator=g) / d_model ** 0.5
    return SparseAutoencoder(
        W_enc=W_enc, b_enc=torch.randn(d_sae, generator=g) * 0.1, W_dec=W_enc.T.clone(),
        b_dec=torch.randn(d_model, generator=g), k=k, input_bias=input_bias,
    )


def assert_same_as_reference(sae: SparseAutoencoder, x: torch.Tensor, impl: str) -> None:
    ref_v, ref_i = sae.encode(x, impl="reference")
    values, ids = sae.encode(x, impl=impl)
    assert torch.equal(ids, ref_i)
    torch.testing.assert_close(values, ref_v, rtol=1e-5, atol=0)


@pytest.mark.parametrize("impl", IMPLS)
def test_fp32_sae(impl):
    sae = make_sae()
    x = torch.randn(64, 48, generator=torch.Generator().manual_seed(1))
    assert_same_as_reference(sae, x, impl)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_sae_and_half_input(impl, dtype):
    sae = make_sae(seed=2).to(dtype=dtype)
    x = torch.randn(40, 48, generator=torch.Generator().manual_seed(3)).to(dtype)
    assert_same_as_reference(sae, x, impl)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_input_bias_sae(impl, dtype):
    # sparsify / SAELens-style: b_dec is subtracted before encoding; the reference does it in float64.
    sae = make_sae(seed=4, input_bias=True)
    x = (torch.randn(50, 48, generator=torch.Generator().manual_seed(5)) * 4).to(dtype)
    assert_same_as_reference(sae, x, impl)


@pytest.mark.parametrize("impl", IMPLS)
def test_reconstruction_metrics_identical_across_impls(impl):
    sae = make_sae(seed=6)
    x = torch.randn(32, 48, generator=torch.Generator().manual_seed(7))
    assert sae.reconstruction_metrics(x, impl=impl) == sae.reconstruction_metrics(x, impl="reference")


def test_encode_rejects_wrong_width():
    sae = make_sae()
    with pytest.raises(ValueError, match="encode expects"):
        sae.encode(torch.randn(3, 47))
