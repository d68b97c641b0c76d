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

Memory is bounded by a batch, one output shard (``--max-shard-rows`` / ``--max-shard-bytes``) and per-record state,
never by the corpus' text: the input is read twice (pass 1: ids and metadata for the checks and the rule decisions;
pass 2: formatting and dedup), formatted rows are spilled to a Parquet file in the hidden folder and read back one
shard at a time. Per record that costs a row of a polars frame (about 100 bytes plus its doc_id, source, file, lang,
category and reason strings) and dedup's 56 bytes (+ ~100 per distinct content, dedup.py); the scores add a byte
per rule. The synthetic samples of ``--synth`` are held whole (they are small next to a corpus).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from array import array
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.dataclasses import dataclass

from qscope_data import atomic, code_version
from qscope_data.curate import dedup as dedup_mod
from qscope_data.curate.card import render_card
from qscope_data.curate.formats import Format, FormatRefused, Unformattable, format_fields, to_format
from qscope_data.curate.manifest import CARD, KIND, MANIFEST, REMOVED, CuratedManifest, FileEntry, file_entry
from qscope_data.rules.score import LANG, Scores, load_scores
from qscope_data.curate.shards import DEFAULT_MAX_BYTES, DEFAULT_MAX_ROWS, row_json, write_split_batches
from qscope_data.synth.output import SyntheticSample, SyntheticSet, load_synthetic, synth_provenance
from qscope_data.errors import DataError, UsageError
from qscope_data.inputs import Reject, input_fingerprint, iter_records, resolve_paths
from qscope_data.outputs import reap_temporaries, write_lock
from qscope_data.progress import Bar
from qscope_data.result import Result, interactive
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
    """The curate stage's options (`qscope curate` and the pipeline's `curate:` section): how shards are made,
    independent of which files they are made from. The only place these defaults live."""

    model_config = ConfigDict(extra="forbid")

    format: Format = "messages"
    text_role: str | None = Field(None, description="plain-text records in messages / prompt-completion: 'assistant'")
    text_prompt: str | None = Field(None, description="user turn put before such a text (needed for prompt-completion)")
    quotas: dict[Literal["lang", "category", "source"], dict[str, int]] = Field(
        default_factory=dict, description="field → value → keep the first N (applied in this order)")
    dedup: bool = True
    near_dup_threshold: float = Field(dedup_mod.DEFAULT_THRESHOLD, gt=0.0, le=1.0)
    quarantine: bool = False
    max_shard_rows: int = Field(DEFAULT_MAX_ROWS, ge=1)
    max_shard_bytes: int | None = Field(DEFAULT_MAX_BYTES, ge=1)
    jsonl: bool = False
    license: str = "other"


@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class CurateInputs:
    """What one curate run reads (`manifest.json` records it): the corpus the store was encoded from, the store, the
    scores and synthesis folders; and how this run goes without changing what it decides (where dedup runs, the
    card's name, whether an earlier dataset in OUT may be replaced). Its defaults are the `qscope curate` flags'."""

    inputs: list[str]
    features: Path
    scores: Path | None = None
    synth: list[Path] = Field(default_factory=list)
    text_field: str | None = Field(None, description="default: the store's encode option, else 'text'")
    id_field: str | None = Field(None, description="default: the store's encode option, else 'id'")
    split: str | None = None
    executor: Literal["local", "ray"] = Field("local", description="where dedup runs: in process, or on Ray Data (same decisions)")
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


# -- checks -----------------------------------------------------------------------------------------------------


def _first(ids: pl.Series) -> str:
    return repr(ids.min())


def _mismatches(found: dict[str, pl.Series]) -> str:
    """'N <what> (first: id)' for each non-empty set of ids, joined; '' when all are empty."""
    return "; ".join(f"{len(ids)} {what} (first: {_first(ids)})" for what, ids in found.items() if len(ids))


def _missing(ids: pl.Series, other: pl.Series) -> pl.Series:
    """The ids not in `other` (each id once)."""
    return ids.filter(~ids.is_in(other)).unique()


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


def check_store_matches_input(store: FeatureStore, store_ids: pl.Series, input_ids: pl.Series, inputs: list[str]) -> set[str]:
    """The store was encoded from this input: same doc_ids apart from records it rejected. Returns those."""
    rejected = pl.Series([str(r["doc_id"]) for r in store.rejects() if r.get("doc_id") is not None], dtype=pl.String)
    extra = _missing(store_ids, input_ids)
    absent = _missing(input_ids, store_ids)
    missing = _missing(absent, rejected)
    if what := _mismatches({"input doc_id(s) not in the store": missing, "store doc_id(s) not in the input": extra}):
        raise DataError(f"store {store.root} was not made from input {', '.join(inputs)}: {what}")
    return set(absent.filter(absent.is_in(rejected)).to_list())


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


def check_scores_match_store(scores: Scores, store: FeatureStore, store_ids: pl.Series) -> None:
    unscored, unknown = _missing(store_ids, scores.doc_ids), _missing(scores.doc_ids, store_ids)
    if what := _mismatches({"store doc_id(s) have no score": unscored, "scored doc_id(s) are not in the store": unknown}):
        raise DataError(f"scores {scores.path} were not computed on store {store.root}: {what}")
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


def read_store_table(store: FeatureStore) -> pl.DataFrame:
    """doc_id, n_tokens (+ lang, category where the store passes them through as strings; "" read as none) of the
    store's first layer: ~30 bytes a document plus its strings, as columns."""
    names = store.columns()
    schema = store.scan().collect_schema()
    wanted = ["doc_id", "n_tokens"] + [c for c in ("lang", "category") if c in names and schema[c] == pl.String]
    frame = store.read(columns=wanted)
    ids = frame["doc_id"]
    if ids.null_count() or ids.n_unique() != frame.height:
        raise DataError(f"store {store.root}: doc_id column has nulls or repeats")
    return frame.with_columns(pl.when(pl.col(c) != "").then(pl.col(c)).alias(c) for c in wanted[2:])


def run(options: CurateOptions, inputs: CurateInputs, out: str | Path, *,
        progress: bool | None = None) -> Result[CuratedManifest]:
    """The curate stage (`qscope curate`, the pipeline's `curate`; module docstring), written into `out`: everything
    is checked and decided before OUT is touched. One writer of OUT at a time (an advisory lock); temp folders a
    killed run left beside OUT are removed first. `progress`: None draws the bars only on a terminal."""
    start = time.perf_counter()
    out = Path(out)
    with write_lock(out):
        reap_temporaries(out)
        manifest = _curate(options, inputs, out, progress=interactive(progress))
    outputs = {"curated": out, MANIFEST: out / MANIFEST, REMOVED: out / REMOVED, CARD: out / CARD}
    return Result(manifest, outputs, {"counts": manifest.counts, "seconds": round(time.perf_counter() - start, 3)})


# Per record the stage keeps one row of a polars frame (META_SCHEMA + pos, rules, flags, n_tokens, quarantined):
# ~100 bytes plus its doc_id / source / file / lang / category / reason strings; never its text. Formatted rows go
# to a spill file in the stage folder as they are made and are read back one shard at a time.
META_SCHEMA = {"doc_id": pl.String, "source": pl.String, "file": pl.String, "line": pl.Int64, "lang": pl.String,
               "category": pl.String, "reason": pl.String, "detail": pl.String, "synth": pl.Int64}
META_BATCH = 16_384  # records held as Python values before they become a frame chunk
SPILL_BATCH = 2_048  # formatted rows held before they are appended to the spill file (one row group) …
SPILL_CHARS = 2 << 20  # … or fewer, once their text reaches this many characters
SPILL = ".rows.parquet"
POS = "__pos"


class _MetaColumns:
    """Column lists of META_SCHEMA, turned into a frame chunk every META_BATCH records (bounded Python state)."""

    def __init__(self) -> None:
        self.chunks: list[pl.DataFrame] = []
        self.cols: dict[str, list] = {n: [] for n in META_SCHEMA}

    def add(self, **values: Any) -> None:
        for name, col in self.cols.items():
            col.append(values.get(name))
        if len(self.cols["doc_id"]) >= META_BATCH:
            self._flush()

    def _flush(self) -> None:
        if self.cols["doc_id"]:
            self.chunks.append(pl.DataFrame(self.cols, schema=META_SCHEMA))
            self.cols = {n: [] for n in META_SCHEMA}

    def frame(self) -> pl.DataFrame:
        self._flush()
        return pl.concat(self.chunks) if self.chunks else pl.DataFrame(schema=META_SCHEMA)


def _input_meta(records, bar: Bar) -> pl.DataFrame:
    """Pass 1 over the input: every record's metadata (no text)."""
    cols = _MetaColumns()
    for rec in records:
        bar.advance()
        if isinstance(rec, Reject):
            cols.add(doc_id=rec.doc_id, source=f"input:{Path(rec.file).name}", file=rec.file, line=rec.line,
                     reason="malformed", detail=rec.reason)
            continue
        f = rec.fields
        cols.add(doc_id=rec.doc_id, source=_str(f.get("source")) or f"input:{Path(rec.file).name}", file=rec.file,
                 line=rec.line, lang=_str(f.get("lang")), category=_str(f.get("category")))
    return cols.frame()


def _curate(options: CurateOptions, inputs: CurateInputs, out: Path, *, progress: bool) -> CuratedManifest:
    quotas = options.quotas
    check_out(out, inputs.overwrite)
    store = FeatureStore(inputs.features)
    store_opts = store.manifest.options
    text_field = inputs.text_field or store_opts.get("text_field") or "text"
    id_field = inputs.id_field or store_opts.get("id_field") or "id"
    split = inputs.split if inputs.split is not None else store_opts.get("split")
    paths = resolve_paths(inputs.inputs)
    store_frame = read_store_table(store)
    scores = load_scores(inputs.scores) if inputs.scores else None
    synth_sets = [load_synthetic(s) for s in inputs.synth]
    synth_rules = screen_synthetic(synth_sets, scores)

    def records():
        return iter_records(paths, text_field=text_field, id_field=id_field, split=split)

    stage = out.parent / f".{out.name}.curate-{os.getpid()}.tmp"
    with Bar("curate", enabled=progress, unit="records", transient=True) as bar:
        bar.phase("read input", store.manifest.n_documents + store.manifest.n_rejected or None)
        meta = _input_meta(records(), bar)
        n_input = meta.height
        input_ids = meta.filter(pl.col("reason").is_null())["doc_id"]
        not_encoded = check_store_matches_input(store, store_frame["doc_id"], input_ids, inputs.inputs)
        check_input_fingerprint(store, paths)
        if scores is not None:
            check_scores_match_store(scores, store, store_frame["doc_id"])
        synth_meta, samples = _synthetic_meta(synth_sets, input_ids)
        meta = _decide(pl.concat([meta, synth_meta]).with_row_index(POS), store_frame, scores, not_encoded,
                       synth_rules, n_input)
        if stage.exists():
            shutil.rmtree(stage)
        stage.mkdir(parents=True)
        try:
            bar.phase("format, dedup" if options.dedup else "format", meta.height)
            meta, sizes = _format_and_dedup(meta, n_input, records(), samples, options, inputs.executor, stage, bar)
            meta = _apply_quarantine_and_quotas(meta, options.quarantine, quotas)
            bar.phase("write", None)
            manifest = _write(meta, sizes, options, out, stage, n_input=n_input, store=store, scores=scores,
                              synth_sets=synth_sets, paths=paths, text_field=text_field, id_field=id_field, quotas=quotas,
                              name=inputs.name)
        finally:
            if stage.exists():
                shutil.rmtree(stage)
    return manifest


def _synthetic_meta(synth_sets: list[SyntheticSet], input_ids: pl.Series) -> tuple[pl.DataFrame, list[SyntheticSample]]:
    """Metadata rows of the synthetic samples and rejects (after the input's), and the samples they index."""
    wanted = [x.doc_id for s in synth_sets for x in s.samples]
    taken = set(input_ids.filter(input_ids.is_in(wanted)).to_list()) if wanted else set()
    cols = _MetaColumns()
    samples: list[SyntheticSample] = []
    for s in synth_sets:
        for rej in s.rejects:
            cols.add(doc_id=rej.doc_id, source=f"synthetic:{rej.generator or 'unknown'}", file=rej.file, line=rej.line,
                     lang=rej.lang, reason=rej.reason, detail=rej.detail)
        for sample in s.samples:
            if sample.doc_id in taken:
                raise DataError(f"--synth {s.path}: sample id {sample.doc_id!r} ({sample.file}:{sample.line}) is already "
                                "a doc_id of the input or of another --synth folder")
            taken.add(sample.doc_id)
            cols.add(doc_id=sample.doc_id, source=sample.source, file=sample.file, line=sample.line, lang=sample.lang,
                     category=sample.category, synth=len(samples))
            samples.append(sample)
    return cols.frame(), samples


def _synthetic_struct(sample: SyntheticSample) -> dict[str, Any]:
    m = sample.meta
    return {"target_feature": _int(m.get("target_feature")), "label": _text(m.get("label")),
            "attempts": _int(m.get("attempts")), "activation": _float(m.get("activation")),
            "threshold": _float(m.get("threshold")), "verified": _text(m.get("verified")), "variant": _text(m.get("variant"))}


_EMPTY = pl.lit([], dtype=pl.List(pl.String))


def _hits(names: list[str], columns: list[str]) -> pl.Expr:
    """The names whose boolean column is true, in order (a list per row)."""
    if not names:
        return _EMPTY
    return pl.concat_list([pl.when(pl.col(c)).then(pl.lit(n)) for n, c in zip(names, columns)]).list.drop_nulls()


def _decide(meta: pl.DataFrame, store_frame: pl.DataFrame, scores: Scores | None, not_encoded: set[str],
            synth_rules: dict[str, list[str]], n_input: int) -> pl.DataFrame:
    """Steps 2–3 of the module docstring as column operations: lang / category / n_tokens from the store (and the
    scores' lang), the rules hit, flags, and `not_encoded` / `rule:` reasons."""
    actions = scores.actions if scores is not None else {}
    live_input = pl.col("reason").is_null() & pl.col("synth").is_null()
    frame = meta.with_columns(pl.when(live_input).then(pl.col("doc_id")).alias("__key"))
    store_cols = {"doc_id": "__key", "n_tokens": "n_tokens", "lang": "__s_lang", "category": "__s_category"}
    frame = frame.join(store_frame.rename({k: v for k, v in store_cols.items() if k in store_frame.columns}),
                       on="__key", how="left")
    names = list(actions)
    rule_cols = [f"__r{i}" for i in range(len(names))]
    if scores is not None:
        scored = scores.frame.rename({"doc_id": "__key", LANG: "__sc_lang", **dict(zip(names, rule_cols))})
        frame = frame.join(scored, on="__key", how="left")
    frame = frame.sort(POS)
    lang = [pl.col("lang")] + [pl.col(c) for c in ("__s_lang", "__sc_lang") if c in frame.columns]
    category = [pl.col("category")] + ([pl.col("__s_category")] if "__s_category" in frame.columns else [])
    drops = [c for n, c in zip(names, rule_cols) if actions[n] == "drop"]
    drop_names = [n for n in names if actions[n] == "drop"]
    flags = {n for n in names if actions[n] == "flag"}
    frame = frame.with_columns(
        pl.when(live_input).then(pl.coalesce(lang)).otherwise(pl.col("lang")).alias("lang"),
        pl.when(live_input).then(pl.coalesce(category)).otherwise(pl.col("category")).alias("category"),
        pl.when(live_input).then(pl.col("n_tokens") if "n_tokens" in frame.columns else None).cast(pl.Int32).alias("n_tokens"),
        pl.when(live_input).then(_hits(names, rule_cols)).otherwise(_EMPTY).alias("rules"),
        (pl.when(live_input).then(pl.coalesce([pl.when(pl.col(c)).then(pl.lit(n)) for n, c in zip(drop_names, drops)]))
         .otherwise(None) if drops else pl.lit(None, dtype=pl.String)).alias("__drop"),
    )
    if scores is not None and n_input < frame.height:  # synthetic samples: the same rules, on their verification encode
        syn = frame.slice(n_input)
        syn_rules = [synth_rules.get(d, []) if r is None else [] for d, r in zip(syn["doc_id"], syn["reason"])]
        syn_drop = [next((n for n in rs if actions[n] == "drop"), None) for rs in syn_rules]
        frame = pl.concat([frame.slice(0, n_input), syn.with_columns(
            pl.Series("rules", syn_rules, dtype=pl.List(pl.String)), pl.Series("__drop", syn_drop, dtype=pl.String))])
    encoded = ~(live_input & pl.col("doc_id").is_in(list(not_encoded)))
    frame = frame.with_columns(
        pl.col("rules").list.eval(pl.element().filter(pl.element().is_in(list(flags)))).alias("flags"),
        pl.when(pl.col("reason").is_not_null()).then(pl.col("reason"))
        .when(~encoded).then(pl.lit("not_encoded"))
        .when(pl.col("__drop").is_not_null()).then(pl.lit("rule:") + pl.col("__drop")).alias("reason"),
        pl.when(pl.col("reason").is_not_null()).then(pl.col("detail"))
        .when(~encoded).then(pl.lit("the feature store rejected this record")).alias("detail"),
    )
    return frame.select(POS, *META_SCHEMA, "rules", "flags", "n_tokens")


def _format_and_dedup(meta: pl.DataFrame, n_input: int, records, samples: list[SyntheticSample],
                      options: CurateOptions, executor: str, stage: Path, bar: Bar) -> tuple[pl.DataFrame, np.ndarray]:
    """Pass 2: step 4 (the format's columns, spilled to `stage` with their provenance) and step 5 (dedup) for every
    record still in. Returns the frame with those reasons and, per spilled row, its JSON size (for sharding)."""
    schema = pa.schema(format_fields(options.format) + PROVENANCE_FIELDS)
    writer = pq.ParquetWriter(stage / SPILL, schema.append(pa.field(POS, pa.int64())), compression="zstd")
    spilled, sizes = array("q"), array("q")
    fmt_pos: list[int] = []
    fmt_reason: list[str] = []
    rows: list[dict[str, Any]] = []
    row_pos: list[int] = []
    held = [0]  # characters of text in `rows`

    def flush() -> None:
        if rows:
            table = pa.Table.from_pylist(rows, schema=schema)
            sizes.extend(len(row_json(r).encode("utf-8")) + 1 for r in table.to_pylist())
            writer.write_table(table.append_column(POS, pa.array(row_pos, pa.int64())))
            spilled.extend(row_pos)
            rows.clear(), row_pos.clear()
            held[0] = 0

    def survivors():
        cols = ["doc_id", "source", "file", "line", "lang", "category", "reason", "synth", "rules", "flags", "n_tokens"]
        it = iter(records)
        for chunk in meta.select(POS, *cols).iter_slices(META_BATCH):
            for pos, doc_id, source, file, line, lang, category, reason, synth, rules, flags, n_tokens in chunk.iter_rows():
                bar.advance()
                if pos < n_input:
                    rec = next(it)
                    text, messages = (rec.text, rec.messages) if reason is None else (None, None)
                if reason is not None:
                    continue
                if pos >= n_input:
                    sample = samples[synth]
                    text, messages = None, sample.messages
                try:
                    fmt_row = to_format(options.format, text=text, messages=messages,
                                        text_role=options.text_role, text_prompt=options.text_prompt)
                except FormatRefused as exc:
                    raise UsageError(f"--format {options.format}: {exc} (first such record: {file}:{line}, "
                                     f"doc_id {doc_id!r})") from None
                except Unformattable as exc:
                    fmt_pos.append(pos)
                    fmt_reason.append(f"format:{exc}")
                    continue
                rows.append({**fmt_row, "doc_id": doc_id, "source": source, "lang": lang, "category": category,
                             "rules": rules, "flags": flags, "n_tokens": n_tokens,
                             "synthetic": None if synth is None else _synthetic_struct(sample)})
                row_pos.append(pos)
                held[0] += len(text) if text is not None else sum(len(str(m.get("content", ""))) for m in messages)
                if len(rows) >= SPILL_BATCH or held[0] >= SPILL_CHARS:
                    flush()
                yield dedup_mod.DedupDoc(doc_id, text, messages)
        flush()

    try:
        docs = survivors()
        dup_pos, dup_of, dup_near, dup_sim = _duplicates(docs, options.near_dup_threshold, executor, stage) if options.dedup else _no_duplicates(docs)
    finally:
        writer.close()
    spilled_pos = np.frombuffer(spilled, dtype=np.int64) if spilled else np.zeros(0, dtype=np.int64)
    ids = meta["doc_id"]
    reason = meta["reason"].scatter(fmt_pos, fmt_reason) if fmt_pos else meta["reason"]
    detail = meta["detail"]
    if dup_pos.size:
        at, of = spilled_pos[dup_pos], ids.gather(spilled_pos[dup_of]).to_list()
        kinds = ["near_duplicate" if n else "duplicate" for n in dup_near.tolist()]
        reason = reason.scatter(at, [f"{k}_of:{o}" for k, o in zip(kinds, of)])
        detail = detail.scatter(at, [f"jaccard={s:.3f}" if n else None for n, s in zip(dup_near.tolist(), dup_sim.tolist())])
    meta = meta.with_columns(reason.alias("reason"), detail.alias("detail"))
    return meta, (spilled_pos, np.frombuffer(sizes, dtype=np.int64) if sizes else np.zeros(0, dtype=np.int64))


def _no_duplicates(docs) -> tuple[np.ndarray, ...]:
    for _ in docs:
        pass
    empty = np.zeros(0, dtype=np.int64)
    return empty, empty, np.zeros(0, dtype=bool), np.zeros(0, dtype=np.float64)


def _duplicates(docs, threshold: float, executor: str, stage: Path) -> tuple[np.ndarray, ...]:
    """(position among the survivors, of which earlier survivor, near?, similarity) of every duplicate; `executor`
    ray runs the same decisions on Ray Data."""
    if executor == "ray":
        from qscope_data.curate.dedup_ray import find_duplicates_ray

        order: dict[str, int] = {}

        def numbered():
            for doc in docs:
                order[doc.doc_id] = len(order)
                yield doc

        found = find_duplicates_ray(numbered(), threshold=threshold)
        hits = sorted((order[d], order[x.of], x.kind == "near_duplicate", x.similarity) for d, x in found.items())
        cols = list(zip(*hits)) if hits else [[], [], [], []]
        return (np.array(cols[0], dtype=np.int64), np.array(cols[1], dtype=np.int64), np.array(cols[2], dtype=bool),
                np.array(cols[3], dtype=np.float64))
    found = dedup_mod.duplicate_positions(docs, threshold=threshold, workdir=stage)
    return found.pos, found.of, found.near, found.sim


def _apply_quarantine_and_quotas(meta: pl.DataFrame, quarantine: bool, quotas: dict[str, dict[str, int]]) -> pl.DataFrame:
    """Step 6: flagged rows to quarantine (if asked), then per quota field the rows past the first N of a value."""
    meta = meta.with_columns(
        (pl.col("reason").is_null() & pl.lit(quarantine) & (pl.col("flags").list.len() > 0)).alias("quarantined"))
    for fld, limits in quotas.items():
        value = pl.col(fld)
        eligible = (pl.col("reason").is_null() & ~pl.col("quarantined") & value.is_in(list(limits))).fill_null(False)
        limit = value.replace_strict(limits, default=None, return_dtype=pl.Int64)
        over = eligible & (eligible.cast(pl.Int64).cum_sum().over(fld) > limit)
        meta = meta.with_columns(
            pl.when(over).then(pl.lit(f"quota:{fld}=") + value).otherwise(pl.col("reason")).alias("reason"),
            pl.when(over).then(pl.lit("limit ") + limit.cast(pl.String)).otherwise(pl.col("detail")).alias("detail"),
        )
    return meta


# -- writing ----------------------------------------------------------------------------------------------------


def _spilled_rows(stage: Path, keep: np.ndarray) -> Iterator[pa.Table]:
    """The spilled rows whose position `keep` marks, in order, a batch at a time (without the position column)."""
    spill = pq.ParquetFile(stage / SPILL)
    for batch in (spill.read_row_group(i) for i in range(spill.num_row_groups)):  # row groups of ≤ SPILL_CHARS text
        mask = keep[batch.column(POS).to_numpy()]
        yield batch.filter(pa.array(mask)).drop_columns([POS])


def _removed_table(meta: pl.DataFrame) -> pa.Table:
    removed = meta.filter(pl.col("reason").is_not_null()).select(REMOVED_SCHEMA.names)
    return removed.to_arrow(compat_level=pl.CompatLevel.oldest()).cast(REMOVED_SCHEMA).combine_chunks()


def reason_kind(reason: str) -> str:
    """The counting key of a removal reason: duplicate_of:X → duplicate, near_duplicate_of:X → near_duplicate;
    rule / quota / format reasons keep their detail (rule:toxic, quota:lang=en)."""
    head = reason.split(":", 1)[0]
    return head.removesuffix("_of") if head in ("duplicate_of", "near_duplicate_of") else reason


def _tally(frame: pl.DataFrame, *keys: str) -> dict:
    """{value: count} of `keys` (nested dicts for two keys), keys sorted as Python sorts them."""
    if not frame.height:
        return {}
    grouped = frame.group_by(*keys).len().rows()
    if len(keys) == 1:
        return dict(sorted((k, n) for k, n in grouped))
    nested: dict[str, dict[str, int]] = defaultdict(dict)
    for a, b, n in grouped:
        nested[a][b] = n
    return {a: dict(sorted(v.items())) for a, v in sorted(nested.items())}


def _counts(meta: pl.DataFrame, n_input: int, scores: Scores | None) -> dict[str, Any]:
    head = pl.col("reason").str.splitn(":", 2).struct.field("field_0")
    frame = meta.select(
        pl.col("reason").is_null().alias("_in"), "quarantined", pl.col("synth").is_not_null().alias("_syn"),
        pl.col("source"), pl.col("lang").fill_null(UNKNOWN).alias("_lang"),
        pl.when(head.is_in(["duplicate_of", "near_duplicate_of"])).then(head.str.strip_suffix("_of"))
        .otherwise(pl.col("reason")).alias("_kind"),
    )
    kept = frame.filter(pl.col("_in") & ~pl.col("quarantined"))
    removed = frame.filter(~pl.col("_in"))
    counts: dict[str, Any] = {
        "input_records": n_input,
        "synthetic_records": meta.height - n_input,
        "kept": kept.height,
        "kept_synthetic": int(kept["_syn"].sum()),
        "quarantined": frame.filter(pl.col("_in") & pl.col("quarantined")).height,
        "removed": removed.height,
        "removed_by_reason": _tally(removed, "_kind"),
        "removed_by_lang": _tally(removed, "_lang"),
        "removed_by_reason_and_lang": _tally(removed, "_kind", "_lang"),
        "kept_by_lang": _tally(kept, "_lang"),
        "kept_by_source": _tally(kept, "source"),
    }
    if scores is not None:
        hits = dict(meta.select(pl.col("rules").explode().drop_nulls()).group_by("rules").len().rows())
        counts["rules"] = {name: {"action": action, "hits": hits.get(name, 0)} for name, action in scores.actions.items()}
    return counts


def _write(meta: pl.DataFrame, spill: tuple[np.ndarray, np.ndarray], options: CurateOptions, out: Path, stage: Path, *,
           n_input: int, store: FeatureStore, scores: Scores | None, synth_sets: list[SyntheticSet], paths: list[str],
           text_field: str, id_field: str, quotas: dict[str, dict[str, int]], name: str | None) -> CuratedManifest:
    spilled_pos, sizes = spill
    shard_opts = dict(max_rows=options.max_shard_rows, max_bytes=options.max_shard_bytes, jsonl=options.jsonl)
    schema = pa.schema(format_fields(options.format) + PROVENANCE_FIELDS)
    live = meta["reason"].is_null().to_numpy()
    quarantined = meta["quarantined"].to_numpy()
    train, held = live & ~quarantined, live & quarantined
    shards: list[FileEntry] = write_split_batches(_spilled_rows(stage, train), sizes[train[spilled_pos]], schema, stage,
                                                  "data", "train", **shard_opts)
    if held.any():
        shards += write_split_batches(_spilled_rows(stage, held), sizes[held[spilled_pos]], schema, stage,
                                      "quarantine", "quarantine", **shard_opts)
    (stage / SPILL).unlink()
    atomic.write_parquet(stage / REMOVED, _removed_table(meta))
    manifest = CuratedManifest(
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        code_version=code_version(),
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
        counts=_counts(meta, n_input, scores),
    )
    atomic.write_text(stage / CARD, render_card(manifest, pretty_name=name or out.name))
    atomic.write_text(stage / MANIFEST, manifest.model_dump_json(indent=2) + "\n")
    _swap_into_place(stage, out)
    return manifest


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
