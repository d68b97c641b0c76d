"""Random feature stores for the coverage tests, written through the real store writer (`write_store`)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa

from qscope_data.store import SAEInfo, StoreManifest, TOKEN_SCHEMA, FeatureStore, write_store

LANGS = ("en", "fr", "zh")
SOURCES = ("web", "forum")


def random_docs(
    rng: random.Random, n: int, *, d_sae: int, categories: dict[str, tuple[list[int], float]] | None = None,
    base_rate: float = 0.05, prefix: str = "d",
) -> list[dict[str, Any]]:
    """Documents with random features: each feature fires with `base_rate`; a category's own features with its rate.

    categories: name -> (favoured feature ids, their firing probability); documents cycle through the categories."""
    cats = list(categories or {"none": ([], 0.0)})
    docs = []
    for i in range(n):
        cat = cats[i % len(cats)]
        favoured, rate = (categories or {"none": ([], 0.0)})[cat]
        feats = sorted({f for f in range(d_sae) if rng.random() < (rate if f in favoured else base_rate)})
        docs.append({
            "doc_id": f"{prefix}{i:04d}", "features": feats, "acts": [round(rng.uniform(0.1, 5.0), 3) for _ in feats],
            "category": cat, "lang": rng.choice(LANGS), "source": rng.choice(SOURCES), "text": f"text of {prefix}{i:04d} ({cat})",
        })
    return docs


def docs_frame(docs: list[dict[str, Any]], extra: tuple[str, ...] = ("category", "lang", "source", "text")) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "doc_id": [d["doc_id"] for d in docs],
            "n_tokens": [10] * len(docs),
            "n_positions": [9] * len(docs),
            "feature_ids": [d["features"] for d in docs],
            "max_acts": [d["acts"] for d in docs],
            "fire_counts": [[1] * len(d["features"]) for d in docs],
            **{c: [d.get(c) for d in docs] for c in extra},
        },
        schema_overrides={"feature_ids": pl.List(pl.Int32), "max_acts": pl.List(pl.Float32), "fire_counts": pl.List(pl.Int32)},
    )


def make_store(
    root: Path, docs: list[dict[str, Any]], *, d_sae: int, layer: int = 3, source: str = "test-sae",
    extra: tuple[str, ...] = ("category", "lang", "source", "text"), tokens: list[dict[str, Any]] | None = None,
    stats: dict[str, int] | None = None,
) -> FeatureStore:
    manifest = StoreManifest(saes=[SAEInfo(layer=layer, source=source, k=8, d_sae=d_sae, d_model=16)], stats=stats or {})
    token_tables = {layer: pa.Table.from_pylist(tokens, schema=TOKEN_SCHEMA)} if tokens is not None else None
    return write_store(root, {layer: docs_frame(docs, extra)}, manifest, tokens=token_tables)
