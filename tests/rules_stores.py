"""Test-only labelled feature stores with planted signal: per language, a few features fire more often on positive
documents than on negative ones (with different strengths, so the ranking is not trivial), plus a pooled feature,
common distractors and background noise. Written through `write_store` as real Parquet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from qscope_data.store import FeatureStore, SAEInfo, StoreManifest, write_store

D_SAE = 512
LANGS = ("en", "de", "zh")
# per language: (feature, P(fire | positive), P(fire | negative))
PLANTED = {
    "en": [(11, 0.80, 0.05), (12, 0.60, 0.10), (13, 0.45, 0.20)],
    "de": [(21, 0.75, 0.08), (22, 0.70, 0.06), (12, 0.40, 0.10)],
    "zh": [(31, 0.85, 0.10), (32, 0.50, 0.05)],
}
POOLED = (44, 0.55, 0.15)
DISTRACTORS = [(60, 0.5, 0.5), (61, 0.3, 0.35)]


def labelled_docs(n: int, seed: int = 0, strength: float = 1.0) -> pl.DataFrame:
    """Documents with planted features; `strength` < 1 pulls the positive rates towards the negative ones."""
    rng = np.random.default_rng(seed)
    rows: dict[str, list] = {k: [] for k in ("doc_id", "n_tokens", "n_positions", "feature_ids", "max_acts",
                                             "fire_counts", "lang", "label")}
    for i in range(n):
        lang = LANGS[i % len(LANGS)]
        y = bool(rng.random() < 0.45)
        feats: dict[int, float] = {}
        for f in rng.choice(np.arange(100, D_SAE), 12, replace=False):
            feats[int(f)] = float(rng.uniform(0.05, 1.0))
        for f, p_pos, p_neg in [*PLANTED[lang], POOLED, *DISTRACTORS]:
            p = p_neg + strength * (p_pos - p_neg) if y else p_neg
            if rng.random() < p:
                # positives fire harder, so a threshold ε > 0 can help
                feats[f] = float(rng.uniform(0.8, 3.0) if y else rng.uniform(0.05, 1.2))
        ids = sorted(feats)
        n_pos = int(rng.integers(8, 40))
        rows["doc_id"].append(f"doc{i:05d}")
        rows["n_tokens"].append(n_pos + 1)
        rows["n_positions"].append(n_pos)
        rows["feature_ids"].append(ids)
        rows["max_acts"].append([round(feats[f], 4) for f in ids])
        rows["fire_counts"].append([int(rng.integers(1, n_pos)) for _ in ids])
        rows["lang"].append(lang)
        rows["label"].append(int(y))
    return pl.DataFrame(rows)


def labelled_store(root: Path, n: int = 1500, seed: int = 0, layers: dict[int, float] | None = None) -> FeatureStore:
    """A store with one table per layer; `layers` maps layer → planted-signal strength (default {6: 1.0})."""
    layers = layers or {6: 1.0}
    tables = {layer: labelled_docs(n, seed, strength) for layer, strength in layers.items()}
    manifest = StoreManifest(model={"id": "planted-test"},
                             saes=[SAEInfo(layer=layer, k=16, d_sae=D_SAE, d_model=8) for layer in layers])
    return write_store(root, tables, manifest, shard_rows=400)
