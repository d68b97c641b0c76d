"""Deterministic document splits for mining and evaluation, decided by a seeded hash of doc_id.

The split depends only on (seed, doc_id), never on row order or store layout, so `rules eval` recomputes exactly
the held-out part that `rules mine` left alone from the seed and fraction recorded in the rule file.

    u(salt, doc_id) = blake2b("<salt>:<seed>:<doc_id>") / 2^64        (uniform in [0, 1))
    heldout     ⇔ u("heldout", ·) < heldout_fraction
    validation  ⇔ not heldout and u("validation", ·) < validation_fraction     (chooses ε and the feature count)
    discovery   ⇔ the rest                                                      (ranks features by Δ)
    in fraction F of the mining data ⇔ u("fraction", ·) < F                     (nested: 10% ⊂ 20% ⊂ …)
"""

from __future__ import annotations

import hashlib

import numpy as np
import polars as pl

HELDOUT, DISCOVERY, VALIDATION = "heldout", "discovery", "validation"
METHOD = "blake2b-64('<salt>:<seed>:<doc_id>') / 2^64 < fraction; salts: heldout, validation, fraction"


def uniform(doc_ids: pl.Series | list[str], seed: int, salt: str) -> np.ndarray:
    """A uniform [0, 1) number per doc_id, stable across runs, machines and library versions."""
    prefix = f"{salt}:{seed}:".encode()
    out = np.empty(len(doc_ids), dtype=np.float64)
    for i, doc_id in enumerate(doc_ids):
        digest = hashlib.blake2b(prefix + str(doc_id).encode(), digest_size=8).digest()
        out[i] = int.from_bytes(digest, "big") / 2.0**64
    return out


def assign(doc_ids: pl.Series | list[str], seed: int, heldout_fraction: float, validation_fraction: float) -> pl.Series:
    """heldout / validation / discovery per doc_id."""
    held = uniform(doc_ids, seed, "heldout") < heldout_fraction
    val = uniform(doc_ids, seed, "validation") < validation_fraction
    labels = np.where(held, HELDOUT, np.where(val, VALIDATION, DISCOVERY))
    return pl.Series("split", labels, dtype=pl.String)


def in_fraction(doc_ids: pl.Series | list[str], seed: int, fraction: float) -> np.ndarray:
    """Membership in the first `fraction` of the mining data (nested across fractions)."""
    if fraction >= 1.0:
        return np.ones(len(doc_ids), dtype=bool)
    return uniform(doc_ids, seed, "fraction") < fraction
