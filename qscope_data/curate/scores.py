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


@dataclass
class Scores:
    path: Path
    actions: dict[str, str]  # rule → action, in the summary's order
    matched: dict[str, list[str]]  # doc_id → rules hit (summary order); every scored doc_id is a key
    lang: dict[str, str]  # doc_id → lang, where the scores carry one
    summary_sha256: str
    scores_sha256: str
    store_manifest_sha256: str | None
    rule_files: dict[str, str] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def doc_ids(self) -> set[str]:
        return set(self.matched)


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
    hits = frame.select(["doc_id", *[pl.col(n).fill_null(False) for n in names]])
    matched = {row[0]: [n for n, hit in zip(names, row[1:]) if hit] for row in hits.iter_rows()}
    lang: dict[str, str] = {}
    if "lang" in schema and schema["lang"] == pl.String:
        lang = {d: v for d, v in frame.select("doc_id", "lang").iter_rows() if v is not None}
    store_hash = summary.get("store_manifest_sha256")
    return Scores(
        path=folder, actions=actions, matched=matched, lang=lang,
        summary_sha256=atomic.sha256_file(summary_path), scores_sha256=atomic.sha256_file(scores_path),
        store_manifest_sha256=str(store_hash) if store_hash else None,
        rule_files=_rule_files(summary.get("rule_files"), summary_path), summary=summary,
    )
