"""One reader per on-disk SAE format, and the canonical writer.

Formats:
- ``qwen-scope``: ``layer{n}.sae.pt`` (a torch.save'd tensor dict) in a folder or hub repo named
  ``SAE-Res-{Model}-W{N}K-L0_{K}``. Read with ``torch.load(weights_only=True)`` only.
- ``saelens``: ``cfg.json`` + ``sae_weights.safetensors`` (W_enc (d_in, d_sae), W_dec (d_sae, d_in)); TopK.
- ``sparsify``: ``cfg.json`` + ``sae.safetensors`` (``encoder.weight`` (d_sae, d), ``encoder.bias``,
  ``W_dec`` (d_sae, d), ``b_dec``), usually one folder per hookpoint (``layers.{n}``); b_dec is subtracted
  before encoding.
- ``qscope`` (canonical): ``sae.json`` + ``sae.safetensors`` in Qwen-Scope orientation; memory-mappable.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from qscope_data.errors import SAEFormatError
from qscope_data.sae.model import SparseAutoencoder

CANONICAL_CONFIG = "sae.json"
CANONICAL_WEIGHTS = "sae.safetensors"
CANONICAL_VERSION = 1
QWEN_SCOPE_KEYS = {"W_enc", "W_dec", "b_enc", "b_dec"}
_QWEN_SCOPE_NAME = re.compile(r"SAE-Res-(?P<model>.+)-W(?P<width>\d+)K-L0_(?P<k>\d+)")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_SPARSIFY_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)(?:$|\.)")


def parse_qwen_scope_name(name: str) -> dict | None:
    """`SAE-Res-Qwen3-8B-Base-W64K-L0_50` → {model, d_sae: 65536, k: 50}; None if the name does not match."""
    m = _QWEN_SCOPE_NAME.search(name)
    if not m:
        return None
    return {"model": m["model"], "d_sae": int(m["width"]) * 1024, "k": int(m["k"])}


# -- locating -----------------------------------------------------------------------------------------------


def is_hub_id(spec: str) -> bool:
    return not os.path.exists(spec) and bool(_HUB_ID.match(spec))


def resolve_local(spec: str | Path, layer: int | None, *, cache_dir: str | None = None, revision: str | None = None) -> Path:
    """A local path for `spec`: the path itself, or a hub repo downloaded (only the files `layer` needs)."""
    if not is_hub_id(str(spec)):
        path = Path(spec)
        if not path.exists():
            raise SAEFormatError(f"{spec}: no such SAE file or folder (and not a hub repo id)")
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        local = snapshot_download(str(spec), revision=revision, cache_dir=cache_dir, allow_patterns=hub_patterns(layer))
    except LocalEntryNotFoundError as exc:
        raise SAEFormatError(f"{spec}: not in the local Hugging Face cache and the hub is offline ({exc.__class__.__name__})") from exc
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise SAEFormatError(f"{spec}: could not fetch from the Hugging Face hub: {exc}") from exc
    return Path(local)


# Where a multi-layer repo keeps one layer's SAE (SAELens hookpoint folders, sparsify `layers.{n}`, flat `layer{n}`);
# `detect_format` looks in these and `hub_patterns` fetches only these, so the two cannot disagree.
LAYER_FOLDERS = ("layer{n}", "layers.{n}", "blocks.{n}.hook_resid_post")
_ROOT_WEIGHTS = (CANONICAL_WEIGHTS, "sae_weights.safetensors")  # a single-SAE repo keeps its weights at the root


def hub_patterns(layer: int | None) -> list[str]:
    """`allow_patterns` for a hub download: metadata, and the weights of `layer` only. fnmatch's `*` crosses "/",
    so a bare "*.safetensors" would fetch every layer of a multi-layer repo (GBs each); weights are named exactly.
    Without a layer (a single-SAE repo) every weight file is fetched."""
    patterns = ["*.json", "*.md"]  # configs of other layers come along too: a few KB each
    if layer is None:
        return patterns + ["*.safetensors", "*.pt"]
    return patterns + [f"layer{layer}.sae.pt", *_ROOT_WEIGHTS,
                       *(f"{folder.format(n=layer)}/*" for folder in LAYER_FOLDERS)]


def detect_format(path: Path, layer: int | None) -> tuple[str, Path]:
    """(format, the file or folder holding that one SAE)."""
    if path.is_file():
        if path.name.endswith(".sae.pt") or path.suffix == ".pt":
            return "qwen-scope", path
        if path.name == CANONICAL_WEIGHTS or path.name == CANONICAL_CONFIG:
            return "qscope", path.parent
        if path.suffix == ".safetensors" or path.name == "cfg.json":
            return detect_format(path.parent, layer)
        raise SAEFormatError(f"{path}: unknown SAE file type (expected layer{{n}}.sae.pt, sae.safetensors or cfg.json)")
    candidates = [path]
    if layer is not None:
        candidates += [path / folder.format(n=layer) for folder in LAYER_FOLDERS]
    for folder in candidates:
        if (folder / CANONICAL_CONFIG).exists():
            return "qscope", folder
        if (folder / "cfg.json").exists() and (folder / "sae_weights.safetensors").exists():
            return "saelens", folder
        if (folder / "cfg.json").exists() and (folder / "sae.safetensors").exists():
            return "sparsify", folder
    if layer is not None and (path / f"layer{layer}.sae.pt").exists():
        return "qwen-scope", path / f"layer{layer}.sae.pt"
    if list(path.glob("layer*.sae.pt")):
        if layer is None:
            raise SAEFormatError(f"{path}: a Qwen-Scope folder holds one SAE per layer; pass --layer")
        raise SAEFormatError(f"{path}: no layer{layer}.sae.pt (layers here: {_listed_layers(path)})")
    raise SAEFormatError(
        f"{path}: unknown SAE format (no layer{{n}}.sae.pt, sae.json, cfg.json + sae_weights.safetensors "
        "or cfg.json + sae.safetensors)"
    )


def _listed_layers(path: Path) -> str:
    nums = sorted(int(m.group(1)) for p in path.glob("layer*.sae.pt") if (m := re.match(r"layer(\d+)\.sae\.pt", p.name)))
    return ", ".join(map(str, nums)) or "none"


# -- loading ------------------------------------------------------------------------------------------------


def load_sae(
    spec: str | Path,
    layer: int | None = None,
    *,
    k: int | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    cache_dir: str | None = None,
    revision: str | None = None,
) -> SparseAutoencoder:
    """Load one SAE from a local file/folder or a hub repo id, whatever its format."""
    local = resolve_local(spec, layer, cache_dir=cache_dir, revision=revision)
    fmt, where = detect_format(local, layer)
    reader = {"qwen-scope": _load_qwen_scope, "saelens": _load_saelens, "sparsify": _load_sparsify, "qscope": _load_canonical}[fmt]
    sae = reader(where, layer=layer, k=k, name=str(spec))
    _validate(sae, where)
    if dtype is not None or str(device) != "cpu":
        sae = sae.to(device=device, dtype=dtype)
    return sae


def _validate(sae: SparseAutoencoder, where: Path) -> None:
    d_sae, d_model = sae.W_enc.shape if sae.W_enc.ndim == 2 else (None, None)
    if sae.W_enc.ndim != 2:
        raise SAEFormatError(f"{where}: W_enc must be 2-D, got shape {tuple(sae.W_enc.shape)}")
    checks = [
        ("W_dec", tuple(sae.W_dec.shape), (d_model, d_sae)),
        ("b_enc", tuple(sae.b_enc.shape), (d_sae,)),
        ("b_dec", tuple(sae.b_dec.shape), (d_model,)),
    ]
    for name, got, want in checks:
        if got != want:
            raise SAEFormatError(
                f"{where}: {name} has shape {got} but W_enc {tuple(sae.W_enc.shape)} implies {want}"
            )
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        t = getattr(sae, name)
        if not t.is_floating_point():
            raise SAEFormatError(f"{where}: {name} has dtype {t.dtype}; expected a floating-point tensor")
        if not bool(torch.isfinite(t).all()):  # nan / inf weights would make every feature nan or never fire
            bad = int((~torch.isfinite(t)).sum())
            raise SAEFormatError(f"{where}: {name} holds {bad:,} non-finite value(s) (nan / inf); the SAE file is damaged")
    if not 1 <= sae.k <= d_sae:
        raise SAEFormatError(f"{where}: k = {sae.k} must be between 1 and d_sae = {d_sae}")


def _require_keys(tensors: dict, expected: set[str], where: Path) -> None:
    keys = set(tensors)
    missing, extra = expected - keys, keys - expected
    if missing:
        raise SAEFormatError(f"{where}: missing key(s) {', '.join(sorted(missing))} (has {', '.join(sorted(keys)) or 'none'})")
    if extra:
        raise SAEFormatError(f"{where}: unexpected key(s) {', '.join(sorted(extra))} (expected {', '.join(sorted(expected))})")


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return {key: f.get_tensor(key) for key in f.keys()}
    except FileNotFoundError as exc:
        raise SAEFormatError(f"{path}: file not found") from exc
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise SAEFormatError(f"{path}: not a readable safetensors file ({exc})") from exc


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise SAEFormatError(f"{path}: file not found") from exc
    except json.JSONDecodeError as exc:
        raise SAEFormatError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
    if not isinstance(data, dict):
        raise SAEFormatError(f"{path}: expected a JSON object")
    return data


def _load_qwen_scope(path: Path, *, layer: int | None, k: int | None, name: str) -> SparseAutoencoder:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError, EOFError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise SAEFormatError(
            f"{path}: refused: not a plain tensor dict loadable with weights_only=True ({first[:160]})"
        ) from exc
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise SAEFormatError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
    _require_keys(obj, QWEN_SCOPE_KEYS, path)
    m = re.match(r"layer(\d+)\.sae\.pt$", path.name)
    file_layer = int(m.group(1)) if m else layer
    parsed = parse_qwen_scope_name(name) or parse_qwen_scope_name(str(path.resolve().parent)) or {}
    if k is None:
        k = parsed.get("k")
    if k is None:
        raise SAEFormatError(f"{path}: k is not in the file; name the folder SAE-Res-…-L0_{{k}} or pass --k")
    W_enc = obj["W_enc"]
    if parsed.get("d_sae") and W_enc.ndim == 2 and parsed["d_sae"] != W_enc.shape[0]:
        raise SAEFormatError(f"{path}: name says width {parsed['d_sae']} but W_enc has {W_enc.shape[0]} rows")
    return SparseAutoencoder(
        W_enc=W_enc, b_enc=obj["b_enc"], W_dec=obj["W_dec"], b_dec=obj["b_dec"], k=int(k),
        layer=file_layer, hook="resid_post", source=name, format="qwen-scope",
    )


def _load_saelens(folder: Path, *, layer: int | None, k: int | None, name: str) -> SparseAutoencoder:
    cfg = _read_json(folder / "cfg.json")
    arch = str(cfg.get("architecture", "standard")).lower()
    if arch not in ("topk", "top_k"):
        raise SAEFormatError(f"{folder / 'cfg.json'}: SAELens architecture '{arch}' is not supported (TopK only)")
    tensors = _read_safetensors(folder / "sae_weights.safetensors")
    _require_keys(tensors, QWEN_SCOPE_KEYS, folder / "sae_weights.safetensors")
    if k is None:
        k = cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k")
    if k is None:
        raise SAEFormatError(f"{folder / 'cfg.json'}: no k (expected 'k' or activation_fn_kwargs.k)")
    hook = str(cfg.get("hook_name", "resid_post"))
    cfg_layer = cfg.get("hook_layer")
    if cfg_layer is None:
        m = re.search(r"blocks\.(\d+)\.", hook)
        cfg_layer = int(m.group(1)) if m else layer
    return SparseAutoencoder(
        W_enc=tensors["W_enc"].T.contiguous(), b_enc=tensors["b_enc"], W_dec=tensors["W_dec"].T.contiguous(),
        b_dec=tensors["b_dec"], k=int(k), layer=cfg_layer, hook=hook, source=name, format="saelens",
        input_bias=bool(cfg.get("apply_b_dec_to_input", False)),
    )


def _load_sparsify(folder: Path, *, layer: int | None, k: int | None, name: str) -> SparseAutoencoder:
    cfg = _read_json(folder / "cfg.json")
    tensors = _read_safetensors(folder / "sae.safetensors")
    _require_keys(tensors, {"encoder.weight", "encoder.bias", "W_dec", "b_dec"}, folder / "sae.safetensors")
    k = k or cfg.get("k")
    if k is None:
        raise SAEFormatError(f"{folder / 'cfg.json'}: no k")
    m = _SPARSIFY_LAYER.search(folder.name)
    return SparseAutoencoder(
        W_enc=tensors["encoder.weight"], b_enc=tensors["encoder.bias"], W_dec=tensors["W_dec"].T.contiguous(),
        b_dec=tensors["b_dec"], k=int(k), layer=int(m.group(1)) if m else layer, hook=folder.name,
        source=name, format="sparsify", input_bias=True,
    )


def _load_canonical(folder: Path, *, layer: int | None, k: int | None, name: str) -> SparseAutoencoder:
    cfg = _read_json(folder / CANONICAL_CONFIG)
    if cfg.get("format") != "qscope":
        raise SAEFormatError(f"{folder / CANONICAL_CONFIG}: not a qscope SAE config (format={cfg.get('format')!r})")
    tensors = _read_safetensors(folder / CANONICAL_WEIGHTS)
    _require_keys(tensors, QWEN_SCOPE_KEYS, folder / CANONICAL_WEIGHTS)
    return SparseAutoencoder(
        W_enc=tensors["W_enc"], b_enc=tensors["b_enc"], W_dec=tensors["W_dec"], b_dec=tensors["b_dec"],
        k=int(k or cfg["k"]), layer=cfg.get("layer", layer), hook=cfg.get("hook", "resid_post"),
        source=cfg.get("source") or name, format="qscope", input_bias=bool(cfg.get("input_bias", False)),
        extra=cfg.get("extra", {}),
    )


def save_canonical(sae: SparseAutoencoder, out: str | Path) -> Path:
    """Write `sae` as sae.safetensors + sae.json in `out` (atomically: temp files, then rename)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {n: getattr(sae, n).detach().contiguous().cpu() for n in ("W_enc", "W_dec", "b_enc", "b_dec")}
    tmp_weights = out / f".{CANONICAL_WEIGHTS}.tmp"
    save_file(tensors, str(tmp_weights), metadata={"format": "qscope"})
    config = {
        "format": "qscope",
        "version": CANONICAL_VERSION,
        "d_model": sae.d_model,
        "d_sae": sae.d_sae,
        "k": sae.k,
        "layer": sae.layer,
        "hook": sae.hook,
        "source": sae.source,
        "source_format": sae.format,
        "input_bias": sae.input_bias,
        "dtype": str(sae.dtype).removeprefix("torch."),
        "extra": sae.extra,
    }
    tmp_cfg = out / f".{CANONICAL_CONFIG}.tmp"
    tmp_cfg.write_text(json.dumps(config, indent=2) + "\n")
    os.replace(tmp_weights, out / CANONICAL_WEIGHTS)
    os.replace(tmp_cfg, out / CANONICAL_CONFIG)
    return out
