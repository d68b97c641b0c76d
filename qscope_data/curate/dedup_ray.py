"""Exact and near-duplicate removal on Ray Data: the same decisions as `dedup.find_duplicates`, computed across workers.

Why: the in-process path keeps one MinHash LSH index (and every kept shingle set) in the driver, so it cannot go
past one machine. Here the work that grows with the corpus runs as Ray Data operators:

1. `map_batches`: per document the exact-content key, the word-5-gram shingle hashes, the MinHash signature (the
   same template, seed and permutations as dedup.py) and its band keys (datasketch's bands and rows for the
   threshold, each key = band index + the band's hash values, i.e. exactly datasketch's buckets).
2. `groupby(key)`: exact duplicates — every document but the first (in input order) of a key is a duplicate of it.
3. `groupby(band)` over the first-of-key documents with shingles: every pair sharing a bucket is an LSH candidate,
   confirmed by the exact Jaccard of the two shingle sets (pairs below the threshold are dropped in the workers).

The driver then receives only the confirmed edges (pairs at Jaccard ≥ threshold) and resolves them in input order
with the in-process contract: a document is a near duplicate of the earliest *kept* document it has an edge to
(the in-process index holds only kept documents, so a chain A ~ B ~ C with A ≁ C keeps C). That is why the
clusters are not taken as connected components of the edge graph: components would merge such chains and change
which documents survive. The driver holds the input rows it hands to Ray (curate has them in memory already) and
the confirmed edges; signatures, band buckets and shingle sets live in the workers.

Bucket work is quadratic in a bucket's size; exact duplicates (the usual cause of huge buckets) are removed in step
2 before banding.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.compute as pc

from qscope_data.curate import dedup as dd

PAIR_SCHEMA = pa.schema([("i", pa.int64()), ("j", pa.int64()), ("sim", pa.float64())])


def _doc(row: dict[str, Any]) -> dd.DedupDoc:
    messages = json.loads(row["messages"]) if row["messages"] is not None else None
    return dd.DedupDoc(row["doc_id"], row["text"], messages)


class _Signatures:
    """map_batches callable: builds the MinHash template once per worker."""

    def __init__(self, threshold: float, ngram: int, num_perm: int, seed: int):
        self.template = dd.minhash_template(num_perm, seed)
        self.bands, self.rows = dd.lsh_bands(threshold, num_perm)
        self.ngram = ngram

    def __call__(self, batch: pa.Table) -> pa.Table:
        keys, shingles, bands = [], [], []
        for row in batch.to_pylist():
            doc = _doc(row)
            keys.append(dd.exact_key(doc))
            sh = dd.shingle_hashes(dd.plain_text(doc), self.ngram)
            shingles.append(sorted(sh))
            if sh:
                hv = dd.signature(self.template, sh).hashvalues
                bands.append([f"{b}:{hv[b * self.rows:(b + 1) * self.rows].tobytes().hex()}" for b in range(self.bands)])
            else:
                bands.append([])
        return pa.table({"pos": batch["pos"], "key": keys, "shingles": pa.array(shingles, pa.list_(pa.int64())),
                         "bands": pa.array(bands, pa.list_(pa.string()))})


def _exact_groups(group: pa.Table) -> pa.Table:
    """One exact-content key: the first document (lowest pos) is kept, the others repeat it (column `first`)."""
    first = pc.min(group["pos"]).as_py()
    return group.append_column("first", pa.array([first] * group.num_rows, pa.int64()))


def _firsts_with_shingles(batch: pa.Table) -> pa.Table:
    keep = pc.and_(pc.equal(batch["pos"], batch["first"]), pc.greater(pc.list_value_length(batch["bands"]), 0))
    return batch.filter(keep).select(["pos", "shingles", "bands"])


def _bucket_pairs(group: pa.Table, threshold: float) -> pa.Table:
    """One LSH bucket: its confirmed pairs (i < j in input order, Jaccard ≥ threshold)."""
    members = sorted(zip(group["pos"].to_pylist(), group["shingles"].to_pylist()))
    out_i, out_j, out_s = [], [], []
    sets = [(p, frozenset(s)) for p, s in members]
    for a in range(len(sets)):
        for b in range(a + 1, len(sets)):
            sim = dd.jaccard(sets[a][1], sets[b][1])
            if sim >= threshold:
                out_i.append(sets[a][0])
                out_j.append(sets[b][0])
                out_s.append(sim)
    return pa.table({"i": out_i, "j": out_j, "sim": out_s}, schema=PAIR_SCHEMA)


def _explode_bands(batch: pa.Table) -> pa.Table:
    pos, band, shingles = [], [], []
    for p, bs, sh in zip(batch["pos"].to_pylist(), batch["bands"].to_pylist(), batch["shingles"].to_pylist()):
        for b in bs:
            pos.append(p)
            band.append(b)
            shingles.append(sh)
    return pa.table({"pos": pa.array(pos, pa.int64()), "band": pa.array(band, pa.string()),
                     "shingles": pa.array(shingles, pa.list_(pa.int64()))})


def find_duplicates_ray(
    docs: Iterable[dd.DedupDoc], *, near: bool = True, threshold: float = dd.DEFAULT_THRESHOLD,
    ngram: int = dd.NGRAM, num_perm: int = dd.NUM_PERM, seed: int = dd.SEED, num_partitions: int | None = None,
) -> dict[str, dd.Duplicate]:
    """doc_id → Duplicate, equal to `dedup.find_duplicates` on the same documents in the same order (module doc).
    Needs a running (or auto-started) Ray; the documents' order is their position in `docs`. `num_partitions`:
    shuffle partitions of the two groupbys (default 2 per cluster CPU; Ray's own default of 200 costs seconds
    of task overhead on small inputs)."""
    import ray
    import ray.data

    dd.lsh_threshold(threshold)  # the in-process path's check and message
    ids: list[str] = []
    rows = []
    for pos, doc in enumerate(docs):
        ids.append(doc.doc_id)
        rows.append({"pos": pos, "doc_id": doc.doc_id, "text": doc.text,
                     "messages": json.dumps(doc.messages, ensure_ascii=False) if doc.messages is not None else None})
    if not rows:
        return {}
    parts = num_partitions or max(1, 2 * int(ray.cluster_resources().get("CPU", 1)))
    source = ray.data.from_arrow(pa.Table.from_pylist(rows, schema=pa.schema([
        ("pos", pa.int64()), ("doc_id", pa.string()), ("text", pa.string()), ("messages", pa.string())])))
    sigs = source.map_batches(_Signatures, fn_constructor_args=(threshold, ngram, num_perm, seed),
                              batch_format="pyarrow", concurrency=(1, 2)).materialize()
    exact = sigs.groupby("key", num_partitions=parts).map_groups(_exact_groups, batch_format="pyarrow").materialize()
    out: dict[str, dd.Duplicate] = {}
    for batch in exact.select_columns(["pos", "first"]).iter_batches(batch_format="pyarrow"):
        for p, f in zip(batch["pos"].to_pylist(), batch["first"].to_pylist()):
            if p != f:
                out[ids[p]] = dd.Duplicate("duplicate", ids[f], 1.0)
    if not near:
        return out
    pairs = (exact.map_batches(_firsts_with_shingles, batch_format="pyarrow")
             .map_batches(_explode_bands, batch_format="pyarrow")
             .groupby("band", num_partitions=parts).map_groups(_bucket_pairs, fn_kwargs={"threshold": threshold}, batch_format="pyarrow"))
    edges: dict[int, dict[int, float]] = {}
    for batch in pairs.iter_batches(batch_format="pyarrow"):
        for i, j, sim in zip(batch["i"].to_pylist(), batch["j"].to_pylist(), batch["sim"].to_pylist()):
            edges.setdefault(j, {})[i] = sim
    near_of: dict[int, int] = {}
    for j in sorted(edges):
        kept = [i for i in edges[j] if i not in near_of]
        if kept:
            i = min(kept)
            near_of[j] = i
            out[ids[j]] = dd.Duplicate("near_duplicate", ids[i], round(edges[j][i], 6))
    return out

