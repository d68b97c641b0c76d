"""The feature store: the contract between `encode` and every later stage. Read and write it only through here.

Layout of a store folder ``DIR``::

    DIR/manifest.json                     what produced the store, and every shard's rows / bytes / sha256
    DIR/layer{n}/part-{i:05d}.parquet     one row per document, for SAE layer n (one folder per encoded layer)
    DIR/layer{n}/tokens/part-{i:05d}.parquet   optional token-level top-k (``--token-level``)
    DIR/rejects.jsonl                     records that could not be encoded, with line/id and reason
    DIR/_progress/job.json                what the job is (model, SAEs, options, input fingerprint): a rerun with
                                          other settings is refused instead of mixing two jobs in one store
    DIR/_progress/part-{i:05d}.json       completion marker per shard (resume); kept after the run, harmless
    DIR/_progress/part-{i:05d}.rejects.jsonl   the shard's rejects, merged into DIR/rejects.jsonl at the end

Writing (`StoreWriter`): shard ``i`` of every layer is written with write-then-rename, then its rejects, then its
marker; a shard counts as written only once its marker exists, so a crash (even kill -9) at any point leaves whole
shards or shards that the next run redoes. `manifest.json` is written last: a store without one is unfinished.
Shard names depend only on the shard index, never on time or worker, so a resumed run and an uninterrupted one
write the same files. A shard whose records were all rejected writes no Parquet file.

Document table columns (``layer{n}/part-*.parquet``):

    doc_id        string         the record's id (``--id-field``) or a stable content hash
    n_tokens      int32          tokens fed to the model after truncation, first position included
    n_positions   int32          positions aggregated (first position and non-selected spans excluded)
    feature_ids   list<int32>    features active at ≥ 1 aggregated position, ascending
    max_acts      list<float32>  per feature in feature_ids, its maximum activation
    fire_counts   list<int32>    per feature in feature_ids, the number of aggregated positions where active
    …             pass-through columns of the input record (text / messages unless --drop-text, lang, label, …)

Token table columns: doc_id string, position int32, token_id int32, feature_ids list<int32>, values list<float32>
(one row per aggregated position; feature_ids in descending order of value, as the SAE's top-k returns them).

Pass-through columns have one type across all shards (inferred over the whole input before the first shard);
an input field named like a store column is stored as ``input_<name>``.

Feature absent from a row ⇒ activation 0, count 0 (sparse semantics).

Reading (`FeatureStore`): exactly the shards `manifest.json` lists, each checked on open to be inside the store,
present and of its recorded size (sha256 too with ``verify=True``); anything else is refused naming the shard.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any, Iterator, Literal

import polars as pl
import pyarrow as pa
from pydantic import BaseModel, Field

from qscope_data import atomic
from qscope_data.errors import DataError, UsageError

SCHEMA_VERSION = 1
STORE_KIND = "qscope-feature-store"
MANIFEST = "manifest.json"
REJECTS = "rejects.jsonl"
PROGRESS_DIR = "_progress"
BATCH_ROWS = 65_536  # documents a streaming reader holds at once (`FeatureStore.batches`)
ROW_GROUP_ROWS = 2048  # documents per Parquet row group: a batch decodes only the row groups it covers, so a
# streaming stage's memory follows its batch, not the shard (a 50,000-row shard was one 50,000-row group)
SCRATCH = "scratch"  # _progress/scratch/: executors' staging, removed when the store is finished
JOB = "job.json"

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

    def __init__(self, root: str | Path, *, verify: bool = False, check: bool = True):
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
        problems = self.problems(verify=verify, first=True) if check else []
        if problems:
            raise DataError(problems[0])
        key = self.root.resolve()
        _OPENED.pop(key, None)
        _OPENED[key] = self  # re-inserted: the latest opened is checked first

    def problems(self, *, verify: bool = True, first: bool = False) -> list[str]:
        """What makes the shards differ from what the manifest lists: a listed shard outside the store, missing,
        with another size (cheap, always checked on open) or sha256 (`verify`: `qscope manifest verify`). Files
        the manifest does not list are never read, so a stray or leftover part file cannot change a result."""
        found: list[str] = []
        where = self.root / MANIFEST
        for info in self.manifest.shards:
            try:
                shard = member_path(self.root, info.name, what=f"{where}: shard")
            except DataError as exc:
                found.append(str(exc))
            else:
                if not shard.is_file():
                    found.append(f"{shard}: shard listed in {where} is missing; re-encode the store")
                elif (size := shard.stat().st_size) != info.bytes:
                    found.append(f"{shard}: {size} bytes, {where} says {info.bytes}; the store changed after encode")
                elif verify and atomic.sha256_file(shard) != info.sha256:
                    found.append(f"{shard}: sha256 differs from {where}; the store changed after encode")
            if first and found:
                break
        return found

    @property
    def layers(self) -> list[int]:
        return self.manifest.layers

    def resolve_layer(self, layer: int | None) -> int:
        return self.manifest.sae(layer).layer

    def shard_paths(self, layer: int | None = None, tokens: bool = False) -> list[Path]:
        """The layer's shards as the manifest lists them (never a glob: see `problems`)."""
        prefix = f"{layer_dir(self.resolve_layer(layer))}/{'tokens/' if tokens else ''}"
        names = [s.name for s in self.manifest.shards if s.name.startswith(prefix) and "/" not in s.name[len(prefix):]]
        return [self.root / name for name in sorted(names, key=_shard_order)]

    def scan(self, layer: int | None = None, columns: list[str] | None = None) -> pl.LazyFrame:
        paths = self.shard_paths(layer)
        if not paths:
            return pl.LazyFrame(schema=pl.Schema(pl.from_arrow(FEATURE_SCHEMA.empty_table()).schema))
        lf = pl.scan_parquet([str(p) for p in paths])
        return lf.select(columns) if columns else lf

    def read(self, layer: int | None = None, columns: list[str] | None = None) -> pl.DataFrame:
        return self.scan(layer, columns).collect()

    def batches(self, layer: int | None = None, columns: list[str] | None = None,
                batch_rows: int = BATCH_ROWS) -> Iterator[pl.DataFrame]:
        """The layer's rows in store order, `batch_rows` documents at a time: what a stage that must see every
        document holds is one batch, never the store. Slices push down to the Parquet reader, and the next batch is
        read in a background thread while the caller works on the current one (polars releases the GIL)."""
        from concurrent.futures import ThreadPoolExecutor

        if batch_rows < 1:
            raise UsageError(f"batch_rows must be ≥ 1 (got {batch_rows})")
        lf = self.scan(layer, columns)
        starts = list(range(0, lf.select(pl.len()).collect().item(), batch_rows))
        if not starts:
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="qscope-read") as pool:
            pending = pool.submit(lf.slice(starts[0], batch_rows).collect)
            for i in range(len(starts)):
                batch = pending.result()
                if i + 1 < len(starts):
                    pending = pool.submit(lf.slice(starts[i + 1], batch_rows).collect)
                yield batch

    def scan_tokens(self, layer: int | None = None) -> pl.LazyFrame | None:
        paths = self.shard_paths(layer, tokens=True)
        return pl.scan_parquet([str(p) for p in paths]) if paths else None

    def columns(self, layer: int | None = None) -> list[str]:
        return list(self.scan(layer).collect_schema().names())

    def passthrough_columns(self, layer: int | None = None) -> list[str]:
        return [c for c in self.columns(layer) if c not in FEATURE_COLUMNS]

    def job(self) -> dict[str, Any] | None:
        """What `encode` recorded about the job (model id, SAE spec, layers, options), or None for a store written
        in one go (`write_store`): later stages use it to find the model and SAE that produced the store."""
        try:
            return json.loads((self.root / PROGRESS_DIR / JOB).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def manifest_hash(self) -> str:
        return atomic.sha256_file(self.root / MANIFEST)

    def rejects(self) -> list[dict]:
        path = self.root / REJECTS
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


_OPENED: dict[Path, FeatureStore] = {}  # stores this command opened, to name the damaged shard after a read fails


def forget_opened_stores() -> None:
    """Start a command with no opened stores: in one process (tests, notebooks) an earlier command's store, since
    deleted or damaged, must not be named for this command's failure."""
    _OPENED.clear()


def find_unreadable_shard() -> str | None:
    """After a read failed with a codec / Parquet error that names no file (polars: "zstd error"): decode each shard
    of every store this command opened, the latest first, and say which one is damaged. Slow, and only on that
    failure path."""
    import pyarrow.parquet as pq

    for store in reversed(list(_OPENED.values())):
        for info in store.manifest.shards:
            path = store.root / info.name
            try:
                pq.read_table(path)
            except Exception as exc:  # the damage itself, whatever the codec calls it
                return f"{path}: unreadable shard ({str(exc).splitlines()[0]}); the store is damaged, re-encode it"
    return None


def open_store(root: str | Path, *, verify: bool = False) -> FeatureStore:
    return FeatureStore(root, verify=verify)


def is_feature_store(root: str | Path) -> bool:
    """Whether `root/manifest.json` says it is a feature store (for commands that take a store or a dataset)."""
    try:
        return json.loads((Path(root) / MANIFEST).read_text()).get("kind") == STORE_KIND
    except (OSError, ValueError, AttributeError):
        return False


def member_path(root: Path, name: str, *, what: str) -> Path:
    """`root / name` for a name a manifest lists, refusing absolute names and names that leave `root` (``../``)."""
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise DataError(f"{what} {name!r} is not a path inside {root}")
    return root / rel


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
    tokens: dict[int, pa.Table] | None = None,
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
            atomic.write_parquet(root / rel, table.slice(start, shard_rows), row_group_rows=ROW_GROUP_ROWS)
            shards.append(shard_info(root, rel))
    for layer, table in (tokens or {}).items():
        rel = f"{layer_dir(layer)}/tokens/{shard_name(0)}"
        atomic.write_parquet(root / rel, table, row_group_rows=ROW_GROUP_ROWS)
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


# -- resumable writing ----------------------------------------------------------------------------------------

JobState = Literal["new", "resume", "finished"]
_LAYER_DIR = re.compile(r"layer\d+$")


class ShardMarker(BaseModel):
    """What `_progress/part-{i:05d}.json` says: the shard is complete, with these files."""

    index: int
    rows: int
    rejects: int
    files: list[ShardInfo] = Field(default_factory=list)
    stats: dict[str, int | float] = Field(default_factory=dict)


class StoreWriter:
    """Resumable, idempotent writer of a feature store (layout and protocol in the module docstring).

    The driver calls `begin(job)` once and `finish(manifest, n_shards)` at the end; `write_shard` may run anywhere
    that sees the folder (a Ray worker builds its own `StoreWriter(root, layers)`; it holds no other state).
    """

    def __init__(self, root: str | Path, layers: list[int], *, token_level: bool = False):
        self.root = Path(root)
        self.layers = list(layers)
        self.token_level = token_level

    # -- paths ------------------------------------------------------------------------------------------------
    @property
    def progress_dir(self) -> Path:
        return self.root / PROGRESS_DIR

    def marker_path(self, index: int) -> Path:
        return self.progress_dir / f"part-{index:05d}.json"

    def rejects_path(self, index: int) -> Path:
        return self.progress_dir / f"part-{index:05d}.rejects.jsonl"

    def scratch(self, name: str) -> Path:
        """A folder an executor may stage work in while the job runs (every worker sees it: it lives in the store);
        `finish` removes it."""
        path = self.progress_dir / SCRATCH / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    # -- job ----------------------------------------------------------------------------------------------------
    def state(self, job: dict[str, Any], *, overwrite: bool = False) -> JobState:
        """What a run of `job` has left to do here; read-only. Refuses a folder that holds something else."""
        if not self.root.exists() or (self.root.is_dir() and not any(self.root.iterdir())):
            return "new"
        if not self.root.is_dir():
            raise UsageError(f"--out {self.root}: exists and is not a folder")
        if not ((self.root / MANIFEST).exists() or self.progress_dir.exists()):
            raise UsageError(f"--out {self.root}: folder exists and is not a feature store; choose a new or empty folder")
        if overwrite:
            return "new"
        recorded = self._read_job()
        want = _normalise(job)
        if recorded != want:
            what = ", ".join(_diff_keys(recorded or {}, want)) or "job"
            raise UsageError(
                f"--out {self.root}: holds an encode with other settings ({what} differ); "
                "pass --overwrite to start over or choose another --out"
            )
        return "finished" if (self.root / MANIFEST).exists() else "resume"

    def begin(self, job: dict[str, Any], *, overwrite: bool = False) -> JobState:
        """Prepare the folder: start over (new / --overwrite) or keep finished shards (resume). The writer holds the
        store's advisory lock from here until `finish` (or the process ends): one encode per store at a time."""
        from qscope_data.outputs import acquire_lock

        self._lock = acquire_lock(self.root)
        state = self.state(job, overwrite=overwrite)
        if state == "new":
            self._clear()
            self.progress_dir.mkdir(parents=True, exist_ok=True)
            atomic.write_json(self.progress_dir / JOB, _normalise(job))
        else:
            for tmp in self.root.rglob(".*.tmp"):  # left by a killed run between write and rename
                tmp.unlink(missing_ok=True)
        return state

    def _read_job(self) -> dict | None:
        path = self.progress_dir / JOB
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def _clear(self) -> None:
        """Remove what a store owns (never other files: --out may be a shared folder)."""
        if not self.root.exists():
            return
        for entry in self.root.iterdir():
            if entry.name in (MANIFEST, REJECTS) or entry.name.startswith(f".{MANIFEST}.") or entry.name.startswith(f".{REJECTS}."):
                entry.unlink()
            elif entry.is_dir() and (entry.name == PROGRESS_DIR or _LAYER_DIR.match(entry.name)):
                shutil.rmtree(entry)

    # -- shards -------------------------------------------------------------------------------------------------
    def done(self, index: int) -> bool:
        """The shard's marker exists and its files are there with the recorded sizes."""
        marker = self.read_marker(index)
        if marker is None:
            return False
        for info in marker.files:
            path = self.root / info.name
            if not path.exists() or path.stat().st_size != info.bytes:
                return False
        return True

    def read_marker(self, index: int) -> ShardMarker | None:
        try:
            return ShardMarker.model_validate_json(self.marker_path(index).read_text())
        except (FileNotFoundError, ValueError):
            return None

    def write_shard(
        self,
        index: int,
        docs: dict[int, pa.Table],
        *,
        tokens: dict[int, pa.Table] | None = None,
        rejects: list[dict] | None = None,
        stats: dict[str, int | float] | None = None,
    ) -> ShardMarker:
        """Write shard `index` of every layer (then its rejects, then its marker). Rewriting a shard is harmless."""
        rejects = rejects or []
        files: list[ShardInfo] = []
        rows = 0
        for layer in self.layers:
            table = docs[layer]
            rows = table.num_rows
            if table.num_rows:
                rel = f"{layer_dir(layer)}/{shard_name(index)}"
                atomic.write_parquet(self.root / rel, table, row_group_rows=ROW_GROUP_ROWS)
                files.append(shard_info(self.root, rel))
            if self.token_level and tokens is not None and tokens[layer].num_rows:
                rel = f"{layer_dir(layer)}/tokens/{shard_name(index)}"
                atomic.write_parquet(self.root / rel, tokens[layer], row_group_rows=ROW_GROUP_ROWS)
                files.append(shard_info(self.root, rel))
        if rejects:
            atomic.write_text(self.rejects_path(index),
                              "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejects))
        else:
            self.rejects_path(index).unlink(missing_ok=True)
        marker = ShardMarker(index=index, rows=rows, rejects=len(rejects), files=files, stats=stats or {})
        atomic.write_text(self.marker_path(index), marker.model_dump_json(indent=1) + "\n")
        return marker

    def finish(self, manifest: StoreManifest, n_shards: int) -> FeatureStore:
        """Merge the shards' rejects into DIR/rejects.jsonl and write the manifest (last: it marks the store done)."""
        markers: list[ShardMarker] = []
        for i in range(n_shards):
            marker = self.read_marker(i)
            if marker is None:
                raise DataError(f"{self.marker_path(i)}: shard {i} is not finished; rerun the encode to resume")
            markers.append(marker)
        with atomic.atomic_path(self.root / REJECTS) as tmp, open(tmp, "w", encoding="utf-8") as out:
            for m in markers:
                if m.rejects:
                    out.write(self.rejects_path(m.index).read_text(encoding="utf-8"))
        stats: dict[str, int | float] = {}
        for m in markers:
            for key, value in m.stats.items():
                stats[key] = stats.get(key, 0) + value
        shards = sorted((f for m in markers for f in m.files), key=lambda f: _shard_order(f.name))
        manifest = manifest.model_copy(update={
            "shards": shards,
            "n_documents": sum(m.rows for m in markers),
            "n_rejected": sum(m.rejects for m in markers),
            "stats": {**manifest.stats, **stats, "n_shards": n_shards},
        })
        atomic.write_text(self.root / MANIFEST, manifest.model_dump_json(indent=2) + "\n")
        shutil.rmtree(self.progress_dir / SCRATCH, ignore_errors=True)
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.close()
        return FeatureStore(self.root)


def _normalise(obj: Any) -> Any:
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _diff_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff_keys(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}")
    return out


def _shard_order(name: str) -> tuple:
    m = re.match(r"layer(\d+)/(tokens/)?part-(\d+)\.parquet$", name)
    return (int(m.group(1)), bool(m.group(2)), int(m.group(3))) if m else (1 << 30, True, 0)
