"""Input records from JSONL / Parquet files and globs or Hugging Face datasets, with their ids and rejects.

Every stage that reads a corpus (encode, curate, sasft) reads it through `iter_records`, so a record gets the
same `doc_id` everywhere: the `--id-field` value when present, else a stable hash of its content (text or
conversation), with `#2`, `#3`… appended to repeats so ids stay unique within a corpus (skipping any suffix an
input id already holds: ``x, x, x#2, x#2`` become ``x, x#2, x#2#2, x#2#3``). A JSONL record that cannot be written
as UTF-8 (a lone surrogate escape) is a `Reject` with its file and line, never an error that stops the stage.
"""

from __future__ import annotations

import glob as globlib
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from qscope_data.errors import UsageError

ROLES = {"system", "user", "assistant", "tool"}


@dataclass
class Record:
    doc_id: str
    file: str
    line: int  # 1-based line (JSONL) or row (Parquet / datasets)
    text: str | None  # plain text, or None for a conversation
    messages: list[dict] | None
    fields: dict[str, Any] = field(default_factory=dict)  # every field of the input record, as read


@dataclass
class Reject:
    file: str
    line: int
    reason: str
    doc_id: str | None = None

    def to_json(self) -> dict:
        return {"file": self.file, "line": self.line, "doc_id": self.doc_id, "reason": self.reason}


def content_id(content: str | list[dict]) -> str:
    payload = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:20]


def resolve_paths(spec: str | Path | list) -> list[str]:
    """Expand files, globs and folders (of .jsonl/.json/.parquet) to a sorted file list; datasets pass through."""
    specs = spec if isinstance(spec, (list, tuple)) else [spec]
    out: list[str] = []
    for item in specs:
        item = str(item)
        if any(ch in item for ch in "*?["):
            matches = sorted(globlib.glob(item, recursive=True))
            if not matches:
                raise UsageError(f"input {item}: the glob matches no file")
            out.extend(matches)
        elif os.path.isdir(item):
            if _is_saved_dataset(Path(item)):
                out.append(item)
            else:
                files = sorted(str(p) for p in Path(item).rglob("*") if p.suffix in (".jsonl", ".json", ".parquet"))
                if not files:
                    raise UsageError(f"input {item}: folder holds no .jsonl or .parquet file")
                out.extend(files)
        elif os.path.exists(item) or _looks_like_hub_dataset(item):
            out.append(item)
        else:
            raise UsageError(f"input {item}: no such file")
    return out


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_info.json").exists() or (path / "state.json").exists() or (path / "dataset_dict.json").exists()


def _looks_like_hub_dataset(item: str) -> bool:
    return item.startswith("hf://") or (item.count("/") == 1 and not item.startswith((".", "/")) and "." not in item.split("/")[0])


def input_fingerprint(paths: list[str]) -> str:
    """A hash of what the inputs hold, in order, for manifests, cache keys and the checks of later stages (curate
    compares it with the store's): a file's bytes; a saved Hugging Face dataset folder's files (relative names and
    bytes); a hub dataset its name and the commit it resolves to now (a git hash of its content; the name alone
    when neither the hub nor the local cache knows one). Paths are not hashed, so moving a corpus keeps its
    fingerprint."""
    h = hashlib.sha256()
    for p in paths:
        if os.path.isfile(p):
            h.update(b"file\0")
            _hash_file(h, p)
        elif os.path.isdir(p):
            h.update(b"folder\0")
            for f in sorted(q for q in Path(p).rglob("*") if q.is_file()):
                h.update(f.relative_to(p).as_posix().encode() + b"\0")
                _hash_file(h, str(f))
        else:
            h.update(b"hub\0" + p.encode() + b"\0" + (hub_dataset_commit(p) or "").encode() + b"\0")
    return h.hexdigest()


def hub_dataset_commit(name: str) -> str | None:
    """The commit `load_dataset(name)` reads: the hub's main when it can be asked (the cache's ref may be stale),
    else the local cache's — what changes when the dataset's content changes under the same name."""
    from huggingface_hub import HfApi, constants, snapshot_download

    repo = name.removeprefix("hf://")
    if not constants.HF_HUB_OFFLINE:
        try:
            return HfApi().dataset_info(repo).sha
        except Exception:  # unreachable hub, unknown or private repo: fall back to the cache
            pass
    try:
        return Path(snapshot_download(repo, repo_type="dataset", local_files_only=True)).name
    except Exception:  # not cached either: the name is all there is
        return None


def _hash_file(h, path: str) -> None:
    h.update(str(os.path.getsize(path)).encode() + b"\0")
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)


def iter_records(
    spec: str | Path | list,
    *,
    text_field: str = "text",
    id_field: str = "id",
    split: str | None = None,
    streaming: bool = False,
) -> Iterator[Record | Reject]:
    """Records in input order; malformed ones come out as `Reject`s (the caller writes them and goes on)."""
    seen: dict[str, int] = {}
    for path in resolve_paths(spec):
        for line, raw in _iter_raw(path, split=split, streaming=streaming):
            if isinstance(raw, Reject):
                yield raw
                continue
            yield _to_record(path, line, raw, text_field, id_field, seen)


def _iter_raw(path: str, *, split: str | None, streaming: bool) -> Iterator[tuple[int, dict | Reject]]:
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(path)
        except Exception as exc:
            raise UsageError(f"input {path}: not a readable Parquet file ({exc})") from exc
        row = 0
        for batch in pf.iter_batches(batch_size=4096):
            for rec in batch.to_pylist():
                row += 1
                yield row, rec
        return
    if path.endswith((".jsonl", ".json")) and os.path.isfile(path):
        with open(path, "rb") as fh:
            for line_no, raw in enumerate(fh, start=1):
                if not raw.strip():
                    continue
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    yield line_no, Reject(path, line_no, f"undecodable bytes (not UTF-8) at byte {exc.start}")
                    continue
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as exc:
                    yield line_no, Reject(path, line_no, f"malformed JSON: {exc.msg} at column {exc.colno}")
                    continue
                if not isinstance(obj, dict):
                    yield line_no, Reject(path, line_no, f"expected a JSON object, got {type(obj).__name__}")
                    continue
                if "\\u" in text and (problem := _not_utf8(obj)):  # JSON escapes can spell lone surrogates
                    yield line_no, Reject(path, line_no, problem, _raw_id(obj))
                    continue
                yield line_no, obj
        return
    yield from _iter_hf_dataset(path, split=split, streaming=streaming)


def _not_utf8(obj: dict) -> str | None:
    """Why a parsed record cannot be written as UTF-8 (a lone surrogate such as ``\\ud800``), or None."""
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = exc.object[exc.start:exc.end]
        return f"not encodable as UTF-8: lone surrogate {bad.encode('unicode_escape').decode()!s}"
    return None


def _raw_id(obj: dict) -> str | None:
    raw = obj.get("id")
    if raw is None:
        return None
    text = str(raw)
    return text if not _not_utf8({"id": text}) else text.encode("utf-8", "backslashreplace").decode()


def _iter_hf_dataset(path: str, *, split: str | None, streaming: bool) -> Iterator[tuple[int, dict]]:
    import datasets

    try:
        if os.path.isdir(path):
            ds = datasets.load_from_disk(path)
            if isinstance(ds, datasets.DatasetDict):
                if split is None and len(ds) != 1:
                    raise UsageError(f"input {path}: dataset has splits {', '.join(ds)}; pass --split")
                ds = ds[split or next(iter(ds))]
        else:
            ds = datasets.load_dataset(path.removeprefix("hf://"), split=split or "train", streaming=streaming)
    except UsageError:
        raise
    except Exception as exc:
        raise UsageError(f"input {path}: cannot load as a Hugging Face dataset ({str(exc).splitlines()[0]})") from exc
    for row, rec in enumerate(ds, start=1):
        yield row, dict(rec)


def _valid_messages(messages: object) -> str | None:
    """None when `messages` is a usable conversation, else the reason it is not."""
    if not isinstance(messages, list) or not messages:
        return "messages is not a non-empty list"
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in ROLES:
            return f"messages[{i}] needs a role in {sorted(ROLES)} and string content"
    return None


def _to_record(path: str, line: int, raw: dict, text_field: str, id_field: str, seen: dict[str, int]) -> Record | Reject:
    raw_id = raw.get(id_field)
    messages = raw.get("messages")
    text = raw.get(text_field)
    if messages is not None and text_field not in raw:
        reason = _valid_messages(messages)
        if reason:
            return Reject(path, line, reason, None if raw_id is None else str(raw_id))
        content: str | list = messages
        text = None
    else:
        if text_field not in raw or text is None:
            return Reject(path, line, f"missing text field '{text_field}'", None if raw_id is None else str(raw_id))
        if not isinstance(text, str):
            return Reject(path, line, f"text field '{text_field}' is {type(text).__name__}, not a string",
                          None if raw_id is None else str(raw_id))
        if not text.strip():
            return Reject(path, line, f"empty text in '{text_field}'", None if raw_id is None else str(raw_id))
        content, messages = text, None
    base = str(raw_id) if raw_id is not None and str(raw_id) != "" else content_id(content)
    doc_id, n = base, seen.get(base, 0)
    if n:  # a repeat: the next `base#n` that no earlier record holds (an input id may itself be `x#2`)
        while True:
            n += 1
            doc_id = f"{base}#{n}"
            if doc_id not in seen:
                break
    seen[base] = max(n, 1)
    seen.setdefault(doc_id, 1)
    return Record(doc_id=doc_id, file=path, line=line, text=text, messages=messages, fields=raw)
