"""The SAE quality score on a real (tiny) Qwen3: the spliced loss is next-token cross-entropy computed the plain way
(full logits, every position) with block n's output replaced; sampling positions scores exactly the sampled
positions; loss recovered puts clean at 1 and zero-ablation at 0."""

from __future__ import annotations

import math

import pytest
import torch

from qscope_data.capture import edit_block_output, load_model
from qscope_data.sae import quality
from qscope_data.testing import random_sae, save_tiny_model

TEXTS = ["the quick brown fox jumps over the lazy dog", "bake bread with flour water salt", "a poem about the sea",
         "der schnelle braune Fuchs springt", "you are a helpful assistant, please answer the question carefully",
         "sky night", "le renard brun rapide saute par-dessus le chien paresseux"]
LAYER = 1


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    return load_model(str(save_tiny_model(tmp_path_factory.mktemp("model"), hidden_size=64, num_layers=3)),
                      dtype=torch.float32)


def plain_token_losses(lm, texts, replace=None) -> list[torch.Tensor]:
    """Per text, the cross-entropy of each real next token from a full forward of that text alone (no padding),
    block LAYER's output at positions ≥ 1 replaced by `replace` — the definition, written independently."""
    out = []
    for text in texts:
        ids = lm.tokenizer(text, return_tensors="pt", truncation=True, max_length=128)["input_ids"]

        def edit(h, _call):
            new = h.clone()
            new[:, 1:] = replace(h[:, 1:].float()).to(h.dtype)
            return new

        with torch.no_grad():
            if replace is None:
                logits = lm.model(input_ids=ids).logits
            else:
                with edit_block_output(lm, LAYER, edit):
                    logits = lm.model(input_ids=ids).logits
        out.append(torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="none"))
    return out


def test_spliced_loss_is_the_plain_cross_entropy_with_the_block_output_replaced(lm):
    variants = {"clean": None, "zero": lambda h: torch.zeros_like(h), "half": lambda h: 0.5 * h}
    losses = quality.spliced_losses(lm, LAYER, TEXTS, variants, batch_size=3)
    for name, fn in variants.items():
        expected = torch.cat(plain_token_losses(lm, TEXTS, fn)).mean()
        assert losses[name] == pytest.approx(float(expected), rel=1e-4), name
    assert losses["zero"] != pytest.approx(losses["clean"], rel=1e-6)  # the edit reached the forward


def test_sampled_positions_score_exactly_the_sampled_positions(lm):
    """With position_fraction < 1 the loss is the mean over the drawn positions — the same draw for every variant —
    and a different seed draws different positions."""
    enc = lm.tokenizer(TEXTS, padding=True, return_tensors="pt")
    real = enc["attention_mask"].bool()
    keep = quality.loss_positions(real, 0.4, torch.Generator().manual_seed(5))
    assert 0 < int(keep.sum()) < int((real[:, :-1] & real[:, 1:]).sum())
    assert not (keep & ~real).any() and not keep[:, -1].any()

    per_text = plain_token_losses(lm, TEXTS)
    # Map each padded row's kept positions to its unpadded text (padding is on one side; offset = pad count).
    picked = []
    for row, losses in enumerate(per_text):
        positions = real[row].nonzero().flatten()
        offset = int(positions[0])
        picked += [losses[int(p) - offset] for p in keep[row].nonzero().flatten()]
    got = quality.spliced_losses(lm, LAYER, TEXTS, {"clean": None}, batch_size=len(TEXTS), position_fraction=0.4,
                                 seed=5)["clean"]
    assert got == pytest.approx(float(torch.stack(picked).mean()), rel=1e-4)
    other = quality.spliced_losses(lm, LAYER, TEXTS, {"clean": None}, batch_size=len(TEXTS), position_fraction=0.4,
                                   seed=6)["clean"]
    assert other != pytest.approx(got, rel=1e-6)
    with pytest.raises(ValueError, match="position_fraction"):
        quality.spliced_losses(lm, LAYER, TEXTS, {"clean": None}, position_fraction=0.0)


def test_loss_recovered_places_the_sae_between_zero_ablation_and_clean(lm):
    enc = lm.tokenizer(TEXTS, padding=True, return_tensors="pt")
    from qscope_data.capture import capture

    acts = capture(lm, enc["input_ids"], enc["attention_mask"], [LAYER])[LAYER]
    mask = enc["attention_mask"].bool()
    x = acts[mask & (mask.cumsum(1) > 1)].float()
    sae = random_sae(64, 256, 8, layer=LAYER, seed=1)
    rows = {q.name: q for q in quality.evaluate_sae(lm, sae, LAYER, x, TEXTS)}
    assert rows["clean"].loss_recovered == 1.0 and rows["zero-ablation"].loss_recovered == 0.0
    clean, zero = rows["clean"].loss, rows["zero-ablation"].loss
    for name in ("sae", "random SAE", "mean-ablation"):
        q = rows[name]
        assert q.loss_recovered == pytest.approx((zero - q.loss) / (zero - clean)), name
    assert rows["sae"].l0 <= 8 and not math.isnan(rows["sae"].explained_variance)
