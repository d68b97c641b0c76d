"""The logit lens of a feature: which output tokens its decoder direction promotes and suppresses.

For feature f with decoder column d = W_dec[:, f] / ‖W_dec[:, f]‖, the score of token t is

    s_t = W_U[t] · (N(d) − N(0))

with W_U the model's unembedding (output embedding matrix, no bias) and N the model's final norm applied to d as if
d were the residual stream. For RMSNorm (Qwen, Llama, Gemma — Gemma's (1 + w) weight included) N(d) = w ⊙ d / rms(d)
and N(0) = 0; for LayerNorm N(0) is its bias, which shifts every feature's logits alike and is therefore removed.
The rescaling by 1/rms(d) is one positive number per feature, so the ranking is that of W_U (w ⊙ d): only the
norm's elementwise weight changes which tokens come first. Logit soft-capping (Gemma) is monotonic and left out.

It is a first-order reading — what adding d at the last layer would do to the logits — and is most telling for
features of late layers; for early layers the tokens often look arbitrary.
"""

from __future__ import annotations

import torch
from torch import nn

from qscope_data.capture import LoadedModel
from qscope_data.errors import UsageError

NORM_PATHS = (
    "model.norm",                      # Qwen3, Qwen3.5, Llama, Mistral, Gemma
    "model.language_model.norm",       # multimodal wrappers
    "language_model.model.norm",
    "transformer.ln_f",                # GPT-2, GPT-J
    "gpt_neox.final_layer_norm",       # Pythia
    "model.decoder.final_layer_norm",  # OPT
)


def final_norm(model: nn.Module) -> tuple[str, nn.Module] | None:
    """(path, module) of the norm applied to the residual stream before the unembedding, if the model has one we know."""
    for path in NORM_PATHS:
        obj: object = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.Module):
            return path, obj
    return None


def unembedding(lm: LoadedModel) -> torch.Tensor:
    """W_U as [vocab, d_model] float32 (tied or not)."""
    if not lm.is_causal:
        raise UsageError(f"model {lm.model_id} is not a causal LM: it has no unembedding for the logit lens")
    head = lm.model.get_output_embeddings()
    if head is None or not hasattr(head, "weight"):
        raise UsageError(f"model {lm.model_id}: cannot find its output embeddings (LM head)")
    return head.weight.detach().float()


def lens_inputs(lm: LoadedModel, directions: torch.Tensor) -> tuple[torch.Tensor, str]:
    """N(d) − N(0) for unit-normalised rows of `directions` [n, d_model], and which norm was used."""
    d = directions.float()
    d = d / d.norm(dim=1, keepdim=True).clamp_min(1e-12)
    found = final_norm(lm.model)
    if found is None:
        return d, "none"
    path, norm = found
    param = next(norm.parameters(), None)
    dtype, device = (param.dtype, param.device) if param is not None else (torch.float32, d.device)
    with torch.inference_mode():
        x = d.to(device=device, dtype=dtype)
        out = norm(x).float() - norm(torch.zeros_like(x[:1])).float()
    return out.cpu(), f"{path} ({type(norm).__name__})"


def logit_lens(lm: LoadedModel, W_dec: torch.Tensor, features: list[int], k: int = 10) -> dict[int, dict]:
    """feature -> {promoted: [{token_id, token, score}], suppressed: [...], norm}. `W_dec` is [d_model, d_sae]."""
    if not features:
        return {}
    W_U = unembedding(lm)
    x, norm_name = lens_inputs(lm, W_dec[:, features].T)
    scores = x.to(W_U.device) @ W_U.T  # [n, vocab]
    k = min(k, scores.shape[1])
    top = torch.topk(scores, k, dim=1)
    bottom = torch.topk(-scores, k, dim=1)
    def decode(t: int) -> str:
        return lm.tokenizer.decode([t], skip_special_tokens=False)

    def rows(ids: torch.Tensor, vals: torch.Tensor) -> list[dict]:
        return [{"token_id": int(t), "token": decode(int(t)), "score": round(float(v), 5)} for t, v in zip(ids, vals)]

    return {f: {"promoted": rows(top.indices[i], top.values[i]), "suppressed": rows(bottom.indices[i], -bottom.values[i]),
                "norm": norm_name}
            for i, f in enumerate(features)}


def decoder_neighbours(W_dec: torch.Tensor, features: list[int], n: int) -> dict[int, list[tuple[int, float]]]:
    """feature -> the `n` other features whose decoder directions have the largest cosine with its own."""
    if n <= 0 or not features:
        return {f: [] for f in features}
    W = W_dec.float()
    W = W / W.norm(dim=0, keepdim=True).clamp_min(1e-12)
    sims = W[:, features].T @ W  # [len(features), d_sae]
    sims[torch.arange(len(features)), torch.as_tensor(features)] = float("-inf")
    top = torch.topk(sims, min(n, W.shape[1] - 1), dim=1)
    return {f: [(int(i), float(v)) for i, v in zip(top.indices[r], top.values[r])] for r, f in enumerate(features)}
