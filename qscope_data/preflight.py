"""Preflight: is this model / SAE pair usable, judged from headers alone — no weights loaded, nothing computed.

`qscope validate` and the Ray executor's driver both need the answer before any work starts, and neither can
afford to load an 8B model to get it (the driver often runs on a CPU head node). A model's shape comes from its
config; an SAE's from its header: ``sae.json`` (canonical), ``cfg.json`` + the safetensors header (SAELens,
sparsify). A Qwen-Scope ``layer{n}.sae.pt`` has no header, so its tensors are loaded (``weights_only``) to read
their shapes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from qscope_data.errors import SAEFormatError, UsageError


@dataclass(frozen=True)
class ModelShape:
    model_id: str
    architecture: str
    n_layers: int
    d_model: int


@dataclass(frozen=True)
class SAEShape:
    source: str
    format: str
    d_model: int
    d_sae: int
    k: int | None
    layer: int | None  # the block whose output it reads, when the files say so


def model_shape(spec: str, *, revision: str | None = None, trust_remote_code: bool = False) -> ModelShape:
    """Depth and hidden size from the model's config (multimodal wrappers: their text config)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(spec, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise UsageError(f"model {spec}: cannot load its config ({str(exc).splitlines()[0]})") from None
    text = getattr(config, "text_config", None) or config
    depth = getattr(text, "num_hidden_layers", None) or getattr(text, "n_layer", None) or getattr(text, "num_layers", None)
    width = getattr(text, "hidden_size", None) or getattr(text, "d_model", None) or getattr(text, "n_embd", None)
    if not depth or not width:
        raise UsageError(f"model {spec}: its config names no depth / hidden size (model_type {config.model_type!r})")
    return ModelShape(str(spec), str(getattr(config, "model_type", "")), int(depth), int(width))


def sae_shape(spec: str, layer: int | None, *, k: int | None = None) -> SAEShape:
    """Width, input size, k and layer of the SAE `spec` would load for `layer`, read from its header."""
    from qscope_data.sae.formats import detect_format, parse_qwen_scope_name, resolve_local

    local = resolve_local(spec, layer)
    fmt, where = detect_format(local, layer)
    if fmt == "qwen-scope":  # no header: the tensors themselves say the shapes
        from qscope_data.sae import load_sae

        sae = load_sae(spec, layer, k=k)
        return SAEShape(str(spec), fmt, sae.d_model, sae.d_sae, sae.k, sae.layer)
    if fmt == "qscope":
        cfg = _json(where / "sae.json")
        return SAEShape(str(spec), fmt, int(cfg["d_model"]), int(cfg["d_sae"]), k or cfg.get("k"), cfg.get("layer", layer))
    cfg = _json(where / "cfg.json")
    if fmt == "saelens":
        d_in, d_sae = _tensor_shape(where / "sae_weights.safetensors", "W_enc")
        hook_layer = cfg.get("hook_layer", layer)
        return SAEShape(str(spec), fmt, d_in, d_sae, k or cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k"),
                        hook_layer)
    d_sae, d_in = _tensor_shape(where / "sae.safetensors", "encoder.weight")  # sparsify
    named = parse_qwen_scope_name(str(spec)) or {}
    return SAEShape(str(spec), fmt, d_in, d_sae, k or cfg.get("k") or named.get("k"), layer)


def check_pair(model: ModelShape, sae: SAEShape, layer: int) -> None:
    """The SAE reads block `layer`'s output of this model: the layer exists and the widths agree."""
    if not 0 <= layer < model.n_layers:
        raise UsageError(f"sae.layer {layer} is beyond the model's depth: {model.model_id} has {model.n_layers} blocks "
                         f"(0..{model.n_layers - 1})")
    if sae.layer is not None and sae.layer != layer:
        raise UsageError(f"SAE {sae.source} reads the output of block {sae.layer}, not layer {layer}")
    if sae.d_model != model.d_model:
        raise UsageError(f"SAE {sae.source} has d_model {sae.d_model}, but model {model.model_id} has hidden size "
                         f"{model.d_model}")
    if sae.k is None:
        raise UsageError(f"SAE {sae.source}: k is not in its files; set sae.k in the config")


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SAEFormatError(f"{path}: cannot read the SAE header ({exc})") from None
    if not isinstance(data, dict):
        raise SAEFormatError(f"{path}: expected a JSON object")
    return data


def _tensor_shape(path: Path, name: str) -> tuple[int, int]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            shape = f.get_slice(name).get_shape()
    except Exception as exc:  # safetensors raises its own types for a missing key or a corrupt header
        raise SAEFormatError(f"{path}: cannot read tensor {name} from the header ({exc})") from None
    if len(shape) != 2:
        raise SAEFormatError(f"{path}: {name} must be 2-D, got shape {tuple(shape)}")
    return int(shape[0]), int(shape[1])
