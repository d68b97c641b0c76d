"""Feature-store shards are written in bounded row groups, so a streaming stage's batch decodes only what it reads."""

from __future__ import annotations

import random

import pyarrow.parquet as pq

from coverage_stores import make_store, random_docs
from qscope_data import store as store_mod


def test_a_large_shard_is_cut_into_row_groups_and_batches_read_them_in_order(tmp_path, monkeypatch):
    """With row groups of 64 rows, a 500-document shard holds 8 of them (a reader slicing 100 documents decodes at
    most 3, not the whole shard — a 50,000-row shard used to be one row group, and select's peak RSS followed it);
    reading in batches still gives the store's rows in order."""
    monkeypatch.setattr(store_mod, "ROW_GROUP_ROWS", 64)
    docs = random_docs(random.Random(3), 500, d_sae=32, categories={"benign": ([1], 0.3), "x": ([2, 3], 0.5)})
    store = make_store(tmp_path / "store", docs, d_sae=32)
    (shard,) = store.shard_paths(store.layers[0])
    meta = pq.ParquetFile(shard).metadata
    assert meta.num_row_groups == 8 and max(meta.row_group(i).num_rows for i in range(8)) == 64
    ids = [i for batch in store.batches(columns=["doc_id"], batch_rows=100) for i in batch["doc_id"].to_list()]
    assert ids == [d["doc_id"] for d in docs]
