"""Reading a scores folder (the rules stage's output) for curation, checking it before anything is decided.

``DIR/scores.parquet``: ``doc_id``, one boolean column per rule (named after the rule; null counts as not hit),
optional ``<rule>_score`` floats and ``lang``. ``DIR/summary.json``: ``{"rules": {name: {"action": drop|flag|keep,
"hits": …}}, "store_manifest_sha256": …, "rule_files": …}``; ``rule_files`` may be a list of ``{path, sha256}``
(what `qscope rules score` writes) or a ``{path: sha256}`` mapping. Every mismatch is a `DataError` (exit 2).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from qscope_data import atomic
from qscope_data.errors import DataError

SCORES = "scores.parquet"
SUMMARY = "summary.json"
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
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{summary_path}: not valid JSON ({exc})") from exc
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
