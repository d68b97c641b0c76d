"""The demo SAE: trained once on Gemma-3-270M by `make demo-sae`, shipped inside the package, verified at load.

Why shipped: a good SAE on this model needs ~0.5M+ activation positions, which on 2 CPU cores is longer than the
demo's budget. So it is trained once by a documented, reproducible command on a machine that has ../shared/data:

    make demo-sae            # = .venv/bin/python -m qscope_data.demo.demo_sae --shared ../shared/data

and the result lives in `qscope_data/demo/sae/`: `sae.safetensors` + `sae.json` (the canonical format, float16 to
stay under 25 MB), `recipe.json` (this module's RECIPE, the text sources with licences, the data fingerprint, the
backbone's conversion record) and `metrics.json` (quality on held-out text, with baselines: see
`qscope_data.sae.quality`). `load_demo_sae()` checks the weights' sha256 against `recipe.json` before use.

The block, width and k come from measurement (`benchmarks/sae_quality.py --sweep`); see docs/training.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

from qscope_data import atomic
from qscope_data.errors import UsageError

SHIPPED = Path(__file__).with_name("sae")
HELDOUT_FILE = "heldout-texts.sha256"
RECIPE = {
    "layer": 12,
    "width": 8192,
    "k": 32,
    "max_tokens": 128,
    "positions": 750_000,     # the first training positions of the shuffled text stream (one forward, cached)
    "epochs": 1,              # passes over the cached activations
    "batch_size": 2048,
    "lr": 1e-3,
    "normalize": "per-dim",
    "eval_every": 20,
    "eval_tokens": 16384,     # held-out positions for explained variance, L0, dead fraction
    "splice_texts": 240,      # held-out texts for the spliced next-token loss
    "seed": 0,
    "dtype": "float16",
}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_demo_sae(folder: Path = SHIPPED):
    """The shipped demo SAE, after checking its weights against the recorded sha256 (exit 2 when they differ)."""
    from qscope_data.sae import load_sae

    recipe_path = folder / "recipe.json"
    if not recipe_path.exists():
        raise UsageError(f"{folder}: the demo SAE is not built (run `make demo-sae` on a machine with ../shared/data)")
    recipe = json.loads(recipe_path.read_text())
    weights = folder / "sae.safetensors"
    if not weights.exists() or _sha256(weights) != recipe.get("weights_sha256"):
        raise UsageError(f"{weights}: missing or its sha256 differs from {recipe_path}; reinstall qscope-data")
    return load_sae(folder)


def demo_sae_metrics(folder: Path = SHIPPED) -> dict:
    path = folder / "metrics.json"
    return json.loads(path.read_text()) if path.exists() else {}


def write_heldout_hashes(acts: Path, out: Path) -> Path:
    """Hashes of every held-out text (never trained on): benchmarks pick their evaluation text from these."""
    from qscope_data.demo.sae_data import text_hash
    from qscope_data.sae import activations

    hashes = sorted({text_hash(t) for t in activations.heldout_texts(acts)})
    atomic.write_text(out / HELDOUT_FILE, "".join(h + "\n" for h in hashes))
    return out / HELDOUT_FILE


def heldout_hashes(folder: Path = SHIPPED) -> set[str]:
    return set((folder / HELDOUT_FILE).read_text().split())


def activation_cache_key(data_fingerprint: str, recipe: dict) -> str:
    """What decides the cached activations: the text stream, the backbone conversion, truncation, held-out split."""
    from qscope_data.demo.gemma import RECIPE as CONVERSION, gguf_sha256

    payload = f"{data_fingerprint}|{gguf_sha256()}|{CONVERSION}|T{recipe['max_tokens']}|E{recipe['eval_every']}"
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def build(shared: Path, out: Path = SHIPPED, *, work: Path | None = None, recipe: dict | None = None,
          activations_dir: Path | None = None, data_fingerprint: str | None = None, log=print) -> dict:
    """Train the demo SAE per `recipe` on the text of `qscope_data.demo.sae_data`, evaluate it, write it to `out`.

    `activations_dir` + `data_fingerprint` reuse an activation cache collected from an earlier version of the text
    stream (its fingerprint is what recipe.json records); by default the cache is keyed by today's stream.
    """
    import torch

    from qscope_data.capture import load_model
    from qscope_data.demo import sae_data
    from qscope_data.demo.gemma import MARKER, cache_root, ensure_gemma
    from qscope_data.sae import activations, quality
    from qscope_data.sae.formats import save_canonical
    from qscope_data.sae.train import TensorActivationSource, TrainConfig, train_sae

    r = {**RECIPE, **(recipe or {})}
    if not shared.exists():
        raise UsageError(f"{shared}: no shared data folder (the demo SAE trains on the public sets there)")
    work = work or cache_root() / "demo-sae"
    work.mkdir(parents=True, exist_ok=True)
    model_dir = ensure_gemma(log=log)
    lm = load_model(str(model_dir), dtype=torch.float32)

    texts = sae_data.training_texts(shared, seed=r["seed"])
    fingerprint = data_fingerprint or sae_data.data_fingerprint(shared)
    corpus = work / f"texts-{fingerprint[:12]}.jsonl"
    if not corpus.exists():
        atomic.write_text(corpus, "".join(json.dumps({"text": t, "source": s}, ensure_ascii=False) + "\n"
                                          for s, t in texts))
    key = activation_cache_key(fingerprint, r)
    acts = activations_dir or work / f"acts-{key}"
    if activations_dir is not None:
        key = activations.read_meta(acts).fingerprint if activations.read_meta(acts) else key
    t0 = time.monotonic()
    meta = activations.collect(lm, [r["layer"]], (t for _, t in texts), acts, fingerprint=key,
                               max_tokens=r["max_tokens"], eval_every=r["eval_every"], max_positions=r["positions"],
                               on_progress=lambda m: log(f"activations: {m.texts:,} texts, "
                                                         f"{m.train_positions:,} positions") if m.texts % 3200 < 32
                               else None)
    log(f"activations cached: {meta.train_positions:,} training + {meta.heldout_positions:,} held-out positions "
        f"({time.monotonic() - t0:.0f} s)")
    # The first `positions` training positions of the stream, whatever the cache holds beyond them.
    train_x = activations.load(acts, r["layer"], "train", limit=r["positions"])
    heldout_x = activations.load(acts, r["layer"], "heldout", limit=r["eval_tokens"])
    cfg = TrainConfig.parse(
        model=str(model_dir), layer=r["layer"], inputs=[str(corpus)], width=r["width"], k=r["k"],
        max_tokens=r["max_tokens"], tokens_budget=int(r["epochs"] * train_x.shape[0]), batch_size=r["batch_size"],
        lr=r["lr"], normalize=r["normalize"], eval_every=r["eval_every"], eval_tokens=r["eval_tokens"],
        seed=r["seed"], shuffle_buffer=262_144,
    )
    source = TensorActivationSource(train_x, heldout_x, texts=meta.texts)
    result = train_sae(cfg, None, progress=True, log=log, lm=lm, source=source)
    sae = result.sae.to(dtype=getattr(torch, r["dtype"]))
    sae.source = "qscope-demo-sae:google/gemma-3-270m"
    sae.extra = {"training": {k: v for k, v in result.metrics.items() if k != "history"}}
    heldout_texts = activations.heldout_texts(acts)[:r["splice_texts"]]
    rows = quality.evaluate_sae(lm, sae, r["layer"], heldout_x, heldout_texts, max_tokens=r["max_tokens"])
    rows_first = quality.evaluate_sae(lm, sae, r["layer"], heldout_x, heldout_texts[: r["splice_texts"] // 4],
                                      max_tokens=r["max_tokens"], splice_first=True)
    out.mkdir(parents=True, exist_ok=True)
    save_canonical(sae, out)
    conversion = json.loads((model_dir / MARKER).read_text())
    metrics = {"held_out": [q.to_dict() for q in rows],
               "held_out_splicing_position_0": [q.to_dict() for q in rows_first],
               "held_out_texts": len(heldout_texts), "held_out_positions": int(heldout_x.shape[0]),
               "training": {k: v for k, v in result.metrics.items() if k != "history"},
               "history": result.metrics.get("history", [])}
    atomic.write_json(out / "metrics.json", metrics)
    write_heldout_hashes(acts, out)
    atomic.write_json(out / "recipe.json", {
        "recipe": r, "backbone": {k: conversion[k] for k in ("model", "gguf", "gguf_sha256", "recipe", "licence")},
        "data_fingerprint": fingerprint, "texts": len(texts), "positions": int(train_x.shape[0]),
        "sources": {s: sae_data.LICENCES[s] for s in sorted({s for s, _ in texts})},
        "licence": "CC BY-SA 4.0 (trained on CC BY-SA text; see sources)",
        "command": "make demo-sae", "weights_sha256": _sha256(out / "sae.safetensors"),
    })
    return metrics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[3] / "shared" / "data")
    ap.add_argument("--out", type=Path, default=SHIPPED)
    ap.add_argument("--work", type=Path, default=None, help="activation cache folder (default: the user cache)")
    ap.add_argument("--activations", type=Path, default=None, help="reuse this activation cache folder")
    ap.add_argument("--data-fingerprint", default=None, help="the text stream's fingerprint when --activations is "
                    "from an earlier version of it")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a RECIPE entry")
    args = ap.parse_args()
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in RECIPE:
            raise SystemExit(f"--set {item}: unknown recipe key (choose from {', '.join(RECIPE)})")
        overrides[key] = type(RECIPE[key])(value)
    metrics = build(args.shared, args.out, work=args.work, recipe=overrides, activations_dir=args.activations,
                    data_fingerprint=args.data_fingerprint)
    for row in metrics["held_out"]:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
