"""Offline test artefacts: tiny random Qwen-family models built from a config, a locally trained tokenizer with a
chat template, and SAE files written in every supported on-disk format.

Nothing here downloads anything. Tests, benchmarks and offline trials build what they load, then load it through the
same code paths a user's hub model or released SAE takes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch

Arch = Literal["qwen3", "qwen3_moe", "qwen3_5", "qwen3_5_moe"]
ARCHS: tuple[Arch, ...] = ("qwen3", "qwen3_moe", "qwen3_5", "qwen3_5_moe")

# ChatML, as the Qwen chat models use; `{% generation %}` marks assistant text for TRL's assistant-only loss.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '<|im_end|>' }}{% endif %}{{ '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_TRAINING_TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "You are a helpful assistant. Please answer the question carefully.",
    "I cannot help with that request, but here is some safety information.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Le renard brun rapide saute par-dessus le chien paresseux.",
    "El rápido zorro marrón salta sobre el perro perezoso.",
    "Быстрая коричневая лиса прыгает через ленивую собаку.",
    "敏捷的棕色狐狸跳过了懒狗。你好，世界！请回答这个问题。",
    "How do I bake bread? Mix flour, water, salt and yeast, then knead and bake.",
    "This is an idiot remark and you are a stupid fool, shut up.",
    "What is 12 plus 30? The answer is 42.",
    "Write a poem about the sea and the sky at night.",
]


def build_tokenizer(vocab_size: int = 384):
    """A byte-level BPE tokenizer trained on a few multilingual lines, with Qwen's special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_TRAINING_TEXT * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None,
        additional_special_tokens=["<|im_start|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_config(arch: Arch, vocab_size: int, *, hidden_size: int = 64, num_layers: int = 4, pad_token_id: int = 0):
    """A small config of the given Qwen architecture (hybrid linear/full attention for Qwen3.5, experts for MoE)."""
    from transformers import Qwen3Config, Qwen3MoeConfig, Qwen3_5MoeTextConfig, Qwen3_5TextConfig

    common = dict(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=4, num_key_value_heads=2, head_dim=hidden_size // 4, max_position_embeddings=512,
        pad_token_id=pad_token_id, tie_word_embeddings=False,
    )
    if arch == "qwen3":
        return Qwen3Config(**common)
    if arch == "qwen3_moe":
        return Qwen3MoeConfig(**common, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=hidden_size,
                              decoder_sparse_step=1, mlp_only_layers=[])
    hybrid = dict(
        linear_conv_kernel_dim=4, linear_key_head_dim=16, linear_value_head_dim=16, linear_num_key_heads=2,
        linear_num_value_heads=4,
        layer_types=["linear_attention" if (i + 1) % 2 else "full_attention" for i in range(num_layers)],
    )
    if arch == "qwen3_5":
        return Qwen3_5TextConfig(**common, **hybrid)
    if arch == "qwen3_5_moe":
        common.pop("intermediate_size")
        return Qwen3_5MoeTextConfig(**common, **hybrid, num_experts=4, num_experts_per_tok=2,
                                    moe_intermediate_size=hidden_size, shared_expert_intermediate_size=hidden_size)
    raise ValueError(f"unknown arch {arch}")


def build_tiny_model(arch: Arch = "qwen3", *, tokenizer=None, hidden_size: int = 64, num_layers: int = 4, seed: int = 0):
    """A random causal LM of `arch` in eval mode, float32."""
    from transformers import AutoModelForCausalLM

    tokenizer = tokenizer or build_tokenizer()
    config = tiny_config(arch, len(tokenizer), hidden_size=hidden_size, num_layers=num_layers,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.eval()


def save_tiny_model(out: str | Path, arch: Arch = "qwen3", **kwargs) -> Path:
    """Build a tiny model + tokenizer and save both, so tests load them through `from_pretrained(path)`."""
    out = Path(out)
    tokenizer = build_tokenizer()
    model = build_tiny_model(arch, tokenizer=tokenizer, **kwargs)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def random_sae(d_model: int, d_sae: int, k: int, *, layer: int = 0, seed: int = 0, dtype: torch.dtype = torch.float32,
               bias_shift: float = 0.0):
    """A random SAE with unit-norm decoder columns; `bias_shift` moves b_enc (negative → fewer positive features)."""
    from qscope_data.sae import SparseAutoencoder

    g = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(d_model, d_sae, generator=g)
    W_dec = W_dec / W_dec.norm(dim=0, keepdim=True)
    W_enc = W_dec.T.clone() + 0.1 * torch.randn(d_sae, d_model, generator=g)
    b_enc = 0.05 * torch.randn(d_sae, generator=g) + bias_shift
    b_dec = 0.01 * torch.randn(d_model, generator=g)
    return SparseAutoencoder(W_enc.to(dtype), b_enc.to(dtype), W_dec.to(dtype), b_dec.to(dtype), k=k, layer=layer,
                             source="random", format="qscope")


SAEFormat = Literal["qwen-scope", "saelens", "sparsify", "qscope"]


def write_sae(sae, out: str | Path, fmt: SAEFormat, *, layer: int | None = None) -> Path:
    """Write `sae` in a released on-disk format; returns what a user passes to `load_sae` (with `layer`)."""
    from safetensors.torch import save_file

    from qscope_data.sae import save_canonical

    out = Path(out)
    layer = sae.layer if layer is None else layer
    t = {n: getattr(sae, n).detach().contiguous() for n in ("W_enc", "W_dec", "b_enc", "b_dec")}
    if fmt == "qwen-scope":
        folder = out / f"SAE-Res-Tiny-W{max(sae.d_sae // 1024, 1)}K-L0_{sae.k}" if sae.d_sae % 1024 == 0 else out
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(t, folder / f"layer{layer}.sae.pt")
        return folder
    if fmt == "saelens":
        out.mkdir(parents=True, exist_ok=True)
        cfg = {"architecture": "topk", "d_in": sae.d_model, "d_sae": sae.d_sae, "k": sae.k,
               "hook_name": f"blocks.{layer}.hook_resid_post", "hook_layer": layer, "apply_b_dec_to_input": sae.input_bias,
               "dtype": str(sae.dtype).removeprefix("torch.")}
        (out / "cfg.json").write_text(json.dumps(cfg))
        save_file({"W_enc": t["W_enc"].T.contiguous(), "W_dec": t["W_dec"].T.contiguous(), "b_enc": t["b_enc"],
                   "b_dec": t["b_dec"]}, str(out / "sae_weights.safetensors"))
        return out
    if fmt == "sparsify":
        folder = out / f"layers.{layer}"
        folder.mkdir(parents=True, exist_ok=True)
        cfg = {"expansion_factor": sae.d_sae // sae.d_model, "normalize_decoder": True, "num_latents": sae.d_sae,
               "k": sae.k, "d_in": sae.d_model}
        (folder / "cfg.json").write_text(json.dumps(cfg))
        save_file({"encoder.weight": t["W_enc"], "encoder.bias": t["b_enc"], "W_dec": t["W_dec"].T.contiguous(),
                   "b_dec": t["b_dec"]}, str(folder / "sae.safetensors"))
        return out
    if fmt == "qscope":
        return save_canonical(sae, out)
    raise ValueError(f"unknown format {fmt}")
