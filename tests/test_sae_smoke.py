import torch

from qscope_data.sae import SparseAutoencoder


def test_encode_matches_reference_smoke():
    torch.manual_seed(0)
    W = torch.randn(300, 32)
    sae = SparseAutoencoder(W, torch.randn(300) * 0.1, W.T.clone(), torch.zeros(32), k=20)
    x = torch.randn(50, 32)
    v_ref, i_ref = sae.encode(x, impl="reference")
    v, i = sae.encode(x)
    assert torch.equal(i, i_ref)
    assert torch.allclose(v, v_ref, rtol=1e-5)
