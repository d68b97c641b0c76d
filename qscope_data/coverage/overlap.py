"""Dataset footprints, their asymmetric overlap, and a redundancy score from feature-coverage curves.

A store's footprint F(D) is the set of SAE features active on any of its documents — by default on any aggregated
position (the document table's `feature_ids`), with `last_token=True` on each document's last position only (the
Qwen-Scope report's variant; needs the store's token-level table).

overlap(A, B) = |F(A) ∩ F(B)| / |F(A)|: how much of A's concept space B already has (asymmetric — a narrow
dataset inside a broad one overlaps it near 1, not the reverse).

Redundancy. With N documents, let c(n) = E|F(S_n)|, S_n a uniformly random n-document subset, estimated from
`subsets` random orderings of the documents (prefix n of an ordering is a uniform n-subset; the curve is averaged
over orderings). The score is the normalised area under the coverage curve drawn as y = c(n)/|F(D)| against
x = n/N, as a right Riemann sum over n = 1..N:

    R(D) = (1 / N) · Σ_{n=1..N} c(n) / |F(D)|        — equivalently Σ_n c(n) / (N · |F(D)|)

(the issue's "area under the curve × N / |F(D)|" reads the same when the area is taken against n/N²; this is the one
definition used). R ∈ (0, 1]: 1 when every document alone already shows the whole footprint (fully redundant);
(N + 1) / (2N) ≈ 0.5 when each document brings its own equal share (no redundancy). Higher = more redundant.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from qscope_data.errors import DataError, UsageError
from qscope_data.store import FeatureStore

CURVE_POINTS = 101  # points of each coverage curve kept in overlap.json / plotted


# Documents read at once (`FeatureStore.batches`): a batch's (document, feature) pairs are all a footprint holds
# besides its per-document ranks.
BATCH_DOCS = 8192


@dataclass
class Footprint:
    """F(D), the features active on any of a store's documents (ascending), and how many documents it read."""

    name: str
    n_docs: int
    features: np.ndarray  # int64, ascending
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return int(self.features.size)


class CoverageCurve:
    """c(n) for n = 0..N, the mean footprint size of the first n documents over `subsets` random orderings, built a
    batch of (document, feature) pairs at a time.

    Ordering s is `rng.permutation(N)` (rng = numpy default_rng(seed), drawn in turn); its size-n subset is its first n
    documents. A feature enters the curve at the earliest rank of any document holding it, so what is kept is each
    document's rank in each ordering (4 bytes × subsets per document) and each feature's earliest rank per ordering
    (8 bytes × subsets per feature) — never the pairs themselves."""

    def __init__(self, n_docs: int, *, width: int, subsets: int = 20, seed: int = 0):
        if subsets < 1:
            raise UsageError(f"--subsets must be ≥ 1 (got {subsets})")
        self.n_docs, self.width = n_docs, width
        rng = np.random.default_rng(seed)
        self.ranks = np.empty((subsets, n_docs), dtype=np.int32)
        for s in range(subsets):
            self.ranks[s, rng.permutation(n_docs)] = np.arange(n_docs, dtype=np.int32)
        self.first = np.full((subsets, width), n_docs, dtype=np.int64)  # n_docs: never entered

    def add(self, doc_index: np.ndarray, feature: np.ndarray) -> None:
        """Pairs of documents (index into the N documents) and features active on them."""
        if feature.size == 0:
            return
        if int(feature.max()) >= self.width:  # a store wider than its manifest says: grow rather than fail
            grown = np.full((self.first.shape[0], int(feature.max()) + 1), self.n_docs, dtype=np.int64)
            grown[:, :self.width] = self.first
            self.first, self.width = grown, grown.shape[1]
        by_feature = np.argsort(feature, kind="stable")
        feats, docs = feature[by_feature], doc_index[by_feature]
        starts = np.flatnonzero(np.concatenate(([True], feats[1:] != feats[:-1])))
        for s in range(self.first.shape[0]):
            entry = np.minimum.reduceat(self.ranks[s, docs], starts)
            np.minimum.at(self.first[s], feats[starts], entry)

    @property
    def features(self) -> np.ndarray:
        """F(D), ascending."""
        return np.flatnonzero(self.first[0] < self.n_docs) if self.first.size else np.zeros(0, dtype=np.int64)

    def curve(self) -> np.ndarray:
        curve = np.zeros(self.n_docs + 1, dtype=np.float64)
        entered = self.features
        if self.n_docs == 0 or entered.size == 0:
            return curve
        for s in range(self.first.shape[0]):
            curve[1:] += np.cumsum(np.bincount(self.first[s, entered], minlength=self.n_docs))
        return curve / self.first.shape[0]


def footprint_of_sets(name: str, docs: Sequence[Sequence[int]], *, subsets: int = 20,
                      seed: int = 0) -> tuple[Footprint, np.ndarray]:
    """The footprint and coverage curve of documents given as feature sets (small examples, tests)."""
    lengths = np.array([len(d) for d in docs], dtype=np.int64)
    flat = np.array([f for d in docs for f in d], dtype=np.int64)
    acc = CoverageCurve(len(docs), width=int(flat.max()) + 1 if flat.size else 0, subsets=subsets, seed=seed)
    acc.add(np.repeat(np.arange(len(docs), dtype=np.int64), lengths), flat)
    return Footprint(name, len(docs), acc.features), acc.curve()


def _pairs(column: pa.ChunkedArray | pa.Array, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """(document index, feature) pairs of a list<int> column whose first row is document `offset`."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if arr.null_count:
        arr = arr.fill_null(pa.scalar([], type=arr.type))
    parents = pc.list_parent_indices(arr).to_numpy(zero_copy_only=False).astype(np.int64) + offset
    return parents, pc.list_flatten(arr).to_numpy(zero_copy_only=False).astype(np.int64)


def load_footprint(store: FeatureStore, *, name: str | None = None, layer: int | None = None, last_token: bool = False,
                   subsets: int = 20, seed: int = 0) -> tuple[Footprint, np.ndarray]:
    """A store's footprint and coverage curve, from its per-document active features (all aggregated positions,
    read `BATCH_DOCS` documents at a time) or from the last token of each document."""
    layer = store.resolve_layer(layer)
    name = name or store.root.name
    source = {"path": str(store.root.resolve()), "manifest": store.manifest_hash(), "layer": layer}
    width = store.manifest.sae(layer).d_sae
    if not last_token:
        n_docs = int(store.scan(layer, ["doc_id"]).select(pl.len()).collect().item())
        acc = CoverageCurve(n_docs, width=width, subsets=subsets, seed=seed)
        offset = 0
        for batch in store.batches(layer, ["feature_ids"], batch_rows=BATCH_DOCS):
            acc.add(*_pairs(batch.to_arrow().column("feature_ids"), offset))
            offset += batch.height
        return Footprint(name, n_docs, acc.features, source), acc.curve()
    tokens = store.scan_tokens(layer)
    if tokens is None:
        raise DataError(f"{store.root}: no token-level table for layer {layer}; --last-token needs a store encoded with --token-level")
    last = (
        tokens.select("doc_id", "position", "feature_ids", "values")
        .filter(pl.col("position") == pl.col("position").max().over("doc_id"))
        .unique("doc_id", keep="first")
        .sort("doc_id")
        .with_row_index("doc_index")
    )
    n_docs = int(last.select(pl.len()).collect().item())
    pairs = (
        last.select("doc_index", "feature_ids", "values")
        .explode(["feature_ids", "values"])
        .filter(pl.col("values") > 0)
        .collect()
    )
    acc = CoverageCurve(n_docs, width=width, subsets=subsets, seed=seed)
    acc.add(pairs["doc_index"].cast(pl.Int64).to_numpy(), pairs["feature_ids"].cast(pl.Int64).to_numpy())
    return Footprint(name, n_docs, acc.features, source), acc.curve()


def overlap_matrix(footprints: Sequence[Footprint]) -> list[list[float | None]]:
    """M[i][j] = |F_i ∩ F_j| / |F_i| (None for an empty F_i)."""
    sets = [fp.features for fp in footprints]
    width = max((int(s[-1]) + 1 for s in sets if s.size), default=0)
    masks = []
    for b in sets:
        mask = np.zeros(width, dtype=bool)
        mask[b] = True
        masks.append(mask)
    return [[None if a.size == 0 else float(masks[j][a].sum() / a.size) for j in range(len(sets))] for a in sets]


def redundancy(curve: np.ndarray) -> float | None:
    """R = Σ_{n=1..N} c(n) / (N · |F(D)|), with |F(D)| = c(N); None for an empty store or footprint."""
    n = curve.size - 1
    if n < 1 or curve[-1] <= 0:
        return None
    return float(curve[1:].sum() / (n * curve[-1]))


def _sample_curve(curve: np.ndarray, points: int = CURVE_POINTS) -> dict[str, list]:
    n = curve.size - 1
    idx = np.unique(np.round(np.linspace(0, n, min(points, n + 1))).astype(np.int64))
    return {"n": idx.tolist(), "coverage": [round(float(v), 4) for v in curve[idx]]}


@dataclass
class OverlapResult:
    names: list[str]
    footprints: list[Footprint]
    matrix: list[list[float | None]]
    curves: list[np.ndarray]
    redundancy: list[float | None]
    options: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "datasets": self.names,
            "matrix": [[None if v is None else round(v, 6) for v in row] for row in self.matrix],
            "footprint_sizes": [fp.size for fp in self.footprints],
            "n_docs": [fp.n_docs for fp in self.footprints],
            "redundancy": [None if r is None else round(r, 6) for r in self.redundancy],
            "curves": {name: _sample_curve(c) for name, c in zip(self.names, self.curves)},
            "stores": [fp.source for fp in self.footprints],
            **self.options,
            "definitions": {
                "matrix": "M[i][j] = |F(i) ∩ F(j)| / |F(i)|",
                "redundancy": "R = sum_{n=1..N} c(n) / (N * |F(D)|), c(n) = mean footprint size of n random documents",
            },
        }


def dataset_names(stores: Sequence[str | Path], names: Sequence[str] | None) -> list[str]:
    """The given names, or each store folder's name made unique (`name`, `name#2`, …)."""
    if names is not None:
        if len(names) != len(stores):
            raise UsageError(f"--names gives {len(names)} name(s) for {len(stores)} store(s)")
        if len(set(names)) != len(names):
            raise UsageError("--names: names must be distinct")
        return list(names)
    out: list[str] = []
    for store in stores:
        base = Path(store).resolve().name or str(store)
        name, i = base, 2
        while name in out:
            name, i = f"{base}#{i}", i + 1
        out.append(name)
    return out


def analyse_overlap(
    stores: Sequence[FeatureStore],
    *,
    names: Sequence[str] | None = None,
    layer: int | None = None,
    last_token: bool = False,
    subsets: int = 20,
    seed: int = 0,
    on_store: Callable[[str], None] | None = None,
) -> OverlapResult:
    """Footprints, overlap matrix and redundancy of several stores read through the same SAE."""
    if not stores:
        raise UsageError("overlap: give at least one store")
    if subsets < 1:
        raise UsageError(f"--subsets must be ≥ 1 (got {subsets})")
    names = dataset_names([s.root for s in stores], names)
    first = stores[0].manifest.sae(stores[0].resolve_layer(layer))
    for store in stores[1:]:
        info = store.manifest.sae(store.resolve_layer(layer))
        if info.d_sae != first.d_sae or info.layer != first.layer:
            raise DataError(
                f"{store.root}: SAE layer {info.layer} d_sae={info.d_sae} differs from {stores[0].root} "
                f"(layer {first.layer}, d_sae={first.d_sae}); footprints are not comparable"
            )
    footprints: list[Footprint] = []
    curves: list[np.ndarray] = []
    for name, store in zip(names, stores):
        fp, curve = load_footprint(store, name=name, layer=layer, last_token=last_token, subsets=subsets, seed=seed)
        footprints.append(fp)
        curves.append(curve)
        if on_store:
            on_store(name)
    options = {"last_token": last_token, "subsets": subsets, "seed": seed, "layer": first.layer, "sae": first.model_dump()}
    return OverlapResult(names, footprints, overlap_matrix(footprints), curves, [redundancy(c) for c in curves], options)
