"""The curate stage: corpus + feature store + rule scores (+ synthetic samples) → SFT shards with provenance.

Order of decisions (each removed record gets the first reason that applies, so every record is accounted for once):

1. ``malformed``: the input line cannot be read as a record (same check as `encode`, via `iter_records`);
   synthetic samples without an id, with malformed messages, or not ending in an assistant turn likewise.
2. ``not_encoded``: a valid record the store rejected (no features, so no rule could clear it).
3. ``rule:<name>``: the first `drop` rule (in the scores summary's order) that the document hit.
4. ``format:<why>``: a conversation that cannot be a row of the chosen format (docs in formats.py).
5. ``duplicate_of:<doc_id>`` / ``near_duplicate_of:<doc_id>``: dedup (dedup.py), keeping the first in order —
   input records (input order) come before synthetic samples, so an input record always wins.
6. ``quota:<field>=<value>``: past the first N of that value, in order (quarantined rows do not count).
   ``unverified``: a synthetic sample whose ``verified`` is false.

Checks before anything is written (each a `DataError`, exit 2, OUT untouched): the store's doc_ids equal the
input's (apart from records the store rejected) and the input's fingerprint is the one the store recorded (an
edited record keeps its id); each --synth folder's accepted file is the one its verification store (`store/`)
recorded; synthetic samples are screened with the scores' own rule files (sha256-checked) evaluated on that
verification store, so they meet the same drop / flag rules as input records; the scores' doc_ids equal the store's and their
``store_manifest_sha256`` is this store's, synthetic ids collide with no other doc_id, the format suits every record.
Output is built in a hidden sibling folder and renamed into place, so OUT is either the old state or the new one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator

from qscope_data import atomic
from qscope_data.curate import dedup as dedup_mod
from qscope_data.curate.card import render_card
from qscope_data.curate.formats import Format, FormatRefused, Unformattable, format_fields, to_format
from qscope_data.curate.manifest import KIND, MANIFEST, REMOVED, CuratedManifest, FileEntry, file_entry
from qscope_data.curate.scores import Scores, load_scores
from qscope_data.curate.shards import DEFAULT_MAX_BYTES, DEFAULT_MAX_ROWS, write_split
from qscope_data.curate.synthetic import SyntheticSet, load_synthetic, synth_provenance
from qscope_data.errors import DataError, UsageError
from qscope_data.inputs import Reject, input_fingerprint, iter_records, resolve_paths
from qscope_data.outputs import reap_temporaries, write_lock
from qscope_data.store import FeatureStore

QUOTA_FIELDS = ("lang", "category", "source")
UNKNOWN = "unknown"  # lang / category key in counts when a record has none

# synthetic rows' own provenance (null for input rows); `verified` says what the verification encode read
SYNTH_TYPE = pa.struct([("target_feature", pa.int64()), ("label", pa.string()), ("attempts", pa.int64()),
                        ("activation", pa.float64()), ("threshold", pa.float64()), ("verified", pa.string()),
                        ("variant", pa.string())])
PROVENANCE_FIELDS = [
    pa.field("doc_id", pa.string()), pa.field("source", pa.string()), pa.field("lang", pa.string()),
    pa.field("category", pa.string()), pa.field("rules", pa.list_(pa.string())), pa.field("flags", pa.list_(pa.string())),
    pa.field("n_tokens", pa.int32()), pa.field("synthetic", SYNTH_TYPE),
]
REMOVED_SCHEMA = pa.schema([
    ("doc_id", pa.string()), ("source", pa.string()), ("lang", pa.string()), ("category", pa.string()),
    ("reason", pa.string()), ("detail", pa.string()), ("rules", pa.list_(pa.string())), ("file", pa.string()),
    ("line", pa.int64()),
])


class CurateOptions(BaseModel):
    """What `qscope curate` does; `manifest.json` records it."""

    model_config = ConfigDict(extra="forbid")

    inputs: list[str]
    features: str
    scores: str | None = None
    synth: list[str] = Field(default_factory=list)
    out: str
    format: Format = "messages"
    text_role: str | None = Field(None, description="plain-text records in messages / prompt-completion: 'assistant'")
    text_prompt: str | None = Field(None, description="user turn put before such a text (needed for prompt-completion)")
    text_field: str | None = Field(None, description="default: the store's encode option, else 'text'")
    id_field: str | None = Field(None, description="default: the store's encode option, else 'id'")
    split: str | None = None
    quotas: list[str] = Field(default_factory=list, description="FIELD=VALUE:N[,VALUE:N…]")
    dedup: bool = True
    near_dup_threshold: float = Field(dedup_mod.DEFAULT_THRESHOLD, gt=0.0, le=1.0)
    executor: Literal["local", "ray"] = Field("local", description="where dedup runs: in process, or on Ray Data (same decisions)")
    quarantine: bool = False
    max_shard_rows: int = Field(DEFAULT_MAX_ROWS, ge=1)
    max_shard_bytes: int | None = Field(DEFAULT_MAX_BYTES, ge=1)
    jsonl: bool = False
    license: str = "other"
    name: str | None = None
    overwrite: bool = False

    @field_validator("inputs")
    @classmethod
    def _some_input(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("give at least one --input")
        return v


_QUOTA = re.compile(r"^\s*([A-Za-z_]+)\s*=\s*(.+)$")


def parse_quotas(specs: list[str]) -> dict[str, dict[str, int]]:
    """``lang=en:100,de:50`` → {"lang": {"en": 100, "de": 50}}; fields: lang, category, source."""
    out: dict[str, dict[str, int]] = {}
    for spec in specs:
        m = _QUOTA.match(spec)
        if not m:
            raise UsageError(f"--quota {spec!r}: expected FIELD=VALUE:N[,VALUE:N…], e.g. lang=en:100,de:50")
        fld, rest = m.group(1), m.group(2)
        if fld not in QUOTA_FIELDS:
            raise UsageError(f"--quota {spec!r}: field {fld!r} is not one of {', '.join(QUOTA_FIELDS)}")
        for part in rest.split(","):
            value, sep, n = part.strip().rpartition(":")
            if not sep or not value or not n.strip().isdigit():
                raise UsageError(f"--quota {spec!r}: {part.strip()!r} is not VALUE:N with N a whole number")
            if value in out.setdefault(fld, {}):
                raise UsageError(f"--quota: {fld}={value} is given twice")
            out[fld][value] = int(n)
    return out


@dataclass
class Item:
    """One record on its way through curation (input or synthetic)."""

    doc_id: str | None
    source: str
    file: str
    line: int
    lang: str | None = None
    category: str | None = None
    text: str | None = None
    messages: list[dict] | None = None
    synthetic: dict[str, Any] | None = None
    n_tokens: int | None = None
    rules: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    reason: str | None = None  # removal reason; None while kept
    detail: str | None = None
    row: dict[str, Any] | None = None  # the format's columns
    quarantined: bool = False

    def get(self, name: str) -> str | None:
        return getattr(self, name)


@dataclass
class CurateResult:
    out: Path
    manifest: CuratedManifest
    seconds: float


class _Phases:
    """Rich progress on stderr (items, rate, ETA) for the stage's phases; a no-op when disabled."""

    _EVERY = 512  # items between redraw requests

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.task = None
        self.pending = 0
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[rate]}/s"), TimeRemainingColumn(),
                                     console=Console(stderr=True), transient=True)

    def __enter__(self) -> "_Phases":
        if self.enabled:
            self.progress.__enter__()
        return self

    def phase(self, name: str, total: int | None) -> None:
        if self.enabled:
            self._flush()
            if self.task is not None:
                self.progress.update(self.task, visible=False)
            self.task = self.progress.add_task(name, total=total, rate="-")
            self.started = time.perf_counter()

    def advance(self, n: int = 1) -> None:
        if self.enabled and self.task is not None:
            self.pending += n
            if self.pending >= self._EVERY:
                self._flush()

    def _flush(self) -> None:
        if self.task is not None and self.pending:
            done = self.progress.tasks[-1].completed + self.pending
            rate = done / max(time.perf_counter() - self.started, 1e-9)
            self.progress.update(self.task, advance=self.pending, rate=f"{rate:,.0f}")
            self.pending = 0

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self._flush()
            self.progress.__exit__(*exc)


# -- checks -----------------------------------------------------------------------------------------------------


def _first(ids: set[str]) -> str:
    return repr(sorted(ids)[0])


def check_out(out: Path, overwrite: bool) -> None:
    """OUT must be new, empty, or (with --overwrite) a previous curated dataset — never someone else's folder."""
    if not out.exists():
        return
    if not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    if not any(out.iterdir()):
        return
    try:
        is_ours = json.loads((out / MANIFEST).read_text(encoding="utf-8")).get("kind") == KIND
    except (OSError, ValueError, AttributeError):
        is_ours = False
    if not is_ours:
        raise UsageError(f"--out {out}: folder exists and is not a curated dataset; choose a new or empty folder")
    if not overwrite:
        raise UsageError(f"--out {out}: holds a curated dataset already; pass --overwrite to replace it")


def check_store_matches_input(store: FeatureStore, store_ids: set[str], input_ids: set[str], inputs: list[str]) -> set[str]:
    """The store was encoded from this input: same doc_ids apart from records it rejected. Returns those."""
    rejected = {str(r["doc_id"]) for r in store.rejects() if r.get("doc_id") is not None}
    extra = store_ids - input_ids
    missing = input_ids - store_ids - rejected
    if extra or missing:
        what = []
        if missing:
            what.append(f"{len(missing)} input doc_id(s) not in the store (first: {_first(missing)})")
        if extra:
            what.append(f"{len(extra)} store doc_id(s) not in the input (first: {_first(extra)})")
        raise DataError(f"store {store.root} was not made from input {', '.join(inputs)}: {'; '.join(what)}")
    return (input_ids - store_ids) & rejected


def check_input_fingerprint(store: FeatureStore, paths: list[str]) -> None:
    """The input holds the bytes the store was encoded from: a record edited after encode keeps its id, so the id
    check alone would let text no rule ever scored into the shards."""
    recorded = store.manifest.inputs.get("fingerprint")
    if not recorded:
        return  # a derived store (write_store) records no input; the id check still applies
    got = input_fingerprint(paths)
    if got != recorded:
        raise DataError(f"input {', '.join(paths)} is not what store {store.root / 'manifest.json'} was encoded from "
                        f"(fingerprint {got[:12]}…, the store records {recorded[:12]}…): changed after encode? "
                        "re-encode and re-score it")


def verification_store(s: SyntheticSet) -> FeatureStore:
    """The synth folder's verification store, after checking it verified exactly these accepted samples."""
    root = s.path / "store"
    store = FeatureStore(root)
    recorded = (store.manifest.inputs.get("accepted_sha256") or {}).get(s.accepted.name)
    if recorded != s.accepted_sha256:
        what = "records no hash of it" if recorded is None else f"records sha256 {recorded[:12]}…"
        raise DataError(f"--synth {s.path}: {s.accepted} (sha256 {s.accepted_sha256[:12]}…) is not what "
                        f"{root / 'manifest.json'} verified ({what}); rerun `qscope synth`")
    ids = set(store.read(columns=["doc_id"])["doc_id"].to_list())
    missing = {x.doc_id for x in s.samples} - ids
    if missing:
        raise DataError(f"--synth {s.path}: sample(s) {_first(missing)} of {s.accepted} are not in {root}")
    return store


def screen_synthetic(synth_sets: list[SyntheticSet], scores: Scores | None) -> dict[str, list[str]]:
    """doc_id → rules hit, for synthetic samples: the scores' own rule files (checked by sha256) evaluated on each
    verification store, so synthetic samples meet the same drop / flag rules as input records."""
    from qscope_data.rules.score import evaluate_store, prepare

    if scores is None:
        for s in synth_sets:
            verification_store(s)
        return {}
    for path, digest in scores.rule_files.items() if synth_sets else ():
        if not Path(path).is_file() or (digest and atomic.sha256_file(path) != digest):
            raise DataError(f"--scores {scores.path}: rule file {path} is missing or changed since scoring; "
                            "synthetic samples cannot be screened with the same rules (re-score)")
    matched: dict[str, list[str]] = {}
    for s in synth_sets:
        store = verification_store(s)
        if not scores.rule_files:
            continue
        _, layer, program = prepare(store, list(scores.rule_files), scores.summary.get("layer"))
        names = [r.name for r in program.rules if r.name in scores.actions]
        hits = evaluate_store(store, program, layer, progress=False, extra_columns=["doc_id"])
        for row in hits.select(["doc_id", *names]).iter_rows():
            matched[row[0]] = [n for n, hit in zip(names, row[1:]) if hit]
    return matched


def check_scores_match_store(scores: Scores, store: FeatureStore, store_ids: set[str]) -> None:
    scored = scores.doc_ids
    if scored != store_ids:
        what = []
        if store_ids - scored:
            what.append(f"{len(store_ids - scored)} store doc_id(s) have no score (first: {_first(store_ids - scored)})")
        if scored - store_ids:
            what.append(f"{len(scored - store_ids)} scored doc_id(s) are not in the store (first: {_first(scored - store_ids)})")
        raise DataError(f"scores {scores.path} were not computed on store {store.root}: {'; '.join(what)}")
    if scores.store_manifest_sha256 and scores.store_manifest_sha256 != store.manifest_hash():
        raise DataError(
            f"scores {scores.path} were computed on another store: their store_manifest_sha256 "
            f"{scores.store_manifest_sha256[:16]}… is not that of {store.root / 'manifest.json'} ({store.manifest_hash()[:16]}…)"
        )


# -- the stage --------------------------------------------------------------------------------------------------


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value != "" else None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return str(value).lower() if isinstance(value, bool) else str(value)


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def read_store_table(store: FeatureStore) -> dict[str, dict[str, Any]]:
    """doc_id → {n_tokens, lang, category} from the store's first layer (pass-through columns when present)."""
    names = store.columns()
    wanted = ["doc_id", "n_tokens"] + [c for c in ("lang", "category") if c in names]
    frame = store.read(columns=wanted)
    ids = frame["doc_id"]
    if ids.null_count() or ids.n_unique() != frame.height:
        raise DataError(f"store {store.root}: doc_id column has nulls or repeats")
    return {row["doc_id"]: row for row in frame.iter_rows(named=True)}


def curate(options: CurateOptions, *, progress: bool = False) -> CurateResult:
    """Run the stage (module docstring); everything is checked and decided before OUT is touched. One writer of
    OUT at a time (an advisory lock); temp folders a killed run left beside OUT are removed first."""
    with write_lock(options.out):
        reap_temporaries(options.out)
        return _curate(options, progress=progress)


def _curate(options: CurateOptions, *, progress: bool) -> CurateResult:
    start = time.perf_counter()
    out = Path(options.out)
    quotas = parse_quotas(options.quotas)
    check_out(out, options.overwrite)
    store = FeatureStore(options.features)
    store_opts = store.manifest.options
    text_field = options.text_field or store_opts.get("text_field") or "text"
    id_field = options.id_field or store_opts.get("id_field") or "id"
    split = options.split if options.split is not None else store_opts.get("split")
    paths = resolve_paths(options.inputs)
    store_rows = read_store_table(store)
    scores = load_scores(options.scores) if options.scores else None
    synth_sets = [load_synthetic(s) for s in options.synth]
    synth_rules = screen_synthetic(synth_sets, scores)

    items: list[Item] = []
    with _Phases(progress) as bar:
        bar.phase("read input", store.manifest.n_documents + store.manifest.n_rejected or None)
        for rec in iter_records(paths, text_field=text_field, id_field=id_field, split=split):
            bar.advance()
            if isinstance(rec, Reject):
                items.append(Item(doc_id=rec.doc_id, source=f"input:{Path(rec.file).name}", file=rec.file, line=rec.line,
                                  reason="malformed", detail=rec.reason))
                continue
            f = rec.fields
            items.append(Item(
                doc_id=rec.doc_id, source=_str(f.get("source")) or f"input:{Path(rec.file).name}", file=rec.file,
                line=rec.line, lang=_str(f.get("lang")), category=_str(f.get("category")), text=rec.text,
                messages=rec.messages,
            ))
        n_input = len(items)
        input_ids = {it.doc_id for it in items if it.reason is None}
        not_encoded = check_store_matches_input(store, set(store_rows), input_ids, options.inputs)
        check_input_fingerprint(store, paths)
        if scores is not None:
            check_scores_match_store(scores, store, set(store_rows))
        _add_synthetic(items, synth_sets, input_ids)
        _decide(items, options, store_rows, scores, not_encoded, synth_rules)
        survivors = [it for it in items if it.reason is None]
        if options.dedup:
            bar.phase("dedup", len(survivors))
            docs = (dedup_mod.DedupDoc(it.doc_id, it.text, it.messages) for it in survivors)
            if options.executor == "ray":
                from qscope_data.curate.dedup_ray import find_duplicates_ray

                dups = find_duplicates_ray(docs, threshold=options.near_dup_threshold)
                bar.advance(len(survivors))
            else:
                dups = dedup_mod.find_duplicates(docs, threshold=options.near_dup_threshold, on_doc=bar.advance)
            for it in survivors:
                dup = dups.get(it.doc_id)
                if dup is not None:
                    it.reason = f"{dup.kind}_of:{dup.of}"
                    it.detail = None if dup.kind == "duplicate" else f"jaccard={dup.similarity:.3f}"
        _apply_quarantine_and_quotas(items, options.quarantine, quotas)
        bar.phase("write", None)
        manifest = _write(items, options, out, n_input=n_input, store=store, scores=scores, synth_sets=synth_sets,
                          paths=paths, text_field=text_field, id_field=id_field, quotas=quotas)
    return CurateResult(out=out, manifest=manifest, seconds=time.perf_counter() - start)


def _add_synthetic(items: list[Item], synth_sets: list[SyntheticSet], input_ids: set[str]) -> None:
    taken = set(input_ids)
    for s in synth_sets:
        for rej in s.rejects:
            items.append(Item(doc_id=rej.doc_id, source=f"synthetic:{rej.generator or 'unknown'}", file=rej.file,
                              line=rej.line, lang=rej.lang, reason=rej.reason, detail=rej.detail))
        for sample in s.samples:
            if sample.doc_id in taken:
                raise DataError(f"--synth {s.path}: sample id {sample.doc_id!r} ({sample.file}:{sample.line}) is already "
                                "a doc_id of the input or of another --synth folder")
            taken.add(sample.doc_id)
            m = sample.meta
            items.append(Item(
                doc_id=sample.doc_id, source=sample.source, file=sample.file, line=sample.line, lang=sample.lang,
                category=sample.category, messages=sample.messages,
                synthetic={"target_feature": _int(m.get("target_feature")), "label": _text(m.get("label")),
                           "attempts": _int(m.get("attempts")), "activation": _float(m.get("activation")),
                           "threshold": _float(m.get("threshold")), "verified": _text(m.get("verified")),
                           "variant": _text(m.get("variant"))},
            ))


def _decide(items: list[Item], options: CurateOptions, store_rows: dict[str, dict], scores: Scores | None,
            not_encoded: set[str], synth_rules: dict[str, list[str]]) -> None:
    """Steps 2–4 of the module docstring, and the format's columns for every record still in."""
    for it in items:
        if it.reason is not None:
            continue
        row = store_rows.get(it.doc_id) if it.synthetic is None else None
        if row is not None:
            it.n_tokens = row.get("n_tokens")
            it.lang = it.lang or _str(row.get("lang"))
            it.category = it.category or _str(row.get("category"))
        if scores is not None and it.synthetic is None:
            it.lang = it.lang or scores.lang.get(it.doc_id)
            it.rules = list(scores.matched.get(it.doc_id, []))
            it.flags = [r for r in it.rules if scores.actions[r] == "flag"]
        elif scores is not None:  # a synthetic sample: the same rules, on its verification encode
            it.rules = list(synth_rules.get(it.doc_id, []))
            it.flags = [r for r in it.rules if scores.actions[r] == "flag"]
        if it.synthetic is None and it.doc_id in not_encoded:
            it.reason, it.detail = "not_encoded", "the feature store rejected this record"
            continue
        drops = [r for r in it.rules if scores is not None and scores.actions[r] == "drop"]
        if drops:
            it.reason = f"rule:{drops[0]}"
            continue
        try:
            it.row = to_format(options.format, text=it.text, messages=it.messages,
                               text_role=options.text_role, text_prompt=options.text_prompt)
        except FormatRefused as exc:
            raise UsageError(f"--format {options.format}: {exc} (first such record: {it.file}:{it.line}, "
                             f"doc_id {it.doc_id!r})") from None
        except Unformattable as exc:
            it.reason = f"format:{exc}"


def _apply_quarantine_and_quotas(items: list[Item], quarantine: bool, quotas: dict[str, dict[str, int]]) -> None:
    for it in items:
        if it.reason is None and quarantine and it.flags:
            it.quarantined = True
    for fld, limits in quotas.items():
        seen: Counter[str] = Counter()
        for it in items:
            if it.reason is not None or it.quarantined:
                continue
            value = it.get(fld)
            if value is None or value not in limits:
                continue
            seen[value] += 1
            if seen[value] > limits[value]:
                it.reason, it.detail = f"quota:{fld}={value}", f"limit {limits[value]}"


# -- writing ----------------------------------------------------------------------------------------------------


def _rows_table(items: list[Item], fmt: Format) -> pa.Table:
    schema = pa.schema(format_fields(fmt) + PROVENANCE_FIELDS)
    rows = [{**it.row, "doc_id": it.doc_id, "source": it.source, "lang": it.lang, "category": it.category,
             "rules": it.rules, "flags": it.flags, "n_tokens": it.n_tokens, "synthetic": it.synthetic} for it in items]
    return pa.Table.from_pylist(rows, schema=schema)


def _removed_table(items: list[Item]) -> pa.Table:
    rows = [{"doc_id": it.doc_id, "source": it.source, "lang": it.lang, "category": it.category, "reason": it.reason,
             "detail": it.detail, "rules": it.rules, "file": it.file, "line": it.line} for it in items]
    return pa.Table.from_pylist(rows, schema=REMOVED_SCHEMA)


def reason_kind(reason: str) -> str:
    """The counting key of a removal reason: duplicate_of:X → duplicate, near_duplicate_of:X → near_duplicate;
    rule / quota / format reasons keep their detail (rule:toxic, quota:lang=en)."""
    head = reason.split(":", 1)[0]
    return head.removesuffix("_of") if head in ("duplicate_of", "near_duplicate_of") else reason


def _counts(items: list[Item], n_input: int, scores: Scores | None) -> dict[str, Any]:
    kept = [it for it in items if it.reason is None and not it.quarantined]
    quarantined = [it for it in items if it.reason is None and it.quarantined]
    removed = [it for it in items if it.reason is not None]
    by_reason_lang: dict[str, Counter[str]] = defaultdict(Counter)
    for it in removed:
        by_reason_lang[reason_kind(it.reason)][it.lang or UNKNOWN] += 1
    counts: dict[str, Any] = {
        "input_records": n_input,
        "synthetic_records": len(items) - n_input,
        "kept": len(kept),
        "kept_synthetic": sum(1 for it in kept if it.synthetic is not None),
        "quarantined": len(quarantined),
        "removed": len(removed),
        "removed_by_reason": dict(sorted(Counter(reason_kind(it.reason) for it in removed).items())),
        "removed_by_lang": dict(sorted(Counter(it.lang or UNKNOWN for it in removed).items())),
        "removed_by_reason_and_lang": {k: dict(sorted(v.items())) for k, v in sorted(by_reason_lang.items())},
        "kept_by_lang": dict(sorted(Counter(it.lang or UNKNOWN for it in kept).items())),
        "kept_by_source": dict(sorted(Counter(it.source for it in kept).items())),
    }
    if scores is not None:
        hits = Counter(r for it in items for r in it.rules)
        counts["rules"] = {name: {"action": action, "hits": hits.get(name, 0)} for name, action in scores.actions.items()}
    return counts


def _write(items: list[Item], options: CurateOptions, out: Path, *, n_input: int, store: FeatureStore,
           scores: Scores | None, synth_sets: list[SyntheticSet], paths: list[str], text_field: str, id_field: str,
           quotas: dict[str, dict[str, int]]) -> CuratedManifest:
    stage = out.parent / f".{out.name}.curate-{os.getpid()}.tmp"
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    try:
        shard_opts = dict(max_rows=options.max_shard_rows, max_bytes=options.max_shard_bytes, jsonl=options.jsonl)
        train = [it for it in items if it.reason is None and not it.quarantined]
        quarantined = [it for it in items if it.reason is None and it.quarantined]
        shards: list[FileEntry] = write_split(_rows_table(train, options.format), stage, "data", "train", **shard_opts)
        if quarantined:
            shards += write_split(_rows_table(quarantined, options.format), stage, "quarantine", "quarantine", **shard_opts)
        atomic.write_parquet(stage / REMOVED, _removed_table([it for it in items if it.reason is not None]))
        manifest = CuratedManifest(
            created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            code_version=_code_version(),
            format=options.format,
            options={
                "text_role": options.text_role, "text_prompt": options.text_prompt, "quarantine": options.quarantine,
                "quotas": quotas, "max_shard_rows": options.max_shard_rows, "max_shard_bytes": options.max_shard_bytes,
                "jsonl": options.jsonl, "license": options.license,
                "dedup": {"exact": options.dedup, "near": options.dedup, "threshold": options.near_dup_threshold,
                          "ngram": dedup_mod.NGRAM, "num_perm": dedup_mod.NUM_PERM, "seed": dedup_mod.SEED},
            },
            inputs={
                "input": {"paths": paths, "fingerprint": input_fingerprint(paths), "text_field": text_field,
                          "id_field": id_field},
                "store": {"path": str(store.root), "manifest_sha256": store.manifest_hash(),
                          "input_fingerprint": store.manifest.inputs.get("fingerprint")},
                "scores": None if scores is None else {
                    "path": str(scores.path), "summary_sha256": scores.summary_sha256, "scores_sha256": scores.scores_sha256,
                    "store_manifest_sha256": scores.store_manifest_sha256},
                "synth": [{"path": str(s.path), "accepted_sha256": s.accepted_sha256, "summary_sha256": s.summary_sha256,
                           "provenance": synth_provenance(s.path)} for s in synth_sets],
            },
            model=store.manifest.model,
            saes=[s.model_dump() for s in store.manifest.saes],
            rule_files=scores.rule_files if scores is not None else {},
            shards=shards,
            removed=file_entry(stage, REMOVED, split="removed"),
            counts=_counts(items, n_input, scores),
        )
        atomic.write_text(stage / "README.md", render_card(manifest, pretty_name=options.name or out.name))
        atomic.write_text(stage / MANIFEST, manifest.model_dump_json(indent=2) + "\n")
        _swap_into_place(stage, out)
    finally:
        if stage.exists():
            shutil.rmtree(stage)
    return manifest


def _code_version() -> str:
    # importlib.metadata rather than qscope_data.encode.code_version: that module imports torch, curate needs none
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("qscope-data")
    except PackageNotFoundError:
        return "unknown"


def _swap_into_place(stage: Path, out: Path) -> None:
    """Rename the finished folder onto OUT (an empty OUT is removed first; an old dataset is moved aside, then deleted)."""
    old = None
    if out.exists():
        if any(out.iterdir()):
            old = out.parent / f".{out.name}.old-{os.getpid()}.tmp"
            os.replace(out, old)
        else:
            out.rmdir()
    os.replace(stage, out)
    if old is not None:
        shutil.rmtree(old)
