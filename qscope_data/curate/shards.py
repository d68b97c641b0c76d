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
from typing import Sequence

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
    rows = table.to_pylist()
    lines = [row_json(r) for r in rows]
    ranges = plan_shards([len(line.encode("utf-8")) + 1 for line in lines], max_rows=max_rows, max_bytes=max_bytes)
    entries: list[FileEntry] = []
    n = len(ranges)
    for i, (start, stop) in enumerate(ranges):
        stem = f"{folder}/{split}-{i:05d}-of-{n:05d}"
        atomic.write_parquet(root / f"{stem}.parquet", table.slice(start, stop - start))
        entries.append(file_entry(root, f"{stem}.parquet", split=split))
        if jsonl:
            atomic.write_text(root / f"{stem}.jsonl", "".join(line + "\n" for line in lines[start:stop]))
            entries.append(file_entry(root, f"{stem}.jsonl", split=split))
    return entries
