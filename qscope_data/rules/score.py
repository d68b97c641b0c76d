"""The score stage: rule files × feature store → scores.parquet + summary.json.

Later stages (curate) act on the outputs alone: summary.json records each rule's action, its hit counts overall and
per language, the store's manifest hash and every rule file's sha256, so a decision can be traced back without the
rule files. All names, types and feature ids are checked against the store's schema before any row is read.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from qscope_data import atomic
from qscope_data.errors import DataError, UsageError
from qscope_data.progress import Bar
from qscope_data.result import Result, interactive
from qscope_data.rules.compile import RuleProgram, compile_rules
from qscope_data.rules.rulefile import LoadedRuleFile, load_rule_files
from qscope_data.store import FeatureStore

SCORES = "scores.parquet"
SUMMARY = "summary.json"
NO_LANG = "(none)"


class ScoreOptions(BaseModel):
    """The score stage's options (`qscope score` and the pipeline's `score:` section): the only place their
    defaults live. What is scored is the rule files; the layer is the config's `sae.layer` (or `--layer`)."""

    model_config = ConfigDict(extra="forbid")

    batch_rows: int = Field(100_000, ge=1, description="documents per batch (bounds memory)")


DEFAULT_BATCH_ROWS = ScoreOptions().batch_rows


def choose_layer(store: FeatureStore, files: list[LoadedRuleFile], layer: int | None) -> int:
    """--layer if given, else the layer the rule files' headers name (they must agree), else the store's first."""
    if layer is not None:
        return store.resolve_layer(layer)
    named = {f.header.layer for f in files if f.header.layer is not None}
    if len(named) > 1:
        raise UsageError(f"the rule files name different SAE layers ({sorted(named)}): score them separately or pass --layer")
    if named:
        wanted = named.pop()
        if wanted not in store.layers:
            raise UsageError(f"the rule files refer to SAE layer {wanted} but the store holds layers {store.layers}")
        return wanted
    return store.resolve_layer(None)


def prepare(store: FeatureStore, rule_paths: list[str | Path], layer: int | None) -> tuple[list[LoadedRuleFile], int, RuleProgram]:
    """Load and compile the rules for a store layer — every error before data is read."""
    files = load_rule_files(list(rule_paths))
    layer = choose_layer(store, files, layer)
    schema = store.scan(layer).collect_schema()
    program = compile_rules(files, schema, store_d_sae=store.manifest.sae(layer).d_sae)
    return files, layer, program


def evaluate_store(
    store: FeatureStore, program: RuleProgram, layer: int, *, batch_rows: int = DEFAULT_BATCH_ROWS,
    progress: bool = False, apply_languages: bool = True, extra_columns: list[str] | None = None,
) -> pl.DataFrame:
    """Rule outcomes for every document of a layer (batched; memory bounded by batch_rows × referenced features)."""
    outputs = set(program.output_columns())
    extra = [c for c in dict.fromkeys(extra_columns or []) if c not in outputs]
    columns = program.read_columns + [c for c in extra if c not in program.read_columns]
    parts: list[pl.DataFrame] = []
    with Bar("score", store.manifest.n_documents, enabled=progress, unit="docs") as bar:
        for batch in store.batches(layer, columns, batch_rows=batch_rows):
            out = program.evaluate(batch, apply_languages=apply_languages)
            if extra:
                out = out.with_columns(batch.select(extra))
            parts.append(out)
            bar.advance(batch.height)
    if not parts:  # an empty store still yields every output column, typed
        empty = store.scan(layer, columns).head(0).collect()
        out = program.evaluate(empty, apply_languages=apply_languages)
        return out.with_columns(empty.select(extra)) if extra else out
    return pl.concat(parts, how="vertical")


def hit_summary(scores: pl.DataFrame, program: RuleProgram) -> dict[str, Any]:
    """Per rule: action, hits overall and per language (and the documents per language, for rates)."""
    has_lang = "lang" in scores.columns
    names = [r.name for r in program.rules]
    docs_by_lang: dict[str, int] = {}
    by_lang: dict[str, dict[str, int]] = {}
    totals = scores.select([pl.col(n).sum() for n in names]).row(0, named=True) if names else {}
    if has_lang:
        grouped = (
            scores.group_by(pl.col("lang").fill_null(NO_LANG))
            .agg(pl.len().alias("__docs"), *[pl.col(n).sum() for n in names])
            .sort("lang")
        )
        docs_by_lang = {row["lang"]: int(row["__docs"]) for row in grouped.iter_rows(named=True)}
        by_lang = {n: {row["lang"]: int(row[n]) for row in grouped.iter_rows(named=True)} for n in names}
    rules: dict[str, Any] = {}
    for r in program.rules:
        hits = int(totals[r.name] or 0)
        entry: dict[str, Any] = {
            "action": r.action,
            "file": str(r.rule.path),
            "when": r.rule.model.when.strip(),
            "score": r.rule.model.score.strip() if r.rule.model.score else None,
            "languages": r.languages,
            "hits": hits,
            "hit_rate": hits / scores.height if scores.height else 0.0,
        }
        if has_lang:
            entry["hits_by_lang"] = by_lang[r.name]
        rules[r.name] = entry
    return {"n_documents": scores.height, "documents_by_lang": docs_by_lang, "rules": rules}


@dataclass(frozen=True)
class ScoreInputs:
    """What scoring reads: the rule files, the feature store and its SAE layer (default: the rule files' header,
    else the store's first)."""

    rules: list[Path]
    store: Path
    layer: int | None = None


def run(options: ScoreOptions, inputs: ScoreInputs, out: str | Path, *,
        progress: bool | None = None) -> Result[Scores]:
    """The score stage (`qscope score`, the pipeline's `score`): every document of the store scored with every rule,
    written atomically into `out` as scores.parquet + summary.json and returned as `load_scores` reads them.
    Stats: summary.json's content (documents, layer, per-rule action and hits, provenance, timing).
    `progress`: a bar on stderr."""
    if not inputs.rules:
        raise UsageError("give at least one --rules file")
    store = FeatureStore(inputs.store)
    files, layer, program = prepare(store, list(inputs.rules), inputs.layer)
    start = time.perf_counter()
    scores = evaluate_store(store, program, layer, batch_rows=options.batch_rows, progress=interactive(progress))
    elapsed = time.perf_counter() - start
    out = Path(out)
    atomic.write_parquet(out / SCORES, scores.select(program.output_columns()).to_arrow())
    summary = {
        "kind": "qscope-scores",
        "store": str(Path(inputs.store)),
        "store_manifest_sha256": store.manifest_hash(),
        "layer": layer,
        "d_sae": store.manifest.sae(layer).d_sae,
        "rule_files": [{"path": str(f.path), "sha256": f.sha256} for f in files],
        "columns": program.output_columns(),
        **hit_summary(scores, program),
        "elapsed_s": round(elapsed, 3),
        "docs_per_s": round(scores.height / elapsed, 1) if elapsed > 0 else None,
    }
    atomic.write_json(out / SUMMARY, summary)
    return Result(load_scores(out), {"scores": out, SCORES: out / SCORES, SUMMARY: out / SUMMARY}, summary)


# -- the reader (what curate uses) -------------------------------------------------------------------------------
# DIR/scores.parquet: doc_id, one boolean column per rule (null counts as not hit), optional <rule>_score floats and
# lang. DIR/summary.json: {"rules": {name: {"action": drop|flag|keep, "hits": …}}, "store_manifest_sha256": …,
# "rule_files": …}; rule_files may be a list of {path, sha256} (what `run` writes) or a {path: sha256} mapping.
# Every mismatch is a `DataError` (exit 2).

ACTIONS = ("drop", "flag", "keep")
LANG = "__lang__"  # the scores' lang in `Scores.frame` (a rule may be named `lang`)


@dataclass
class Scores:
    """A checked scores folder. Per document it keeps one row of `frame` (doc_id, one boolean per rule in the
    summary's order, lang): about 1 byte a rule plus the doc_id and lang strings, never Python objects per document;
    `matched` and `lang` build the per-document dicts on demand for callers that want them."""

    path: Path
    actions: dict[str, str]  # rule → action, in the summary's order
    frame: pl.DataFrame  # doc_id, the rules' columns (null → False), LANG (null where the scores carry none)
    summary_sha256: str
    scores_sha256: str
    store_manifest_sha256: str | None
    rule_files: dict[str, str] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def matched(self) -> dict[str, list[str]]:
        """doc_id → rules hit (summary order); every scored doc_id is a key."""
        names = list(self.actions)
        return {row[0]: [n for n, hit in zip(names, row[1:]) if hit]
                for row in self.frame.select(["doc_id", *names]).iter_rows()}

    @property
    def lang(self) -> dict[str, str]:
        """doc_id → lang, where the scores carry one."""
        return {d: v for d, v in self.frame.select("doc_id", LANG).iter_rows() if v is not None}

    @property
    def doc_ids(self) -> pl.Series:
        return self.frame["doc_id"]


def _rule_files(value: Any, path: Path) -> dict[str, str]:
    if value is None:
        return {}
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    if isinstance(value, list) and all(isinstance(v, dict) and "path" in v for v in value):
        return {str(v["path"]): str(v.get("sha256", "")) for v in value}
    raise DataError(f"{path}: 'rule_files' is neither a {{path: sha256}} mapping nor a list of {{path, sha256}}")


def load_scores(folder: str | Path) -> Scores:
    folder = Path(folder)
    summary_path, scores_path = folder / SUMMARY, folder / SCORES
    for p in (summary_path, scores_path):
        if not p.is_file():
            raise DataError(f"--scores {folder}: no {p.name} (expected the output folder of `qscope rules score`)")
    summary = atomic.read_json(summary_path)
    rules = summary.get("rules") if isinstance(summary, dict) else None
    if not isinstance(rules, dict):
        raise DataError(f"{summary_path}: no 'rules' mapping")
    actions: dict[str, str] = {}
    for name, info in rules.items():
        action = info.get("action") if isinstance(info, dict) else None
        if action not in ACTIONS:
            raise DataError(f"{summary_path}: rule {name!r} has action {action!r}; expected one of {', '.join(ACTIONS)}")
        actions[str(name)] = action
    try:
        frame = pl.read_parquet(scores_path)
    except Exception as exc:
        raise DataError(f"{scores_path}: not a readable Parquet file ({str(exc).splitlines()[0]})") from exc
    schema = frame.schema
    if "doc_id" not in schema or schema["doc_id"] != pl.String:
        raise DataError(f"{scores_path}: schema mismatch: needs a string 'doc_id' column (has {dict(schema)})")
    for name in actions:
        if name not in schema:
            raise DataError(f"{scores_path}: schema mismatch: no column for rule {name!r} named in {SUMMARY}")
        if schema[name] != pl.Boolean:
            raise DataError(f"{scores_path}: schema mismatch: rule column {name!r} is {schema[name]}, expected Boolean")
    if frame["doc_id"].null_count():
        raise DataError(f"{scores_path}: {frame['doc_id'].null_count()} row(s) without a doc_id")
    dupes = frame.filter(pl.col("doc_id").is_duplicated())["doc_id"]
    if len(dupes):
        raise DataError(f"{scores_path}: doc_id {dupes[0]!r} appears more than once")
    names = list(actions)
    lang = (pl.col("lang") if "lang" in schema and schema["lang"] == pl.String else pl.lit(None, dtype=pl.String)).alias(LANG)
    kept = frame.select(["doc_id", *[pl.col(n).fill_null(False) for n in names], lang])
    store_hash = summary.get("store_manifest_sha256")
    return Scores(
        path=folder, actions=actions, frame=kept,
        summary_sha256=atomic.sha256_file(summary_path), scores_sha256=atomic.sha256_file(scores_path),
        store_manifest_sha256=str(store_hash) if store_hash else None,
        rule_files=_rule_files(summary.get("rule_files"), summary_path), summary=summary,
    )
