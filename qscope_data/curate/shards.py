"""Deterministic sharding: rows in order, cut by row count and size, written as Parquet (and optionally JSONL).

Names follow the Hugging Face convention ``{folder}/{split}-{i:05d}-of-{n:05d}.parquet`` so `datasets` and the Hub
read the folder directly. Where rows are cut depends only on the rows: ``max_rows`` and ``max_bytes`` (measured
as each row's UTF-8 JSON size, i.e. the uncompressed content; the Parquet file is smaller after zstd), so the
same rows always give the same files. A shard holds at least one row, even one larger than ``max_bytes``.
Every file is written atomically; nothing in a shard depends on time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence

import pyarrow as pa

from qscope_data import atomic
from qscope_data.curate.manifest import FileEntry, file_entry

DEFAULT_MAX_ROWS = 100_000
DEFAULT_MAX_BYTES = 256 * 1024 * 1024


def row_json(row: dict) -> str:
    return json.dumps(row, ensure_ascii=False, separators=(",", ":"))


def plan_shards(sizes: Sequence[int], *, max_rows: int, max_bytes: int | None) -> list[tuple[int, int]]:
    """[start, stop) ranges: greedy, a new shard when the next row would pass either limit."""
    if max_rows < 1:
        raise ValueError("max_rows must be ≥ 1")
    ranges: list[tuple[int, int]] = []
    start, size = 0, 0
    for i, n in enumerate(sizes):
        full = (i - start) >= max_rows or (max_bytes is not None and i > start and size + n > max_bytes)
        if full:
            ranges.append((start, i))
            start, size = i, 0
        size += n
    ranges.append((start, len(sizes)))
    return ranges


def write_split(
    table: pa.Table, root: Path, folder: str, split: str, *,
    max_rows: int = DEFAULT_MAX_ROWS, max_bytes: int | None = DEFAULT_MAX_BYTES, jsonl: bool = False,
) -> list[FileEntry]:
    """Write `table` as shards under root/folder (an empty table gives one empty shard, so the split loads)."""
    sizes = [len(row_json(r).encode("utf-8")) + 1 for r in table.to_pylist()]
    return write_split_batches([table], sizes, table.schema, root, folder, split, max_rows=max_rows,
                               max_bytes=max_bytes, jsonl=jsonl)


def write_split_batches(
    tables: Iterable[pa.Table], sizes: Sequence[int], schema: pa.Schema, root: Path, folder: str, split: str, *,
    max_rows: int = DEFAULT_MAX_ROWS, max_bytes: int | None = DEFAULT_MAX_BYTES, jsonl: bool = False,
) -> list[FileEntry]:
    """`write_split` of the rows of `tables` taken in order, whose JSON sizes (`sizes`, one per row) are known
    beforehand: the same files, with memory holding one shard (≤ max_rows rows / ≤ max_bytes) at a time."""
    ranges = plan_shards(sizes, max_rows=max_rows, max_bytes=max_bytes)
    source = iter(tables)
    pending: list[pa.Table] = []
    have = 0
    entries: list[FileEntry] = []
    n = len(ranges)
    for i, (start, stop) in enumerate(ranges):
        while have < stop - start:
            part = next(source)
            pending.append(part)
            have += part.num_rows
        rows = pa.concat_tables(pending) if pending else schema.empty_table()
        # cast: rows read back from Parquet name list items "element"; the shard keeps the schema's own names
        shard, rest = rows.slice(0, stop - start).combine_chunks().cast(schema), rows.slice(stop - start)
        pending, have = ([rest] if rest.num_rows else []), rest.num_rows
        stem = f"{folder}/{split}-{i:05d}-of-{n:05d}"
        atomic.write_parquet(root / f"{stem}.parquet", shard)
        entries.append(file_entry(root, f"{stem}.parquet", split=split))
        if jsonl:
            atomic.write_text(root / f"{stem}.jsonl", "".join(row_json(r) + "\n" for r in shard.to_pylist()))
            entries.append(file_entry(root, f"{stem}.jsonl", split=split))
    return entries
