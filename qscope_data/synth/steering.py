"""Text generation with a local causal LM, optionally steered along an SAE feature: h ← h + α · W_dec[:, f] at the
output of the SAE's block (`qscope_data.capture.steer`), on every position or on generated tokens only.

Used by the local generator of `qscope synth` and by `qscope steer`, which prints a baseline and a steered
continuation of one prompt side by side so a feature can be inspected before it is relied on (α < 0 suppresses).
"""

from __future__ import annotations

import math
import weakref

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from qscope_data.capture import LoadedModel, SteerPositions, check_layers, steer
from qscope_data.errors import UsageError
from qscope_data.sae import SparseAutoencoder

CAUSAL_REQUIRED = "steering generation needs a causal LM"


@dataclass(frozen=True)
class Steering:
    layer: int
    direction: torch.Tensor  # [d_model]
    alpha: float
    positions: SteerPositions = "all"


def feature_direction(sae: SparseAutoencoder, feature: int) -> torch.Tensor:
    """Feature f's decoder column W_dec[:, f] (float32): the direction its activation writes into the residual."""
    if not 0 <= feature < sae.d_sae:
        raise UsageError(f"--feature {feature} is out of range for the SAE (d_sae={sae.d_sae})")
    return sae.W_dec[:, feature].float()


def check_alpha(alpha: float) -> None:
    """nan / inf would turn every steered activation into nan (or inf), silently: refuse them."""
    if not math.isfinite(float(alpha)):
        raise UsageError(f"--alpha {alpha}: steering strength must be a finite number")


def feature_steering(lm: LoadedModel, sae: SparseAutoencoder, layer: int, feature: int, alpha: float,
                     positions: SteerPositions = "all") -> Steering:
    """The steering of feature `feature` of `sae` (read at block `layer`), checked against the model."""
    require_causal(lm)
    check_layers(lm, [layer])
    if sae.d_model != lm.d_model:
        raise UsageError(f"SAE {sae.source or ''} has d_model {sae.d_model}, but model {lm.model_id} has hidden size "
                         f"{lm.d_model}: its features cannot steer this model")
    if positions not in ("all", "generated"):
        raise UsageError(f"--positions {positions!r}: choose all or generated")
    check_alpha(alpha)
    return Steering(layer, feature_direction(sae, feature), float(alpha), positions)


def residual_scale(lm: LoadedModel, layer: int, texts: list[str], *, max_tokens: int = 128) -> float:
    """The median L2 norm of the residual stream at the output of block `layer` over the texts' tokens (position 0,
    the attention sink, left out). Why: α in units of this scale means the same on a model whose residual norms are
    in the thousands (Gemma's massive activations) as on one where they are ~10, so a steering sweep transfers."""
    from qscope_data.capture import capture

    tok = lm.tokenizer
    norms = []
    for text in texts:
        enc = tok([text], return_tensors="pt", truncation=True, max_length=max_tokens)
        hidden = capture(lm, enc["input_ids"], enc["attention_mask"], [layer])[layer][0].float()
        if hidden.shape[0] > 1:
            norms.append(hidden[1:].norm(dim=-1))
    if not norms:
        raise UsageError("residual scale: no text has more than one token")
    return float(torch.cat(norms).median())


def scaled_steering(lm: LoadedModel, layer: int, direction: torch.Tensor, alpha: float, scale: float,
                    positions: SteerPositions = "all") -> Steering:
    """Steering by α in units of `scale` (see `residual_scale`) along the unit vector of `direction`:
    h ← h + α · scale · d / ‖d‖. α = 0.1 adds a tenth of a typical residual norm; α < 0 suppresses."""
    check_layers(lm, [layer])
    unit = direction.float() / direction.float().norm().clamp_min(1e-12)
    return Steering(layer, unit, float(alpha) * float(scale), positions)


def require_causal(lm: LoadedModel) -> None:
    if not lm.is_causal or not hasattr(lm.model, "generate"):
        raise UsageError(f"{CAUSAL_REQUIRED} ({lm.model_id} is a {lm.architecture} encoder)")


def render_chat(tokenizer, messages: list[dict]) -> str:
    """The conversation as the model's chat template renders it, ready for the assistant's turn; a model without a
    template gets `role: content` lines and `assistant:`."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"


_NEWLINE_IDS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def newline_token_ids(tok) -> list[int]:
    """Ids of every token whose text holds a line break (cached per tokenizer). As extra eos ids they end a one-line
    continuation at the same token as transformers' ``stop_strings=["\\n"]``, which rebuilds its criteria — a scan of
    the whole vocabulary, seconds on Gemma's 262k tokens — on every generate call."""
    if tok not in _NEWLINE_IDS:
        texts = tok.batch_decode([[i] for i in range(len(tok))])
        _NEWLINE_IDS[tok] = [i for i, t in enumerate(texts) if "\n" in t]
    return _NEWLINE_IDS[tok]


def generate(
    lm: LoadedModel,
    prompts: list[str],
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    steering: Steering | None = None,
    batch_size: int = 8,
    add_special_tokens: bool = False,
    repetition_penalty: float = 1.0,
    stop_at_newline: bool = False,
    sequence_bias: list[list] | None = None,
    penalize_prompt: bool = True,
) -> list[str]:
    """Continuations of `prompts` (new text only, special tokens dropped). Greedy when temperature is 0, else sampled
    with a fixed seed per batch, so a run is repeatable. Batches are left-padded (generation appends on the right).
    `stop_at_newline` ends each continuation at its first line break (few-shot prompts of a base model: one line
    is one item), and returns that first line. `sequence_bias`: transformers' `[[token ids], bias]` pairs, added to
    the logit of a sequence's last token where the ids before it were just generated. `penalize_prompt=False`
    applies `repetition_penalty` to the generated tokens only: a few-shot prompt's words are what the continuation
    should be about, and penalising them pushes a small model off the topic."""
    require_causal(lm)
    tok = lm.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
    if stop_at_newline:
        eos = sorted(set(eos) | set(newline_token_ids(tok)))
    out: list[str] = []
    side = tok.padding_side
    tok.padding_side = "left"
    try:
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start:start + batch_size]
            enc = tok(batch, return_tensors="pt", padding=True, add_special_tokens=add_special_tokens)
            sampling: dict = dict(do_sample=True, temperature=temperature, top_p=top_p) if temperature > 0 else dict(do_sample=False)
            if repetition_penalty != 1.0 and penalize_prompt:
                sampling["repetition_penalty"] = repetition_penalty
            elif repetition_penalty != 1.0:
                from transformers import LogitsProcessorList, RepetitionPenaltyLogitsProcessor

                sampling["logits_processor"] = LogitsProcessorList([RepetitionPenaltyLogitsProcessor(
                    repetition_penalty, prompt_ignore_length=enc["input_ids"].shape[1])])
            if sequence_bias:
                sampling["sequence_bias"] = sequence_bias
            torch.manual_seed(seed + start)
            ctx = (steer(lm, steering.layer, steering.direction, steering.alpha, steering.positions)
                   if steering is not None and steering.alpha != 0 else nullcontext())
            with ctx, torch.inference_mode():
                ids = lm.model.generate(
                    input_ids=enc["input_ids"].to(lm.device), attention_mask=enc["attention_mask"].to(lm.device),
                    max_new_tokens=max_new_tokens, pad_token_id=pad_id, eos_token_id=eos or None, **sampling,
                )
            new = ids[:, enc["input_ids"].shape[1]:]
            texts = tok.batch_decode(new, skip_special_tokens=True)
            if stop_at_newline:
                texts = [t.lstrip(" ").split("\n", 1)[0] for t in texts]
            out.extend(t.strip() for t in texts)
    finally:
        tok.padding_side = side
    return out


@dataclass
class SteerComparison:
    prompt: str
    feature: int
    layer: int
    alpha: float
    positions: str
    baseline: str
    steered: str
    baseline_activation: float  # the feature's max activation over prompt + continuation (unsteered re-encode)
    steered_activation: float


def compare_steering(
    lm: LoadedModel,
    sae: SparseAutoencoder,
    layer: int,
    feature: int,
    alpha: float,
    prompt: str,
    *,
    positions: SteerPositions = "all",
    max_new_tokens: int = 40,
    chat: bool = True,
    seed: int = 0,
) -> SteerComparison:
    """Greedy baseline vs steered continuation of `prompt`, and how strongly each text (re-encoded without steering,
    through the encode stage) fires the feature."""
    steering = feature_steering(lm, sae, layer, feature, alpha, positions)
    rendered = render_chat(lm.tokenizer, [{"role": "user", "content": prompt}]) if chat else prompt
    kwargs = dict(max_new_tokens=max_new_tokens, temperature=0.0, seed=seed, add_special_tokens=not chat)
    baseline = generate(lm, [rendered], **kwargs)[0]
    steered = generate(lm, [rendered], steering=steering, **kwargs)[0]
    acts = _feature_activation(lm, sae, layer, feature, [rendered + baseline, rendered + steered])
    return SteerComparison(prompt, feature, layer, float(alpha), positions, baseline, steered, acts[0], acts[1])


def _feature_activation(lm: LoadedModel, sae: SparseAutoencoder, layer: int, feature: int, texts: list[str]) -> list[float]:
    from qscope_data.encode import EncodeOptions, featurize
    from qscope_data.inputs import Record

    records = [Record(doc_id=f"t{i}", file="<steer>", line=i + 1, text=t, messages=None, fields={})
               for i, t in enumerate(texts)]
    table = featurize(lm, {layer: sae}, records, EncodeOptions(max_tokens=1024, drop_text=True))[layer]
    acts = {row["doc_id"]: dict(zip(row["feature_ids"], row["max_acts"]))
            for row in table.select(["doc_id", "feature_ids", "max_acts"]).to_pylist()}
    return [float(acts.get(f"t{i}", {}).get(feature, 0.0)) for i in range(len(texts))]
