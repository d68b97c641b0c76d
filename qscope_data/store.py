"""The feature store: the contract between `encode` and every later stage. Read and write it only through here.

Layout of a store folder ``DIR``::

    DIR/manifest.json                     what produced the store, and every shard's rows / bytes / sha256
    DIR/layer{n}/part-{i:05d}.parquet     one row per document, for SAE layer n (one folder per encoded layer)
    DIR/layer{n}/tokens/part-{i:05d}.parquet   optional token-level top-k (``--token-level``)
    DIR/rejects.jsonl                     records that could not be encoded, with line/id and reason
    DIR/_progress/part-{i:05d}.json       completion marker per shard (resume); removed from nothing, harmless

Document table columns (``layer{n}/part-*.parquet``):

    doc_id        string         the record's id (``--id-field``) or a stable content hash
    n_tokens      int32          tokens fed to the model after truncation, first position included
    n_positions   int32          positions aggregated (first position and non-selected spans excluded)
    feature_ids   list<int32>    features active at ≥ 1 aggregated position, ascending
    max_acts      list<float32>  per feature in feature_ids, its maximum activation
    fire_counts   list<int32>    per feature in feature_ids, the number of aggregated positions where active
    …             pass-through columns of the input record (text / messages unless --drop-text, lang, label, …)

Token table columns: doc_id string, position int32, token_id int32, feature_ids list<int32>, values list<float32>.

Feature absent from a row ⇒ activation 0, count 0 (sparse semantics).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
from pydantic import BaseModel, Field

from qscope_data import atomic
from qscope_data.errors import DataError

SCHEMA_VERSION = 1
STORE_KIND = "qscope-feature-store"
MANIFEST = "manifest.json"
REJECTS = "rejects.jsonl"
PROGRESS_DIR = "_progress"

FEATURE_COLUMNS = ("doc_id", "n_tokens", "n_positions", "feature_ids", "max_acts", "fire_counts")
FEATURE_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("n_tokens", pa.int32()),
        ("n_positions", pa.int32()),
        ("feature_ids", pa.list_(pa.int32())),
        ("max_acts", pa.list_(pa.float32())),
        ("fire_counts", pa.list_(pa.int32())),
    ]
)
TOKEN_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("position", pa.int32()),
        ("token_id", pa.int32()),
        ("feature_ids", pa.list_(pa.int32())),
        ("values", pa.list_(pa.float32())),
    ]
)


class SAEInfo(BaseModel):
    layer: int
    source: str = ""
    format: str = ""
    k: int
    d_sae: int
    d_model: int
    hook: str = "resid_post"


class ShardInfo(BaseModel):
    name: str  # path relative to the store root
    rows: int
    bytes: int
    sha256: str


class StoreManifest(BaseModel):
    kind: str = STORE_KIND
    schema_version: int = SCHEMA_VERSION
    model: dict[str, Any] = Field(default_factory=dict)  # id, revision, dtype, architecture, n_layers
    saes: list[SAEInfo] = Field(default_factory=list)
    options: dict[str, Any] = Field(default_factory=dict)  # max_tokens, keep_first, span, text_field, …
    inputs: dict[str, Any] = Field(default_factory=dict)  # paths and their fingerprint
    code_version: str = ""
    n_documents: int = 0
    n_rejected: int = 0
    shards: list[ShardInfo] = Field(default_factory=list)
    stats: dict[str, Any] = Field(default_factory=dict)

    @property
    def layers(self) -> list[int]:
        return [s.layer for s in self.saes]

    def sae(self, layer: int | None = None) -> SAEInfo:
        if layer is None:
            return self.saes[0]
        for info in self.saes:
            if info.layer == layer:
                return info
        raise DataError(f"store has no layer {layer} (layers: {', '.join(map(str, self.layers))})")


def layer_dir(layer: int) -> str:
    return f"layer{layer}"


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


class FeatureStore:
    """Read access to a finished store. Every stage after `encode` goes through this class."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        path = self.root / MANIFEST
        if not path.exists():
            hint = " (an unfinished encode? rerun it to resume)" if (self.root / PROGRESS_DIR).exists() else ""
            raise DataError(f"{self.root}: not a feature store: no {MANIFEST}{hint}")
        try:
            self.manifest = StoreManifest.model_validate_json(path.read_text())
        except Exception as exc:
            raise DataError(f"{path}: invalid store manifest: {str(exc).splitlines()[0]}") from exc
        if self.manifest.kind != STORE_KIND:
            raise DataError(f"{path}: kind is {self.manifest.kind!r}, not a feature store")
        if self.manifest.schema_version > SCHEMA_VERSION:
            raise DataError(f"{path}: schema version {self.manifest.schema_version} is newer than this qscope ({SCHEMA_VERSION})")
        if not self.manifest.saes:
            raise DataError(f"{path}: manifest lists no SAE layer")

    @property
    def layers(self) -> list[int]:
        return self.manifest.layers

    def resolve_layer(self, layer: int | None) -> int:
        return self.manifest.sae(layer).layer

    def shard_paths(self, layer: int | None = None, tokens: bool = False) -> list[Path]:
        folder = self.root / layer_dir(self.resolve_layer(layer))
        if tokens:
            folder = folder / "tokens"
        return sorted(folder.glob("part-*.parquet"))

    def scan(self, layer: int | None = None, columns: list[str] | None = None) -> pl.LazyFrame:
        paths = self.shard_paths(layer)
        if not paths:
            return pl.LazyFrame(schema=pl.Schema(pl.from_arrow(FEATURE_SCHEMA.empty_table()).schema))
        lf = pl.scan_parquet([str(p) for p in paths])
        return lf.select(columns) if columns else lf

    def read(self, layer: int | None = None, columns: list[str] | None = None) -> pl.DataFrame:
        return self.scan(layer, columns).collect()

    def scan_tokens(self, layer: int | None = None) -> pl.LazyFrame | None:
        paths = self.shard_paths(layer, tokens=True)
        return pl.scan_parquet([str(p) for p in paths]) if paths else None

    def columns(self, layer: int | None = None) -> list[str]:
        return list(self.scan(layer).collect_schema().names())

    def passthrough_columns(self, layer: int | None = None) -> list[str]:
        return [c for c in self.columns(layer) if c not in FEATURE_COLUMNS]

    def manifest_hash(self) -> str:
        return atomic.sha256_file(self.root / MANIFEST)

    def rejects(self) -> list[dict]:
        path = self.root / REJECTS
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def open_store(root: str | Path) -> FeatureStore:
    return FeatureStore(root)


def feature_table(rows: dict[str, list], passthrough: pa.Table | None = None) -> pa.Table:
    """Build a document table with the contract's types from column lists (+ pass-through columns)."""
    table = pa.Table.from_pydict({name: rows[name] for name in FEATURE_SCHEMA.names}, schema=FEATURE_SCHEMA)
    if passthrough is not None:
        for name in passthrough.column_names:
            if name not in FEATURE_SCHEMA.names:
                table = table.append_column(name, passthrough.column(name))
    return table


def write_store(
    root: str | Path,
    tables: dict[int, pa.Table | pl.DataFrame],
    manifest: StoreManifest,
    *,
    shard_rows: int = 50_000,
) -> FeatureStore:
    """Write finished document tables (one per layer) as a store in one go: for tests, benchmarks and stages
    that derive a store from another (e.g. synthesis' accepted samples). `encode` uses the resumable writer."""
    root = Path(root)
    shards: list[ShardInfo] = []
    n_docs = 0
    for layer, table in tables.items():
        if isinstance(table, pl.DataFrame):
            table = table.to_arrow()
        table = _cast_feature_columns(table)
        n_docs = table.num_rows
        for i, start in enumerate(range(0, max(table.num_rows, 1), shard_rows)):
            rel = f"{layer_dir(layer)}/{shard_name(i)}"
            atomic.write_parquet(root / rel, table.slice(start, shard_rows))
            shards.append(shard_info(root, rel))
    manifest = manifest.model_copy(update={"shards": shards, "n_documents": n_docs})
    atomic.write_text(root / MANIFEST, manifest.model_dump_json(indent=2) + "\n")
    return FeatureStore(root)


def shard_info(root: Path, rel: str) -> ShardInfo:
    import pyarrow.parquet as pq

    path = root / rel
    return ShardInfo(name=rel, rows=pq.ParquetFile(path).metadata.num_rows, bytes=path.stat().st_size, sha256=atomic.sha256_file(path))


def _cast_feature_columns(table: pa.Table) -> pa.Table:
    missing = [n for n in FEATURE_SCHEMA.names if n not in table.column_names]
    if missing:
        raise DataError(f"document table lacks column(s) {', '.join(missing)}")
    for field in FEATURE_SCHEMA:
        idx = table.column_names.index(field.name)
        if table.schema.field(idx).type != field.type:
            table = table.set_column(idx, field.name, table.column(idx).cast(field.type))
    return table
