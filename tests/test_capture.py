"""Capture: the output of block n equals `hidden_states[n + 1]` of a plain forward for every architecture (padded
batches included), later blocks and the LM head never run, block lists are found where they live, steering edits
exactly the block output."""

from __future__ import annotations

import pytest
import torch

from qscope_data.capture import LoadedModel, capture, load_model, resolve_blocks, steer
from qscope_data.errors import UsageError
from qscope_data.testing import ARCHS

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Hello", "How do I bake bread? Mix flour, water and salt."]


def _plain_hidden(lm: LoadedModel, text: str) -> tuple:
    enc = lm.tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        return enc["input_ids"].shape[1], lm.model(**enc, output_hidden_states=True).hidden_states


@pytest.mark.parametrize("arch", ARCHS)
def test_capture_equals_hidden_states_of_unpadded_forward(tiny_model_dir, arch):
    lm = load_model(str(tiny_model_dir(arch)))
    assert lm.blocks_path == "model.layers" and lm.n_layers == 4 and lm.is_causal
    enc = lm.tokenizer(TEXTS, padding=True, return_tensors="pt")
    assert lm.tokenizer.padding_side == "right"
    got = capture(lm, enc["input_ids"], enc["attention_mask"], [0, 2])
    for i, text in enumerate(TEXTS):
        n, hidden = _plain_hidden(lm, text)
        for layer in (0, 2):
            torch.testing.assert_close(got[layer][i, :n], hidden[layer + 1][0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["qwen3", "qwen3_5_moe"])
def test_blocks_after_the_deepest_layer_and_the_head_never_run(tiny_model_dir, arch):
    lm = load_model(str(tiny_model_dir(arch)))
    calls = {name: 0 for name in ("block0", "block1", "block2", "block3", "norm", "lm_head")}

    def counter(name):
        def hook(*_):
            calls[name] += 1
        return hook

    handles = [blk.register_forward_hook(counter(f"block{i}")) for i, blk in enumerate(lm.blocks)]
    handles.append(lm.model.model.norm.register_forward_hook(counter("norm")))
    handles.append(lm.model.lm_head.register_forward_hook(counter("lm_head")))
    enc = lm.tokenizer(TEXTS, padding=True, return_tensors="pt")
    capture(lm, enc["input_ids"], enc["attention_mask"], [1, 0])
    for h in handles:
        h.remove()
    assert calls == {"block0": 1, "block1": 1, "block2": 0, "block3": 0, "norm": 0, "lm_head": 0}


def test_layer_beyond_depth_names_both_numbers(tiny_model_dir):
    lm = load_model(str(tiny_model_dir("qwen3")))
    enc = lm.tokenizer(TEXTS[:1], return_tensors="pt")
    with pytest.raises(UsageError, match=r"layer 4 .*4 blocks"):
        capture(lm, enc["input_ids"], enc["attention_mask"], [4])


def test_multimodal_qwen3_5_wrapper_blocks_resolve_and_capture(tiny_model_dir):
    """Qwen3.5 checkpoints can load as …ForConditionalGeneration with blocks at model.language_model.layers."""
    from transformers import AutoTokenizer, Qwen3_5Config, Qwen3_5ForConditionalGeneration

    from qscope_data.testing import tiny_config

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir("qwen3_5"))
    cfg = Qwen3_5Config(
        text_config=tiny_config("qwen3_5", len(tokenizer), pad_token_id=tokenizer.pad_token_id).to_dict(),
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                           patch_size=4, temporal_patch_size=1, spatial_merge_size=1),
    )
    torch.manual_seed(0)
    model = Qwen3_5ForConditionalGeneration(cfg).eval()
    path, blocks = resolve_blocks(model)
    assert path == "model.language_model.layers" and len(blocks) == 4
    lm = LoadedModel(model, tokenizer, blocks, path, "tiny-vl", None, True, "qwen3_5")
    assert lm.d_model == 64
    enc = tokenizer(TEXTS, padding=True, return_tensors="pt")
    got = capture(lm, enc["input_ids"], enc["attention_mask"], [2])
    for i, text in enumerate(TEXTS):
        n, hidden = _plain_hidden(lm, text)
        torch.testing.assert_close(got[2][i, :n], hidden[3][0], atol=1e-5, rtol=1e-5)


def test_bert_encoder_capture_with_padding(minilm_dir):
    """Encoder-only models load as AutoModel; blocks at encoder.layer; padding masked (bidirectional attention)."""
    lm = load_model(str(minilm_dir))
    assert not lm.is_causal and lm.blocks_path == "encoder.layer" and (lm.n_layers, lm.d_model) == (6, 384)
    enc = lm.tokenizer(TEXTS, padding=True, return_tensors="pt")
    got = capture(lm, enc["input_ids"], enc["attention_mask"], [2])
    for i, text in enumerate(TEXTS):
        n, hidden = _plain_hidden(lm, text)
        torch.testing.assert_close(got[2][i, :n], hidden[3][0], atol=1e-4, rtol=1e-4)


def test_steer_adds_alpha_times_direction_to_the_block_output(tiny_model_dir):
    lm = load_model(str(tiny_model_dir("qwen3")))
    enc = lm.tokenizer(TEXTS[:1], return_tensors="pt")
    direction = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(0))
    base = capture(lm, enc["input_ids"], enc["attention_mask"], [1])[1]
    with steer(lm, 1, direction, alpha=3.0):
        steered = capture(lm, enc["input_ids"], enc["attention_mask"], [1])[1]
    torch.testing.assert_close(steered - base, (3.0 * direction).expand_as(base), atol=1e-5, rtol=1e-5)
