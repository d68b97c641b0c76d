"""`manifest.json` of a curated dataset, and `verify`: do the files on disk still match it?

The manifest is the provenance record: which inputs (by hash) made the dataset, with which model / SAE / rule
files, what was removed and why (counts per reason and language), and every written file's rows, bytes and
sha256. It is the one file that may hold a timestamp (`created_at`); shards never do, so reruns are
byte-identical. `verify` recomputes sizes, hashes and row counts, and lists files in the data folders that the
manifest does not name (an added or renamed shard is a change too).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from qscope_data import atomic
from qscope_data.errors import UsageError
from qscope_data.store import member_path

KIND = "qscope-curated-sft"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
REMOVED = "removed.parquet"
CARD = "README.md"  # the dataset card (card.py)
DATA_FOLDERS = ("data", "quarantine")


class FileEntry(BaseModel):
    name: str  # path relative to the dataset root, "/"-separated
    split: str  # train | quarantine | removed
    rows: int
    bytes: int
    sha256: str


class CuratedManifest(BaseModel):
    kind: str = KIND
    schema_version: int = SCHEMA_VERSION
    created_at: str = ""
    code_version: str = ""
    format: str
    options: dict[str, Any] = Field(default_factory=dict)
    inputs: dict[str, Any] = Field(default_factory=dict)  # input / store / scores / synth: paths and hashes
    model: dict[str, Any] = Field(default_factory=dict)  # from the store manifest
    saes: list[dict[str, Any]] = Field(default_factory=list)  # from the store manifest
    rule_files: dict[str, str] = Field(default_factory=dict)  # path → sha256, from the scores summary
    shards: list[FileEntry] = Field(default_factory=list)
    removed: FileEntry | None = None
    counts: dict[str, Any] = Field(default_factory=dict)

    def files(self) -> list[FileEntry]:
        return self.shards + ([self.removed] if self.removed is not None else [])


def count_rows(path: Path) -> int:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    if path.suffix == ".jsonl":
        with open(path, "rb") as fh:
            return sum(1 for line in fh if line.strip())
    raise ValueError(f"{path}: no row count for a {path.suffix} file")


def file_entry(root: Path, rel: str, *, split: str) -> FileEntry:
    path = root / rel
    return FileEntry(name=rel, split=split, rows=count_rows(path), bytes=path.stat().st_size, sha256=atomic.sha256_file(path))


def load_manifest(root: str | Path) -> CuratedManifest:
    path = Path(root) / MANIFEST
    if not path.exists():
        raise UsageError(f"{Path(root)}: no {MANIFEST} (not a curated dataset, or an unfinished one)")
    raw = atomic.read_json(path)
    if not isinstance(raw, dict) or raw.get("kind") != KIND:
        raise UsageError(f"{path}: kind is {raw.get('kind') if isinstance(raw, dict) else None!r}, not {KIND!r}")
    try:
        return CuratedManifest.model_validate(raw)
    except Exception as exc:
        raise UsageError(f"{path}: invalid curated manifest: {str(exc).splitlines()[0]}") from exc


def verify(root: str | Path) -> list[str]:
    """One line per problem (empty when every listed file matches and no unlisted file sits in the data folders)."""
    root = Path(root)
    manifest = load_manifest(root)
    problems: list[str] = []
    for entry in manifest.files():
        try:
            path = member_path(root, entry.name, what=f"{root / MANIFEST}: file")
        except UsageError as exc:  # `../x` or `/etc/x` is never followed
            problems.append(str(exc))
            continue
        if not path.is_file():
            problems.append(f"{entry.name}: missing")
            continue
        size = path.stat().st_size
        if size != entry.bytes:
            problems.append(f"{entry.name}: {size} bytes, manifest says {entry.bytes}")
        digest = atomic.sha256_file(path)
        if digest != entry.sha256:
            problems.append(f"{entry.name}: sha256 {digest[:16]}…, manifest says {entry.sha256[:16]}…")
        try:
            rows = count_rows(path)
        except Exception as exc:  # a damaged Parquet footer is a finding, not a crash
            problems.append(f"{entry.name}: unreadable ({str(exc).splitlines()[0]})")
            continue
        if rows != entry.rows:
            problems.append(f"{entry.name}: {rows} rows, manifest says {entry.rows}")
    listed = {e.name for e in manifest.files()}
    for folder in DATA_FOLDERS:
        for path in sorted((root / folder).rglob("*")) if (root / folder).is_dir() else []:
            rel = path.relative_to(root).as_posix()
            if path.is_file() and rel not in listed:
                problems.append(f"{rel}: not listed in {MANIFEST}")
    kept = manifest.counts.get("kept")
    train_rows = sum(e.rows for e in manifest.shards if e.split == "train" and e.name.endswith(".parquet"))
    if kept is not None and kept != train_rows:
        problems.append(f"{MANIFEST}: counts.kept is {kept} but the train shards list {train_rows} rows")
    return problems
