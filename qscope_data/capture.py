"""Load a model, find its decoder blocks, and read (or edit) the residual stream at the output of block n.

`layer{n}.sae.pt` reads the output of block n (0-indexed) — `hidden_states[n + 1]` — so we hook the block itself
(the last block's `hidden_states[-1]` may already carry the final norm) and stop the forward right after the deepest
requested block: later blocks and the LM head never run.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Literal

import torch
from torch import nn

from qscope_data.errors import UsageError

# Where decoder/encoder blocks live in the transformers families we know; anything else is found by shape.
BLOCK_PATHS = (
    "model.layers",                 # Qwen3, Qwen3-MoE, Qwen3.5 text, Llama, Mistral, Gemma
    "model.language_model.layers",  # Qwen3.5 multimodal wrapper (…ForConditionalGeneration)
    "language_model.layers",
    "language_model.model.layers",
    "model.decoder.layers",         # OPT
    "transformer.h",                # GPT-2, GPT-J, Falcon
    "gpt_neox.layers",              # Pythia
    "encoder.layer",                # BERT family (AutoModel)
    "bert.encoder.layer",
    "roberta.encoder.layer",
    "layers",
)


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: object
    blocks: nn.ModuleList
    blocks_path: str
    model_id: str
    revision: str | None
    is_causal: bool
    architecture: str

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @property
    def d_model(self) -> int:
        cfg = self.model.config
        text_cfg = getattr(cfg, "text_config", None) or cfg
        return int(getattr(text_cfg, "hidden_size", None) or getattr(text_cfg, "d_model"))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def describe(self) -> dict:
        return {
            "id": self.model_id,
            "revision": self.revision,
            "architecture": self.architecture,
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "dtype": str(next(self.model.parameters()).dtype).removeprefix("torch."),
            "is_causal": self.is_causal,
            "blocks": self.blocks_path,
        }


def _get_path(root: nn.Module, path: str) -> nn.Module | None:
    obj: object = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj if isinstance(obj, nn.Module) else None


def resolve_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The module list of transformer blocks: known paths first, else the longest list of same-type modules."""
    for path in BLOCK_PATHS:
        found = _get_path(model, path)
        if isinstance(found, nn.ModuleList) and len(found) > 0:
            return path, found
    best: tuple[str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 1 and len({type(m) for m in module}) == 1:
            if best is None or len(module) > len(best[1]):
                best = (name, module)
    if best is None:
        raise UsageError(f"cannot find the transformer block list of {type(model).__name__}")
    return best


def load_tokenizer(spec: str, *, revision: str | None = None, trust_remote_code: bool = False):
    """The model's tokenizer as every stage and executor uses it: a pad token, and the fallback chat template for a
    tokenizer without one (so conversations render, and are tokenised, the same way everywhere)."""
    from transformers import AutoTokenizer

    from qscope_data.spans import ensure_chat_template

    try:
        tokenizer = AutoTokenizer.from_pretrained(spec, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise UsageError(f"model {spec}: cannot load its tokenizer ({str(exc).splitlines()[0]})") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    ensure_chat_template(tokenizer)
    return tokenizer


def load_model(
    spec: str,
    *,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    causal: bool | None = None,
) -> LoadedModel:
    """Load a Hugging Face model + tokenizer from a local folder or hub id (hub cache and offline mode respected).

    Causal LMs load with their LM head (generation, steering, SASFT need it); encoder-only models (BERT family)
    load as the bare encoder. `trust_remote_code` stays off unless the user asks.
    """
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(spec, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise UsageError(f"model {spec}: cannot load its config ({str(exc).splitlines()[0]})") from exc
    if causal is None:
        causal = bool(getattr(config, "is_decoder", False)) or any(
            a.endswith("ForCausalLM") or a.endswith("ForConditionalGeneration") or a.endswith("LMHeadModel")
            for a in (getattr(config, "architectures", None) or [])
        ) or getattr(config, "model_type", "") in _CAUSAL_TYPES
    loader = AutoModelForCausalLM if causal else AutoModel
    if dtype is None:  # "auto": the checkpoint's dtype, except float32 on a CPU without fast bf16
        from qscope_data.torch_dtypes import model_dtype

        dtype = model_dtype(None, device)
    try:
        model = loader.from_pretrained(spec, revision=revision, dtype=dtype or "auto", trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise UsageError(f"model {spec}: cannot load ({str(exc).splitlines()[0]})") from exc
    tokenizer = load_tokenizer(spec, revision=revision, trust_remote_code=trust_remote_code)
    model = model.to(device).eval()
    path, blocks = resolve_blocks(model)
    return LoadedModel(
        model=model, tokenizer=tokenizer, blocks=blocks, blocks_path=path, model_id=str(spec), revision=revision,
        is_causal=causal, architecture=getattr(config, "model_type", type(model).__name__),
    )


_CAUSAL_TYPES = {"qwen3", "qwen3_moe", "qwen3_5", "qwen3_5_moe", "qwen3_5_text", "qwen3_5_moe_text", "qwen2", "llama",
                 "mistral", "gpt2", "gpt_neox", "gemma", "gemma2", "gemma3_text", "phi3", "opt"}


def check_layers(lm: LoadedModel, layers: list[int]) -> None:
    for n in layers:
        if not 0 <= n < lm.n_layers:
            raise UsageError(f"layer {n} is beyond the model's depth: {lm.model_id} has {lm.n_layers} blocks (0..{lm.n_layers - 1})")


def _hidden(output: object) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


class _StopForward(Exception):
    """Raised by the deepest hook so nothing after it runs."""


def capture(
    lm: LoadedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, layers: list[int]
) -> dict[int, torch.Tensor]:
    """Residual stream at the output of each block in `layers`: {n: [B, T, d_model]}. Stops after the deepest."""
    check_layers(lm, layers)
    deepest = max(layers)
    captured: dict[int, torch.Tensor] = {}
    handles = []

    def make_hook(n: int) -> Callable:
        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            captured[n] = _hidden(output)
            if n == deepest:
                raise _StopForward

        return hook

    for n in sorted(set(layers)):
        handles.append(lm.blocks[n].register_forward_hook(make_hook(n)))
    base = _base_model(lm)
    try:
        with torch.inference_mode():
            base(input_ids=input_ids.to(lm.device), attention_mask=attention_mask.to(lm.device), use_cache=False)
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in layers if n not in captured]
    if missing:
        raise RuntimeError(f"blocks {missing} did not run in {lm.model_id}'s forward")
    return captured


def _base_model(lm: LoadedModel) -> nn.Module:
    """The backbone without the LM head (the head would never run anyway; this also skips its setup)."""
    model = lm.model
    for attr in ("model", "transformer", "gpt_neox"):
        inner = getattr(model, attr, None)
        if isinstance(inner, nn.Module) and lm.blocks_path.startswith(attr + "."):
            return inner
    return model


SteerPositions = Literal["all", "generated"]


@contextmanager
def edit_block_output(lm_or_blocks: LoadedModel | nn.ModuleList, layer: int,
                      edit: Callable[[torch.Tensor, int], torch.Tensor]) -> Iterator[None]:
    """While active, block `layer`'s output h becomes edit(h, call_index). Used for steering and SASFT hooks."""
    blocks = lm_or_blocks.blocks if isinstance(lm_or_blocks, LoadedModel) else lm_or_blocks
    calls = {"n": 0}

    def hook(_module: nn.Module, _inputs: object, output: object) -> object:
        hidden = _hidden(output)
        new = edit(hidden, calls["n"])
        calls["n"] += 1
        if isinstance(output, tuple):
            return (new, *output[1:])
        if isinstance(output, list):
            return [new, *output[1:]]
        return new

    handle = blocks[layer].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def steer(lm: LoadedModel, layer: int, direction: torch.Tensor, alpha: float,
          positions: SteerPositions = "all") -> Iterator[None]:
    """h ← h + α · direction at the output of block `layer`.

    `positions="generated"` leaves the prompt's forward (the first call, the prefill) alone and edits only the
    forwards that produce new tokens — with a KV cache each of those sees just the newest position.
    """
    vec = (alpha * direction.float()).to(lm.device)

    def add(hidden: torch.Tensor, call: int) -> torch.Tensor:
        if positions == "generated" and call == 0:
            return hidden
        return hidden + vec.to(hidden.dtype)

    with edit_block_output(lm, layer, add):
        yield
